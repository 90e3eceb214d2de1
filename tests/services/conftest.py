"""The shop's services as real processes on loopback: started once per test module, talking to each other."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

SERVICES_DIR = Path(__file__).resolve().parents[2] / "services"
# The package is not installed into the test environment; the processes and the unit tests import it from here.
if str(SERVICES_DIR) not in sys.path:
    sys.path.insert(0, str(SERVICES_DIR))


_probe = httpx.Client()


_handed_out: set[int] = set()


def free_port() -> int:
    """A free loopback port not handed out before in this test run: between the probe and the server's bind the
    kernel may offer the same port again, and two servers given one port collide."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def until(condition: Callable[[], object], timeout: float, what: str, interval: float = 0.05) -> object:
    """condition()'s first truthy value within `timeout` seconds; an AssertionError naming `what` otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g}s: {what}")
        time.sleep(interval)


class ServiceProcess:
    """`python -m labshop NAME` on 127.0.0.1 with the given environment; stdout (JSON lines) kept in a file."""

    def __init__(self, name: str, env: dict[str, str], log_dir: Path, *, grpc: bool = False) -> None:
        self.name = name
        self.port = free_port()
        self.grpc_port = free_port() if grpc else 0
        self.log_path = log_dir / f"{name}-{self.port}.log"
        full = {
            "PATH": os.environ.get("PATH", ""),
            "PYTHONPATH": str(SERVICES_DIR),
            "PYTHONDONTWRITEBYTECODE": "1",
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "STARTUP_SECONDS": "0",
            "SHUTDOWN_DELAY_SECONDS": "0",
            "NOT_READY_FILE": str(log_dir / f"{name}-{self.port}.not-ready"),
            **({"GRPC_PORT": str(self.grpc_port)} if grpc else {}),
            **env,
        }
        self.not_ready_file = Path(full["NOT_READY_FILE"])
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "labshop", name], env=full, stdout=self._log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.url = f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 90.0) -> ServiceProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if _probe.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"{self.name} not ready after {timeout}s:\n{self.log()}")

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text()

    def log_records(self) -> list[dict]:
        return [json.loads(line) for line in self.log().splitlines() if line.strip()]

    def wait_for_record(self, timeout: float = 5.0, **fields) -> dict:
        """The last log record carrying `fields`, waiting for it: a request is logged just after it is answered."""
        deadline = time.monotonic() + timeout
        while True:
            found = [r for r in self.log_records() if all(r.get(k) == v for k, v in fields.items())]
            if found:
                return found[-1]
            if time.monotonic() > deadline:
                raise AssertionError(f"no log record with {fields} in:\n{self.log()}")
            time.sleep(0.05)

    def terminate(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, then the exit code (killed after `timeout`)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def metric(self, name: str, **labels: str) -> float:
        """The value of one sample of /metrics (0 when absent)."""
        from prometheus_client.parser import text_string_to_metric_families

        text = _probe.get(f"{self.url}/metrics", timeout=5).text
        total = 0.0
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    total += sample.value
        return total


@pytest.fixture(scope="module")
def start_service(tmp_path_factory):
    """start_service(name, env={}, grpc=False) -> a ready ServiceProcess, stopped at the end of the module."""
    started: list[ServiceProcess] = []
    log_dir = tmp_path_factory.mktemp("services")

    def start(name: str, env: dict[str, str] | None = None, *, grpc: bool = False, wait: bool = True):
        service = ServiceProcess(name, env or {}, log_dir, grpc=grpc)
        started.append(service)
        return service.wait_ready() if wait else service

    yield start
    for service in started:
        service.terminate()
    for service in started:
        service.stop()


@pytest.fixture(scope="session", autouse=True)
def _close_probe_client():
    yield
    _probe.close()


@pytest.fixture(scope="session")
def services_dir() -> Path:
    """The folder holding the labshop package (what PYTHONPATH must name to run a service)."""
    return SERVICES_DIR


@pytest.fixture(scope="module")
def http():
    """One HTTP client for the module's requests (a client per request costs a TLS context each time)."""
    with httpx.Client(timeout=10) as client:
        yield client
