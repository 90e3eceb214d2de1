"""A circuit breaker: stop calling a dependency that keeps failing, answer at once while it is down, and find
out with a few trial calls when it is back.

    closed     every call goes through. `failures` failed calls in a row open the breaker; a success resets
               the count.
    open       no call goes through: CircuitOpen at once, for `open_seconds`. The dependency gets time to
               recover instead of a queue of callers that will time out anyway.
    half-open  the first call after `open_seconds` turns the breaker half-open. Up to `half_open_probes` calls
               go through as trial calls (others are refused as if open); when all of them succeed the breaker
               closes, when one fails it opens again for another `open_seconds`.

Failures are counted in a row, not as a rate within a time window: with the shop's traffic (a few calls a
second at most) a window-based rate needs a minimum number of calls before it means anything, and "5 failures
in a row" is a rule a person can predict and test. A rate over a sliding window (resilience4j's default) suits
high traffic, where a few failures among thousands are normal. What counts as a failure is the caller's choice
(`failed`); an exception is one, a timeout included.

The breaker guards one dependency for one process: each replica of a service has its own and may be in another
state than its siblings. The state lives in memory and starts closed after a restart.

Thread- and task-safe: every change of state happens under one lock, and no lock is held across an `await`.
Answers that arrive after the state changed (a call let through while closed that fails after the breaker
opened, a trial call of an earlier half-open period) are counted in the metrics but do not move the state.

Why not a library. Evaluated on PyPI (versions current in 2025):
- pybreaker 1.4.1 (maintained, thread-safe, success_threshold): its async support is Tornado's coroutines, not
  asyncio; it reads the wall clock (datetime.now), and half-open lets every concurrent call through.
- aiobreaker 1.2.0 (asyncio fork of pybreaker): last released 2021, unmaintained; datetime.utcnow, deprecated
  since Python 3.12, and it mixes local and UTC time when computing the time left.
- circuitbreaker 2.1.3 (maintained, async decorators, monotonic clock): half-open is only "open and the time
  is up", so every call goes through at once; no limit on trial calls, no lock, no success threshold.
- purgatory 3.0.1 (asyncio-first, optional Redis store): reads time.time(); half-open lets every call through
  and closes on the first success; a message bus and unit of work for what is one counter per process here.
None bounds the trial calls in half-open (a recovering dependency gets the whole backlog at once), none takes
an injected clock, and each would still need the metrics and the calls' notion of failure added around it. So
this is a small module of its own, unit-tested transition by transition with a fake clock
(tests/services/test_breaker.py) and against real processes (tests/services/test_circuit_breaker.py).

Wiring (orders, per dependency NAME: CATALOG, INVENTORY or PAYMENTS; all unset: no breaker, calls as before):
    NAME_BREAKER_FAILURES            failed calls in a row that open the breaker (switches it on)
    NAME_BREAKER_OPEN_SECONDS        how long it stays open before trial calls (default 30)
    NAME_BREAKER_HALF_OPEN_PROBES    trial calls in half-open, all of which must succeed to close (default 1)
A call is one Dependency.call with its own retries and NAME_TIMEOUT_SECONDS per attempt (labshop.calls): it
fails when every attempt failed or timed out, or when the answer is a 5xx. A 4xx is the caller's problem and
counts as a success: the dependency answered.

Metrics (Prometheus, on the service's /metrics):
    labshop_breaker_state{target}              0 closed, 1 open, 2 half-open
    labshop_breaker_opened_total{target}       times the breaker opened
    labshop_breaker_calls_total{target,result} success, failure, rejected (not made: the breaker was open)
    labshop_fallbacks_total{target}            answers a fallback gave instead of the dependency
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
from prometheus_client import REGISTRY, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from labshop.calls import CallPolicy, Dependency, DependencyError
from labshop.config import ConfigError, Env

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"
STATE_NUMBER = {CLOSED: 0, OPEN: 1, HALF_OPEN: 2}
RESULTS = ("success", "failure", "rejected")

FALLBACKS = Counter("labshop_fallbacks", "Answers a fallback gave instead of the dependency, by target.",
                    ["target"])

log = logging.getLogger("labshop.breaker")

T = TypeVar("T")


@dataclass(frozen=True)
class Settings:
    """When the breaker opens, for how long, and how many trial calls decide whether it closes."""

    failures: int = 5
    open_seconds: float = 30.0
    half_open_probes: int = 1

    def __post_init__(self) -> None:
        if self.failures < 1 or self.half_open_probes < 1 or not self.open_seconds > 0:
            raise ValueError(f"impossible breaker settings: {self}")

    @classmethod
    def from_env(cls, env: Env, prefix: str) -> Settings | None:
        """`<PREFIX>_BREAKER_FAILURES` (switches the breaker on), `_OPEN_SECONDS`, `_HALF_OPEN_PROBES`; None when
        the breaker is off."""
        names = [f"{prefix}_BREAKER_{n}" for n in ("FAILURES", "OPEN_SECONDS", "HALF_OPEN_PROBES")]
        if not env.raw(names[0]):
            others = [n for n in names[1:] if env.raw(n)]
            if others:
                raise ConfigError(f"{others[0]} is set but {names[0]} is not: set {names[0]} to switch the "
                                  f"breaker on (failed calls in a row that open it)")
            return None
        open_seconds = env.seconds(names[1], cls.open_seconds, maximum=3600)
        if open_seconds == 0:
            raise ConfigError(f"{names[1]} must be more than 0 (a breaker that never stays open protects nothing)")
        return cls(
            failures=env.integer(names[0], cls.failures, minimum=1, maximum=1000),
            open_seconds=open_seconds,
            half_open_probes=env.integer(names[2], cls.half_open_probes, minimum=1, maximum=100),
        )


class CircuitOpen(Exception):
    """The breaker refused the call without making it; `retry_in` is the time left before trial calls."""

    def __init__(self, name: str, state: str, retry_in: float) -> None:
        if state == OPEN:
            why = f"circuit open, failing fast (trial call in {retry_in:.1f}s)"
        else:
            why = "circuit half-open, trial calls already under way"
        super().__init__(f"{name}: {why}")
        self.name = name
        self.state = state
        self.retry_in = retry_in


@dataclass(frozen=True)
class Permit:
    """One call the breaker let through: the state period it belongs to, and whether it is a trial call."""

    generation: int
    probe: bool


class CircuitBreaker:
    """The state machine. `clock` is a monotonic clock in seconds (injected by tests); `on_change(old, new)` is
    told of every transition, after the lock is released."""

    def __init__(self, name: str, settings: Settings = Settings(), *,
                 clock: Callable[[], float] = time.monotonic,
                 on_change: Callable[[str, str], None] | None = None) -> None:
        self.name = name
        self.settings = settings
        self._clock = clock
        self._on_change = on_change
        self._lock = threading.Lock()
        self._state = CLOSED
        self._generation = 0          # one more on every transition; permits of an older one are stale
        self._failures = 0            # in a row, while closed
        self._opened_at = 0.0
        self._probes_started = 0      # trial calls let through in this half-open period
        self._probes_passed = 0
        self.opened_count = 0
        self.calls = dict.fromkeys(RESULTS, 0)

    @property
    def state(self) -> str:
        """The state as last decided. An open breaker whose time is up says open until the next call tries."""
        return self._state

    @property
    def failures(self) -> int:
        """Failed calls in a row while closed."""
        return self._failures

    def snapshot(self) -> tuple[str, int, dict[str, int]]:
        """(state, times opened, calls by result), read together."""
        with self._lock:
            return self._state, self.opened_count, dict(self.calls)

    def retry_in(self) -> float:
        """Seconds until an open breaker lets a trial call through (0 when not open)."""
        with self._lock:
            return self._retry_in(self._clock())

    def _retry_in(self, now: float) -> float:
        if self._state != OPEN:
            return 0.0
        return max(0.0, self._opened_at + self.settings.open_seconds - now)

    def acquire(self) -> Permit:
        """Let one call through, or raise CircuitOpen. Every permit must be given back with success(),
        failure() or release()."""
        moves: list[tuple[str, str]] = []
        try:
            with self._lock:
                now = self._clock()
                if self._state == OPEN:
                    if now < self._opened_at + self.settings.open_seconds:
                        self.calls["rejected"] += 1
                        raise CircuitOpen(self.name, OPEN, self._retry_in(now))
                    moves.append(self._move(HALF_OPEN, now))
                if self._state == HALF_OPEN:
                    if self._probes_started >= self.settings.half_open_probes:
                        self.calls["rejected"] += 1
                        raise CircuitOpen(self.name, HALF_OPEN, 0.0)
                    self._probes_started += 1
                    return Permit(self._generation, probe=True)
                return Permit(self._generation, probe=False)
        finally:
            self._announce(moves)

    def success(self, permit: Permit) -> None:
        """The call let through by `permit` succeeded."""
        self._record(permit, ok=True)

    def failure(self, permit: Permit) -> None:
        """The call let through by `permit` failed."""
        self._record(permit, ok=False)

    def release(self, permit: Permit) -> None:
        """The call ended without a verdict (cancelled): a trial call's place is free for another one."""
        with self._lock:
            if permit.probe and permit.generation == self._generation and self._state == HALF_OPEN:
                self._probes_started -= 1

    def _record(self, permit: Permit, *, ok: bool) -> None:
        moves: list[tuple[str, str]] = []
        with self._lock:
            self.calls["success" if ok else "failure"] += 1
            if permit.generation == self._generation:
                now = self._clock()
                if self._state == CLOSED:
                    self._failures = 0 if ok else self._failures + 1
                    if self._failures >= self.settings.failures:
                        moves.append(self._move(OPEN, now))
                elif self._state == HALF_OPEN:
                    if not ok:
                        moves.append(self._move(OPEN, now))
                    else:
                        self._probes_passed += 1
                        if self._probes_passed >= self.settings.half_open_probes:
                            moves.append(self._move(CLOSED, now))
        self._announce(moves)

    def _move(self, new: str, now: float) -> tuple[str, str]:
        old, self._state = self._state, new
        self._generation += 1
        self._failures = 0
        self._probes_started = self._probes_passed = 0
        if new == OPEN:
            self._opened_at = now
            self.opened_count += 1
        return old, new

    def _announce(self, moves: list[tuple[str, str]]) -> None:
        if self._on_change is not None:
            for old, new in moves:
                self._on_change(old, new)

    async def call(self, fn: Callable[[], Awaitable[T]], *, failed: Callable[[T], bool] | None = None,
                   timeout: float | None = None) -> T:
        """Await fn() through the breaker: CircuitOpen without calling it when open; an exception (TimeoutError
        after `timeout` seconds included) or a result `failed` judges bad counts as a failure."""
        permit = self.acquire()
        try:
            result = await (asyncio.wait_for(fn(), timeout) if timeout is not None else fn())
        except asyncio.CancelledError:
            self.release(permit)
            raise
        except Exception:
            self.failure(permit)
            raise
        if failed is not None and failed(result):
            self.failure(permit)
        else:
            self.success(permit)
        return result


