"""Liveness and readiness over HTTP, and the operator's own periodic duties (API ping, resync).

- `/healthz` (liveness) answers while the event loop turns: an operator whose loop is stuck does not answer at
  all, and Kubernetes restarts it. It does not depend on the API server, since a restart cannot fix that.
- `/readyz` (readiness) answers 200 once kopf has started its watches and the API server answered within the
  last `stale_after` seconds; 503 with the reason otherwise.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from aiohttp import web

from labctl_operator import kube
from labctl_operator.reconcile import Reconciler

log = logging.getLogger("labctl_operator")


@dataclass
class Health:
    """What the probes report."""

    stale_after: float = 30.0
    started: bool = False
    last_api_ok: float | None = None
    last_api_error: str = ""
    last_resync: float | None = None
    clock: Callable[[], float] = field(default=time.monotonic)

    def readiness(self) -> tuple[bool, str]:
        """(ready, why) as /readyz reports it."""
        if not self.started:
            return False, "starting: the watches are not open yet"
        if self.last_api_ok is None or self.clock() - self.last_api_ok > self.stale_after:
            return False, f"the API server has not answered for {self.stale_after:.0f}s: {self.last_api_error}"
        return True, "ok"

    def app(self) -> web.Application:
        async def healthz(_: web.Request) -> web.Response:
            return web.json_response({"status": "ok"})

        async def readyz(_: web.Request) -> web.Response:
            ready, why = self.readiness()
            return web.json_response({"status": "ok" if ready else "not ready", "reason": why},
                                     status=200 if ready else 503)

        application = web.Application()
        application.add_routes([web.get("/healthz", healthz), web.get("/readyz", readyz)])
        return application


async def serve(health: Health, host: str, port: int) -> web.AppRunner:
    """Start the probe server; the caller cleans the runner up."""
    runner = web.AppRunner(health.app(), handle_signals=False, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    log.info("probes on http://%s:%d/healthz and /readyz", host, port)
    return runner


async def ping(api: kube.Api, health: Health, stop: asyncio.Event, *, every: float = 10.0,
               kubeconfig: Path | None = None) -> None:
    """Ask the API server for its version every `every` seconds; stop the operator if its kubeconfig is deleted.

    A kubeconfig that vanished means the cluster it described was torn down: an operator left behind would
    retry against nothing forever.
    """
    while not stop.is_set():
        if kubeconfig is not None and not kubeconfig.exists():
            log.warning("%s was deleted: the cluster is gone; stopping", kubeconfig)
            stop.set()
            return
        try:
            await asyncio.to_thread(api.server_version)
            health.last_api_ok = health.clock()
        except kube.ApiFailure as e:
            health.last_api_error = e.message
        try:
            await asyncio.wait_for(stop.wait(), timeout=every)
        except asyncio.TimeoutError:
            pass


async def resync(reconciler: Reconciler, health: Health, stop: asyncio.Event, *, every: float) -> None:
    """Every `every` seconds, reconcile each Microservice whose children or status do not match.

    The safety net of a level-triggered controller: whatever an event-driven reconcile missed is found by
    comparing what is with what should be.
    """
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), timeout=every)
            return
        except asyncio.TimeoutError:
            pass
        if not health.started:
            continue
        try:
            stale = await asyncio.to_thread(reconciler.stale)
        except kube.ApiFailure as e:
            log.warning("resync: cannot list: %s", e.message)
            continue
        for namespace, name in stale:
            log.info("resync: %s/%s does not match; reconciling", namespace, name)
            try:
                await asyncio.to_thread(reconciler.reconcile, namespace, name)
            except kube.ApiFailure as e:
                log.warning("resync: %s/%s: %s", namespace, name, e.message)
        health.last_resync = health.clock()
