"""hello: a small HTTP service built to run well in a container.

Endpoints (all answer JSON):
  GET /         greeting with the pod's hostname and the version from $APP_VERSION
  GET /healthz  liveness: 200 while the process can answer at all
  GET /readyz   readiness: 503 while starting, while $NOT_READY_FILE exists, and while shutting down

Environment:
  PORT             port to listen on (default 8080; 0 picks a free port, logged at startup)
  HOST             address to bind (default 0.0.0.0)
  APP_VERSION      version reported by / (default "dev")
  STARTUP_SECONDS  simulated warm-up before /readyz answers 200 (default 2)
  NOT_READY_FILE   while this file exists /readyz answers 503 (default /tmp/not-ready)

Logs are one JSON object per line on stdout. SIGTERM (or SIGINT) stops accepting connections, lets requests in
flight finish and exits 0. Nothing is written to disk, so the root filesystem may be read-only.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
import time
from datetime import datetime, timezone
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


_log_lock = threading.Lock()


def log(level: str, msg: str, **fields: object) -> None:
    """Write one structured log line to stdout (the container runtime collects it)."""
    record = {"time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"), "level": level, "msg": msg}
    record.update(fields)
    line = json.dumps(record, default=str) + "\n"
    # Request threads log concurrently: one locked write per line keeps lines whole.
    with _log_lock:
        sys.stdout.write(line)
        sys.stdout.flush()


class State:
    """What /readyz reports: warm-up finished, not draining, and no not-ready file present."""

    def __init__(self, not_ready_file: str) -> None:
        self.not_ready_file = not_ready_file
        self.started = threading.Event()
        self.stopping = threading.Event()

    def readiness(self) -> tuple[bool, str]:
        if self.stopping.is_set():
            return False, "shutting down"
        if not self.started.is_set():
            return False, "starting"
        if self.not_ready_file and os.path.exists(self.not_ready_file):
            return False, f"{self.not_ready_file} exists"
        return True, "ready"


class Handler(BaseHTTPRequestHandler):
    server: "HelloServer"

    def version_string(self) -> str:
        # The default header advertises the exact Python version: needless detail for an attacker.
        return "hello"

    def do_GET(self) -> None:  # noqa: N802 (name fixed by http.server)
        path = self.path.split("?", 1)[0]
        if path == "/":
            self._json(
                HTTPStatus.OK,
                {"message": "Hello from hello", "hostname": socket.gethostname(), "version": self.server.version},
            )
        elif path == "/healthz":
            self._json(HTTPStatus.OK, {"status": "ok"})
        elif path == "/readyz":
            ready, reason = self.server.state.readiness()
            self._json(HTTPStatus.OK if ready else HTTPStatus.SERVICE_UNAVAILABLE, {"status": reason})
        else:
            self._json(HTTPStatus.NOT_FOUND, {"error": "not found", "path": path})

    def _json(self, status: HTTPStatus, body: dict[str, object]) -> None:
        payload = json.dumps(body).encode() + b"\n"
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        # Probes hit every few seconds per pod; logging them would drown the requests people care about.
        if self.path in ("/healthz", "/readyz") and code == HTTPStatus.OK:
            return
        log(
            "info",
            "request",
            method=self.command,
            path=self.path,
            status=int(code),
            remote=self.client_address[0],
            duration_ms=round((time.monotonic() - self._started) * 1000, 1),
        )

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (signature fixed by http.server)
        log("warning", format % args, remote=self.client_address[0])

    def handle_one_request(self) -> None:
        self._started = time.monotonic()
        super().handle_one_request()


class HelloServer(ThreadingHTTPServer):
    # Non-daemon request threads that server_close() joins: requests in flight finish before the process exits.
    daemon_threads = False
    block_on_close = True

    def __init__(self, address: tuple[str, int], state: State, version: str) -> None:
        super().__init__(address, Handler)
        self.state = state
        self.version = version


class ConfigError(Exception):
    """An environment variable holds a value the service cannot use."""


def _env_seconds(name: str, default: float) -> float:
    raw = os.environ.get(name, "")
    if raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number of seconds, got {raw!r}") from None
    if value < 0:
        raise ConfigError(f"{name} must not be negative, got {raw!r}")
    return value


def _env_port(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    if raw == "":
        return default
    if not raw.isdigit() or int(raw) > 65535:
        raise ConfigError(f"{name} must be a port number (0-65535), got {raw!r}")
    return int(raw)


def main() -> int:
    """Serve until SIGTERM or SIGINT; return the process exit code."""
    host = os.environ.get("HOST", "0.0.0.0")
    version = os.environ.get("APP_VERSION", "dev")
    try:
        port = _env_port("PORT", 8080)
        startup_seconds = _env_seconds("STARTUP_SECONDS", 2.0)
    except ConfigError as e:
        log("error", str(e))
        return 2
    state = State(os.environ.get("NOT_READY_FILE", "/tmp/not-ready"))

    try:
        server = HelloServer((host, port), state, version)
    except OSError as e:
        log("error", f"cannot listen on {host}:{port}: {e.strerror or e}")
        return 1

    def shut_down(signame: str) -> None:
        log("info", "shutting down", signal=signame)
        server.shutdown()

    def stop(signum: int, _frame: object) -> None:
        # A signal handler runs between two bytecodes of the main thread, possibly inside log() holding its lock:
        # it only flags and hands over. shutdown() also waits for serve_forever(), which runs on this thread.
        if state.stopping.is_set():
            return
        state.stopping.set()
        threading.Thread(target=shut_down, args=(signal.Signals(signum).name,), name="shutdown").start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    # Stand-in for real warm-up work (loading config, opening connections): /readyz says 503 until it is done.
    warmup = threading.Timer(startup_seconds, state.started.set)
    warmup.daemon = True
    warmup.start()

    log("info", "listening", host=host, port=server.server_address[1], version=version, startup_seconds=startup_seconds)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        warmup.cancel()
        server.server_close()
    log("info", "stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