class BreakerOpen(DependencyError):
    """A call the breaker did not make: a DependencyError with no attempt, so callers handle it like any other."""

    def __init__(self, e: CircuitOpen) -> None:
        super().__init__(e.name, 0, str(e).split(": ", 1)[1])
        self.args = (str(e),)
        self.retry_in = e.retry_in


class GuardedDependency(Dependency):
    """A Dependency whose calls go through a circuit breaker (see the module's docstring)."""

    def __init__(self, name: str, base_url: str, policy: CallPolicy, settings: Settings, *,
                 clock: Callable[[], float] = time.monotonic, **kwargs: Any) -> None:
        super().__init__(name, base_url, policy, **kwargs)
        self.breaker = CircuitBreaker(name, settings, clock=clock, on_change=self._changed)
        _BREAKERS[name] = self.breaker

    def _changed(self, old: str, new: str) -> None:
        fields = {"target": self.name, "from": old, "to": new}
        if new == OPEN:
            log.warning("circuit opened", extra={**fields, "open_seconds": self.breaker.settings.open_seconds})
        else:
            log.info(f"circuit {new}", extra=fields)

    async def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        attempt = Dependency.call
        try:
            return await self.breaker.call(lambda: attempt(self, method, path, **kwargs),
                                           failed=lambda response: response.status_code >= 500)
        except CircuitOpen as e:
            raise BreakerOpen(e) from None


