"""logship: a log shipper for a native sidecar, next to a service that writes its log to a file.

It follows LOG_FILE, the file the service in the same pod writes (labshop.telemetry) on a volume both mount,
and writes every complete line to its own stdout, unchanged. Container stdout is what Kubernetes keeps
(`kubectl logs POD -c logship`) and what a node's log agent collects, so a program that can only log to a
file is collected like any other. Real shippers (Fluent Bit, Vector, the OpenTelemetry Collector's filelog
receiver) follow the same file and send it on to a log store.

It starts at the beginning of the file (a file on an emptyDir lives as long as the pod, and the sidecar starts
before the service), follows a rotation (a new file at the same path: the rest of the old one is shipped
first), and starts over after a truncation. It keeps no position across its own restarts: a restarted
shipper ships the file again (real shippers keep an offset per file in a small database).

GET /status   {"file", "following", "shipped"}: which file, whether it is open, how many lines went out

Environment: LOG_FILE (required), LOGSHIP_POLL_SECONDS (default 0.5), plus what every service reads. PORT must
differ from the service's own (the pod's containers share one network namespace): 8081, for example.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from typing import BinaryIO, TextIO

from prometheus_client import Counter
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from labshop import logs
from labshop.config import Common, ConfigError, Env
from labshop.web import Built, Readiness, create_app

NAME = "logship"

LINES = Counter("logship_lines_total", "Log lines shipped from LOG_FILE to stdout.")
REOPENS = Counter("logship_reopens_total", "Times LOG_FILE was found replaced (rotated) or truncated.", ["reason"])


class Follower:
    """Follows one file by polling: each `poll` writes the complete lines added since the last one to `out`."""

    def __init__(self, path: str, out: TextIO) -> None:
        self.path = path
        self.out = out
        self.shipped = 0
        self._file: BinaryIO | None = None
        self._inode = 0
        self._partial = b""  # the start of a line whose newline has not been written yet

    @property
    def following(self) -> bool:
        return self._file is not None

    def poll(self) -> int:
        """Ship what was written since the last poll; the number of lines shipped."""
        if self._file is None and not self._open():
            return 0
        shipped = self._drain()
        try:
            now = os.stat(self.path)
        except FileNotFoundError:
            return shipped  # renamed away and not created again yet: the open file is still the one to finish
        if now.st_ino != self._inode:
            # Rotated: whatever reached the old file before the rename is shipped, then the new one from its start.
            shipped += self._drain() + self._ship_partial()
            self._close()
            REOPENS.labels("rotated").inc()
            if self._open():
                shipped += self._drain()
        elif now.st_size < self._file.tell():
            # Truncated in place: what is there now was written after the truncation.
            self._file.seek(0)
            self._partial = b""
            REOPENS.labels("truncated").inc()
            shipped += self._drain()
        return shipped

    def close(self) -> int:
        """Ship the rest, an unfinished last line included (it will not be finished now), and let go of the file."""
        shipped = 0
        if self._file is not None:
            shipped = self._drain() + self._ship_partial()
            self._close()
        return shipped

    def _open(self) -> bool:
        try:
            self._file = open(self.path, "rb")  # noqa: SIM115 (kept open across polls, closed by _close)
        except FileNotFoundError:
            return False  # the service has not written its first line yet
        self._inode = os.fstat(self._file.fileno()).st_ino
        self._partial = b""
        return True

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _drain(self) -> int:
        assert self._file is not None
        data = self._file.read()
        if not data:
            return 0
        *lines, self._partial = (self._partial + data).split(b"\n")
        return self._write(lines)

    def _ship_partial(self) -> int:
        line, self._partial = self._partial, b""
        return self._write([line])

    def _write(self, lines: list[bytes]) -> int:
        count = 0
        for line in lines:
            if line.strip():
                self.out.write(line.decode("utf-8", "replace") + "\n")
                count += 1
        if count:
            self.out.flush()
            LINES.inc(count)
            self.shipped += count
        return count


def create(env: Env) -> Built:
    """The log shipper, configured from `env`."""
    common = Common.from_env(env)
    log = logs.setup(NAME, common.log_level)
    path = env.raw("LOG_FILE")
    if not path:
        raise ConfigError("LOG_FILE must name the file to ship (the one the service in this pod writes)")
    interval = env.seconds("LOGSHIP_POLL_SECONDS", 0.5, maximum=60)
    if interval == 0:
        raise ConfigError("LOGSHIP_POLL_SECONDS must be more than 0")
    follower = Follower(path, sys.stdout)
    tasks: list[asyncio.Task] = []

    async def follow() -> None:
        failing = ""
        while True:
            try:
                follower.poll()
                failing = ""
            except OSError as e:
                if str(e) != failing:  # said once, not at every poll
                    failing = str(e)
                    log.error("cannot read the log file", extra={"file": path, "reason": e.strerror})
            await asyncio.sleep(interval)

    async def start() -> None:
        log.info("following", extra={"file": path, "poll_seconds": interval})
        tasks.append(asyncio.create_task(follow()))

    async def stop() -> None:
        # A native sidecar is stopped after the service, so this is the service's last word: ship it all.
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(OSError):
            follower.poll()
            follower.close()
        log.info("shipped", extra={"file": path, "lines": follower.shipped})

    async def status(request: Request) -> JSONResponse:
        return JSONResponse({"file": path, "following": follower.following, "shipped": follower.shipped})

    readiness = Readiness(common.not_ready_file)
    app = create_app(NAME, common, [Route("/status", status)], readiness=readiness, log=log,
                     on_startup=[start], on_shutdown=[stop])
    return Built(app, common, readiness, log)
