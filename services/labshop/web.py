"""What every service shares: health, readiness and metrics endpoints, request logging and metrics, JSON
errors, and a server that drains before it stops on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from labshop.config import Common

# Kubernetes asks these every few seconds per pod: they are never slowed down and never logged when healthy.
PROBE_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})

REQUESTS = Counter("http_requests_total", "HTTP requests served, by route and status.",
                   ["service", "method", "route", "status"])
LATENCY = Histogram("http_request_duration_seconds", "Time to answer an HTTP request, by route.",
                    ["service", "method", "route"])

Hook = Callable[[], Awaitable[None]]


class Readiness:
    """What /readyz (and the gRPC health service) report: warmed up, not draining, no not-ready file."""

    def __init__(self, not_ready_file: str = "") -> None:
        self.not_ready_file = not_ready_file
        self.started = False
        self.draining = False

    def state(self) -> tuple[bool, str]:
        """(ready, the reason in a few words)."""
        if self.draining:
            return False, "shutting down"
        if not self.started:
            return False, "starting"
        if self.not_ready_file and os.path.exists(self.not_ready_file):
            return False, f"{self.not_ready_file} exists"
        return True, "ready"


class Observe:
    """ASGI middleware: one metric sample and one log line per request, and the optional response delay."""

    def __init__(self, app: ASGIApp, service: str, log: logging.Logger, delay_seconds: float = 0.0) -> None:
        self.app = app
        self.service = service
        self.log = log
        self.delay = delay_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        status = 500
        started = time.perf_counter()

        async def remember(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            if self.delay and path not in PROBE_PATHS:
                # A stand-in for a slow dependency or a saturated pod, so timeouts can be seen for real.
                await asyncio.sleep(self.delay)
            await self.app(scope, receive, remember)
        finally:
            seconds = time.perf_counter() - started
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            REQUESTS.labels(self.service, scope["method"], route, str(status)).inc()
            LATENCY.labels(self.service, scope["method"], route).observe(seconds)
            if not (path in PROBE_PATHS and status < 400):
                client = scope.get("client") or ("", 0)
                self.log.info("request", extra={"method": scope["method"], "path": path, "status": status,
                                                "duration_ms": round(seconds * 1000, 1), "remote": client[0]})


def json_error(status: int, message: str, **fields: Any) -> JSONResponse:
    """An error answer every service gives the same shape: {"error": ..., more fields}."""
    return JSONResponse({"error": message, **fields}, status_code=status)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)


def create_app(service: str, common: Common, routes: Sequence[BaseRoute], *, readiness: Readiness,
               log: logging.Logger, on_startup: Sequence[Hook] = (), on_shutdown: Sequence[Hook] = ()) -> Starlette:
    """A Starlette app with the service's routes plus /healthz, /readyz and /metrics."""

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok", "service": service})

    async def readyz(request: Request) -> Response:
        ready, reason = readiness.state()
        return JSONResponse({"status": reason, "service": service}, status_code=200 if ready else 503)

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> Any:
        for hook in on_startup:
            await hook()

        async def warm_up() -> None:
            # A stand-in for real warm-up work (caches, connections): /readyz says 503 until it is done.
            await asyncio.sleep(common.startup_seconds)
            readiness.started = True

        warming = asyncio.create_task(warm_up())
        log.info("listening", extra={"host": common.host, "port": common.port, "version": common.version})
        try:
            yield
        finally:
            warming.cancel()
            for hook in on_shutdown:
                try:
                    await hook()
                except Exception:
                    log.exception("shutdown step failed")
            log.info("stopped")

    builtin = [Route("/healthz", healthz), Route("/readyz", readyz), Route("/metrics", metrics)]
    return Starlette(
        routes=[*builtin, *routes],
        middleware=[Middleware(Observe, service=service, log=log, delay_seconds=common.response_delay_seconds)],
        exception_handlers={HTTPException: _http_error},
        lifespan=lifespan,
    )


class _DrainingServer(uvicorn.Server):
    """uvicorn, with Kubernetes' shutdown order: on SIGTERM report not ready first, keep serving for the drain
    delay (while the endpoint is removed from every Service), then stop accepting, finish requests in flight
    and exit 0. A second signal skips what is left of the delay."""

    def __init__(self, config: uvicorn.Config, readiness: Readiness, drain_seconds: float,
                 log: logging.Logger) -> None:
        super().__init__(config)
        self.readiness = readiness
        self.drain_seconds = drain_seconds
        self.log = log

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        loop = asyncio.get_running_loop()
        signals = (signal.SIGTERM, signal.SIGINT)
        for sig in signals:
            loop.add_signal_handler(sig, self._on_signal, sig, loop)
        try:
            yield
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)

    def _on_signal(self, sig: int, loop: asyncio.AbstractEventLoop) -> None:
        if self.readiness.draining:
            self.should_exit = True
            return
        self.readiness.draining = True
        self.log.info("draining", extra={"signal": signal.Signals(sig).name, "seconds": self.drain_seconds})
        loop.call_later(self.drain_seconds, setattr, self, "should_exit", True)


def serve(app: Starlette, common: Common, readiness: Readiness, log: logging.Logger) -> int:
    """Serve until SIGTERM or SIGINT; the process exit code."""
    config = uvicorn.Config(
        app, host=common.host, port=common.port, log_config=None, access_log=False, lifespan="on",
        timeout_graceful_shutdown=common.shutdown_timeout_seconds,  # type: ignore[arg-type]
        server_header=False,  # a server that names its version helps only an attacker
        log_level=common.log_level,
    )
    server = _DrainingServer(config, readiness, common.shutdown_delay_seconds, log)
    server.run()
    return 0 if server.started else 1


async def json_body(request: Request, **fields: type) -> dict[str, Any]:
    """The request's JSON object with `fields` of the given types (422 otherwise); integers must be positive."""
    try:
        body = await request.json()
    except ValueError:
        raise HTTPException(422, "the body must be a JSON object") from None
    if not isinstance(body, dict):
        raise HTTPException(422, "the body must be a JSON object")
    for name, kind in fields.items():
        value = body.get(name)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise HTTPException(422, f"{name} must be {'a whole number' if kind is int else 'text'}")
        if kind is int and value <= 0:
            raise HTTPException(422, f"{name} must be more than 0")
    return body


@dataclass(frozen=True)
class Built:
    """A service ready to serve: its app and what `serve` needs."""

    app: Starlette
    common: Common
    readiness: Readiness
    log: logging.Logger