def dependency(env: Env, name: str, base_url: str, policy: CallPolicy, **kwargs: Any) -> Dependency:
    """The dependency `name`, behind a breaker when `<NAME>_BREAKER_FAILURES` is set, plain otherwise."""
    settings = Settings.from_env(env, name.upper())
    if settings is None:
        return Dependency(name, base_url, policy, **kwargs)
    return GuardedDependency(name, base_url, policy, settings, **kwargs)


def fallback_setting(env: Env, name: str, modes: tuple[str, ...]) -> str:
    """The fallback mode named by `name` (one of `modes`; the first is the default)."""
    mode = env.text(name, modes[0]).lower()
    if mode not in modes:
        raise ConfigError(f"{name} must be {', '.join(modes[:-1])} or {modes[-1]}, got {mode!r}")
    return mode


# The breakers this process guards its calls with, by target; the metrics read them when scraped, so what
# /metrics says is the state itself, never a copy that could lag behind.
_BREAKERS: dict[str, CircuitBreaker] = {}


class _BreakerMetrics:
    def collect(self) -> Iterator[Metric]:
        if not _BREAKERS:
            return
        state = GaugeMetricFamily("labshop_breaker_state",
                                  "Circuit breaker state per target: 0 closed, 1 open, 2 half-open.", labels=["target"])
        opened = CounterMetricFamily("labshop_breaker_opened", "Times the circuit breaker opened, by target.",
                                     labels=["target"])
        calls = CounterMetricFamily("labshop_breaker_calls",
                                    "Calls through the circuit breaker by target and result "
                                    "(rejected: not made, the breaker was open).", labels=["target", "result"])
        for target, breaker in sorted(_BREAKERS.items()):
            now, times, results = breaker.snapshot()
            state.add_metric([target], STATE_NUMBER[now])
            opened.add_metric([target], times)
            for result in RESULTS:
                calls.add_metric([target, result], results[result])
        yield state
        yield opened
        yield calls

    def describe(self) -> list[Metric]:
        return []


REGISTRY.register(_BreakerMetrics())
