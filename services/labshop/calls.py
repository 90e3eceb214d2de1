"""Calling another service: an explicit timeout on every attempt, a bounded number of retries with exponential
backoff and jitter, and, where the callee asks for it, a ServiceAccount token that proves who is calling.

Only what is safe to repeat is retried: GET, and other methods when the caller marks the request idempotent
(it then sends an Idempotency-Key the callee deduplicates by). What is retried: connection failures, timeouts
and the answers that mean "try again" (502, 503, 504). When the attempts are used up the call fails at once
with DependencyError, so a slow dependency costs the caller a known, bounded time, never a hung request.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from prometheus_client import Counter

from labshop import telemetry
from labshop.config import ConfigError, Env

RETRYABLE_STATUS = frozenset({502, 503, 504})

CALLS = Counter("outbound_requests_total", "Attempts to call another service, by target and outcome.",
                ["target", "outcome"])
RETRIES = Counter("outbound_retries_total", "Attempts repeated after a failure, by target.", ["target"])

log = logging.getLogger("labshop.calls")


@dataclass(frozen=True)
class CallPolicy:
    """How long one attempt may take, how many times a failed attempt is repeated, and how long to wait first."""

    timeout_seconds: float = 5.0
    retries: int = 0
    backoff_seconds: float = 0.1
    backoff_max_seconds: float = 2.0

    @classmethod
    def from_env(cls, env: Env, prefix: str) -> CallPolicy:
        """`<PREFIX>_TIMEOUT_SECONDS`, `<PREFIX>_RETRIES`, `<PREFIX>_BACKOFF_SECONDS` (e.g. INVENTORY_RETRIES)."""
        timeout = env.seconds(f"{prefix}_TIMEOUT_SECONDS", cls.timeout_seconds, maximum=300)
        if timeout == 0:
            raise ConfigError(f"{prefix}_TIMEOUT_SECONDS must be more than 0 (a call without a deadline can hang)")
        return cls(
            timeout_seconds=timeout,
            retries=env.integer(f"{prefix}_RETRIES", cls.retries, minimum=0, maximum=10),
            backoff_seconds=env.seconds(f"{prefix}_BACKOFF_SECONDS", cls.backoff_seconds, maximum=60),
        )

    def backoff(self, attempt: int, rng: random.Random | None = None) -> float:
        """The wait after failed attempt number `attempt` (from 1): doubling from backoff_seconds, capped at
        backoff_max_seconds, then a random half to all of it, so callers that failed together spread out."""
        ceiling = min(self.backoff_max_seconds, self.backoff_seconds * 2 ** (attempt - 1))
        return (rng or random).uniform(ceiling / 2, ceiling)

    @property
    def attempts(self) -> int:
        return self.retries + 1


class DependencyError(Exception):
    """A call failed after every attempt; `status` is the last answer's status, if there was one."""

    def __init__(self, target: str, attempts: int, reason: str, status: int | None = None) -> None:
        super().__init__(f"{target}: {reason} (after {attempts} attempt{'s' if attempts != 1 else ''})")
        self.target = target
        self.attempts = attempts
        self.reason = reason
        self.status = status


class Dependency:
    """Another service, reached at `base_url` under `policy`.

    `token_file` is a projected ServiceAccount token; it is read again for every call because the kubelet
    replaces it before it expires.
    """

    def __init__(self, name: str, base_url: str, policy: CallPolicy, *, token_file: str = "",
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.name = name
        self.base_url = base_url
        self.policy = policy
        self.token_file = token_file
        # Connecting gets its own, shorter deadline: a dead address should not eat the whole attempt.
        timeout = httpx.Timeout(policy.timeout_seconds, connect=min(policy.timeout_seconds, 1.0))
        self.client = httpx.AsyncClient(base_url=base_url, timeout=timeout, headers={"User-Agent": "labshop"},
                                        transport=telemetry.traced(transport, name))  # as it was, unless tracing

    def _headers(self, idempotency_key: str | None) -> dict[str, str]:
        headers = {}
        if self.token_file:
            try:
                token = Path(self.token_file).read_text().strip()
            except OSError as e:
                raise DependencyError(self.name, 0, f"cannot read the token file {self.token_file}: {e.strerror}")
            headers["Authorization"] = f"Bearer {token}"
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        return headers

    async def call(self, method: str, path: str, *, json: Any = None, idempotency_key: str | None = None,
                   params: dict[str, str] | None = None) -> httpx.Response:
        """The first answer that is not worth retrying (any status but 502/503/504; a 4xx is the caller's
        problem and is returned), or DependencyError once every attempt failed."""
        retry = method in ("GET", "HEAD") or idempotency_key is not None
        attempts = self.policy.attempts if retry else 1
        last = ""
        status = None
        for attempt in range(1, attempts + 1):
            if attempt > 1:
                RETRIES.labels(self.name).inc()
                await asyncio.sleep(self.policy.backoff(attempt - 1))
            try:
                response = await self.client.request(method, path, json=json, params=params,
                                                     headers=self._headers(idempotency_key))
            except httpx.TimeoutException:
                outcome, last, status = "timeout", f"no answer within {self.policy.timeout_seconds:g}s", None
            except httpx.TransportError as e:
                outcome, last, status = "error", f"cannot connect to {self.base_url} ({_short(e)})", None
            else:
                if response.status_code not in RETRYABLE_STATUS:
                    CALLS.labels(self.name, "ok" if response.status_code < 500 else "error").inc()
                    return response
                outcome, last, status = "error", f"answered {response.status_code}", response.status_code
            CALLS.labels(self.name, outcome).inc()
            log.warning("call failed", extra={"target": self.name, "method": method, "path": path,
                                              "attempt": attempt, "of": attempts, "reason": last})
        raise DependencyError(self.name, attempts, last, status)

    async def close(self) -> None:
        await self.client.aclose()


def _short(e: Exception) -> str:
    text = str(e) or type(e).__name__
    return text.splitlines()[0][:120]


def json_object(response: httpx.Response) -> dict:
    """A response's JSON object body, or {} when the body is not one (an error page, empty, a list)."""
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}
