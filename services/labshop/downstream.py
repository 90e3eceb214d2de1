"""Readiness that also asks other services whether they are ready: READINESS_CHECKS_DOWNSTREAM=payments.

A setting to know and to avoid. Readiness answers "may this pod get traffic?"; with a dependency in it, one
failing service makes every caller's pods unready too, their Services lose every endpoint, and their own
callers fail, including on the requests that never needed the failing service (cascading unreadiness). The
caller can do better on its own: answer what it can, and fail fast or fall back for the rest (labshop.breaker).

READINESS_CHECKS_DOWNSTREAM names dependencies (comma- or space-separated, e.g. `payments`; unset or `none`:
own state only). Every 2 s each one's /readyz is asked, with a 1 s timeout; /readyz then answers 503 while the
last answer of any of them was not 200, and until each has answered once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping

import httpx

from labshop.calls import Dependency
from labshop.config import ConfigError, Env
from labshop.web import Readiness

VARIABLE = "READINESS_CHECKS_DOWNSTREAM"


class DownstreamReadiness(Readiness):
    """The service's own readiness, and, for each dependency in `checks`, the last answer of its /readyz."""

    def __init__(self, not_ready_file: str, checks: Mapping[str, Dependency], *, interval: float = 2.0,
                 timeout: float = 1.0) -> None:
        super().__init__(not_ready_file)
        self.checks = dict(checks)
        self.interval = interval
        self.timeout = timeout
        self.seen: dict[str, str] = {}  # dependency -> "" when ready, else what was wrong
        self._task: asyncio.Task | None = None

    @classmethod
    def from_env(cls, env: Env, not_ready_file: str, deps: Mapping[str, Dependency]) -> DownstreamReadiness:
        names = env.words(VARIABLE) - {"none"}
        unknown = sorted(names - deps.keys())
        if unknown:
            known = ", ".join(sorted(deps)) or "none configured"
            raise ConfigError(f"{VARIABLE} names {unknown[0]!r}, which is not a dependency with a URL ({known})")
        return cls(not_ready_file, {name: deps[name] for name in sorted(names)})

    def state(self) -> tuple[bool, str]:
        ready, reason = super().state()
        if not ready:
            return ready, reason
        for name in self.checks:
            wrong = self.seen.get(name, "not asked yet")
            if wrong:
                return False, f"{name} is not ready ({wrong})"
        return True, reason

    async def start(self) -> None:
        if self.checks:
            self._task = asyncio.create_task(self._watch())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _watch(self) -> None:
        while True:
            await asyncio.gather(*(self._ask(name, dep) for name, dep in self.checks.items()))
            await asyncio.sleep(self.interval)

    async def _ask(self, name: str, dep: Dependency) -> None:
        try:
            response = await dep.client.get("/readyz", timeout=self.timeout)
        except httpx.TimeoutException:
            self.seen[name] = f"no answer within {self.timeout:g}s"
        except httpx.HTTPError:
            self.seen[name] = "cannot connect"
        else:
            self.seen[name] = "" if response.status_code == 200 else f"answered {response.status_code}"
