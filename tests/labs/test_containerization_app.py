"""The containerization lab's service, run as a real process on a free loopback port."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from labctl.paths import labs_dir

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]

APP = labs_dir() / "09-containerization" / "app" / "hello.py"


class Service:
    """A running hello process and a way to talk to it."""

    def __init__(self, proc: subprocess.Popen, port: int, first_line: dict) -> None:
        self.proc = proc
        self.port = port
        self.first_line = first_line

    def get(self, path: str) -> tuple[int, dict, dict]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            body = resp.read()
            return resp.status, dict(resp.getheaders()), json.loads(body)
        finally:
            conn.close()

    def stop(self, sig: int = signal.SIGTERM) -> tuple[int, list[dict]]:
        """Signal the process and return its exit code and the JSON log lines it wrote after the first."""
        self.proc.send_signal(sig)
        out, _ = self.proc.communicate(timeout=10)
        return self.proc.returncode, [json.loads(line) for line in out.splitlines() if line.strip()]


def start(env: dict[str, str], cwd: Path) -> tuple[subprocess.Popen, dict]:
    proc = subprocess.Popen(
        [sys.executable, str(APP)],
        env={"PATH": os.environ.get("PATH", ""), **env},
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    first = proc.stdout.readline()
    assert first, f"no log line; stderr: {proc.stderr.read() if proc.poll() is not None else '(still running)'}"
    return proc, json.loads(first)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    d = tmp_path / "cwd"
    d.mkdir()
    return d


@pytest.fixture
def launch(tmp_path: Path, workdir: Path):
    """Start the service with a given warm-up; every process started is killed at teardown if still running."""
    procs: list[subprocess.Popen] = []

    def _launch(startup_seconds: float) -> Service:
        env = {
            "PORT": "0",  # the service picks a free port and logs it: no race with another process
            "HOST": "127.0.0.1",
            "APP_VERSION": "1.0",
            "STARTUP_SECONDS": str(startup_seconds),
            "NOT_READY_FILE": str(tmp_path / "not-ready"),
        }
        proc, first = start(env, workdir)
        procs.append(proc)
        assert first["msg"] == "listening", first
        return Service(proc, first["port"], first)

    yield _launch
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)


@pytest.fixture
def service(launch) -> Service:
    return launch(0.0)


def wait_ready(svc: Service, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if svc.get("/readyz")[0] == 200:
            return
        time.sleep(0.1)
    raise AssertionError("never became ready")


def test_logs_where_it_listens_as_json(service: Service) -> None:
    assert service.first_line["level"] == "info"
    assert service.first_line["port"] == service.port > 0
    assert service.first_line["version"] == "1.0"
    assert "time" in service.first_line


def test_greeting_reports_hostname_and_version(service: Service) -> None:
    status, headers, body = service.get("/")
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    assert body["version"] == "1.0"
    assert body["hostname"] == socket.gethostname()
    assert "Python" not in headers["Server"]


def test_alive_but_not_ready_while_starting_then_ready(launch) -> None:
    startup_seconds = 2.0  # generous: the first request must land inside it even on a loaded machine
    service = launch(startup_seconds)
    status, _, body = service.get("/readyz")
    assert (status, body) == (503, {"status": "starting"})
    assert service.get("/healthz")[0] == 200, "liveness must not wait for warm-up"
    wait_ready(service)
    listening_at = datetime.fromisoformat(service.first_line["time"])
    # The warm-up timer starts just before the "listening" line is written.
    assert datetime.now(timezone.utc) - listening_at >= timedelta(seconds=startup_seconds - 0.1)
    assert service.get("/readyz")[2] == {"status": "ready"}


def test_not_ready_file_toggles_readiness_only(service: Service, tmp_path: Path) -> None:
    wait_ready(service)
    flag = tmp_path / "not-ready"
    flag.touch()
    status, _, body = service.get("/readyz")
    assert (status, body["status"]) == (503, f"{flag} exists")
    assert service.get("/healthz")[0] == 200
    flag.unlink()
    assert service.get("/readyz")[0] == 200


def test_unknown_path_is_a_json_404(service: Service) -> None:
    status, _, body = service.get("/nope?x=1")
    assert status == 404
    assert body == {"error": "not found", "path": "/nope"}


def test_sigterm_shuts_down_cleanly_and_logs_json(service: Service, workdir: Path) -> None:
    service.get("/")
    code, lines = service.stop(signal.SIGTERM)
    assert code == 0
    msgs = [line["msg"] for line in lines]
    assert {"msg": "request", "path": "/", "status": 200}.items() <= lines[msgs.index("request")].items()
    assert msgs[-2:] == ["shutting down", "stopped"]
    assert lines[-2]["signal"] == "SIGTERM"
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", service.port), timeout=2)
    assert list(workdir.iterdir()) == [], "the service must write nothing to disk"


def test_probe_successes_are_not_logged_but_failures_are(service: Service, tmp_path: Path) -> None:
    wait_ready(service)
    service.get("/healthz")
    (tmp_path / "not-ready").touch()
    assert service.get("/readyz")[0] == 503
    _, lines = service.stop()
    probe_lines = [line for line in lines if line.get("path") in ("/healthz", "/readyz")]
    assert probe_lines and all(line["status"] == 503 for line in probe_lines)


@pytest.mark.parametrize(
    ("env", "words"),
    [({"PORT": "http"}, "PORT must be a port number"), ({"STARTUP_SECONDS": "soon"}, "STARTUP_SECONDS must be")],
)
def test_bad_configuration_exits_2_with_one_json_line(workdir: Path, env: dict[str, str], words: str) -> None:
    proc, first = start({"HOST": "127.0.0.1", "PORT": "0", **env}, workdir)
    assert proc.wait(timeout=10) == 2
    proc.communicate(timeout=10)
    assert first["level"] == "error"
    assert words in first["msg"]
