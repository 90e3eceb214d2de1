"""The circuit breaker's state machine on plain data, with a clock the tests move: every transition, the
trial-call limit, answers that arrive late, the settings from the environment, and the metrics it exposes."""

from __future__ import annotations

import asyncio
import threading

import pytest
from prometheus_client import REGISTRY

from labshop.breaker import (
    CLOSED,
    HALF_OPEN,
    OPEN,
    BreakerOpen,
    CircuitBreaker,
    CircuitOpen,
    GuardedDependency,
    Settings,
    dependency,
    fallback_setting,
)
from labshop.calls import CallPolicy, Dependency, DependencyError
from labshop.config import ConfigError, Env
from labshop.faults import Fault

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make(clock: Clock, failures: int = 3, open_seconds: float = 10.0, probes: int = 1):
    changes: list[tuple[str, str]] = []
    b = CircuitBreaker("payments", Settings(failures, open_seconds, probes), clock=clock,
                       on_change=lambda old, new: changes.append((old, new)))
    return b, changes


def fail(b: CircuitBreaker, times: int = 1) -> None:
    for _ in range(times):
        b.failure(b.acquire())


def succeed(b: CircuitBreaker, times: int = 1) -> None:
    for _ in range(times):
        b.success(b.acquire())


def trip(b: CircuitBreaker) -> None:
    fail(b, b.settings.failures)
    assert b.state == OPEN


def test_closed_lets_calls_through_and_a_success_resets_the_count(clock):
    b, changes = make(clock, failures=3)
    fail(b, 2)
    assert b.state == CLOSED and b.failures == 2
    succeed(b)
    assert b.failures == 0
    fail(b, 2)  # 2 + 2 failures, but not in a row
    assert b.state == CLOSED and changes == []


def test_n_failures_in_a_row_open_it(clock):
    b, changes = make(clock, failures=3)
    fail(b, 3)
    assert b.state == OPEN
    assert changes == [(CLOSED, OPEN)]
    assert b.opened_count == 1


def test_open_fails_fast_until_the_open_time_is_up(clock):
    b, _ = make(clock, open_seconds=10)
    trip(b)
    clock.advance(9.9)
    with pytest.raises(CircuitOpen) as e:
        b.acquire()
    assert e.value.state == OPEN
    assert e.value.retry_in == pytest.approx(0.1)
    assert "failing fast" in str(e.value) and str(e.value).startswith("payments: ")
    assert b.retry_in() == pytest.approx(0.1)
    assert b.calls["rejected"] == 1


def test_after_the_open_time_the_next_call_is_a_trial_call_in_half_open(clock):
    b, changes = make(clock, open_seconds=10)
    trip(b)
    clock.advance(10)
    assert b.state == OPEN  # nothing moves it until a call comes
    permit = b.acquire()
    assert permit.probe
    assert b.state == HALF_OPEN and changes[-1] == (OPEN, HALF_OPEN)
    assert b.retry_in() == 0


def test_a_successful_trial_call_closes_it(clock):
    b, changes = make(clock)
    trip(b)
    clock.advance(10)
    b.success(b.acquire())
    assert b.state == CLOSED
    assert changes == [(CLOSED, OPEN), (OPEN, HALF_OPEN), (HALF_OPEN, CLOSED)]
    assert not b.acquire().probe


def test_a_failed_trial_call_opens_it_again_for_a_full_open_time(clock):
    b, changes = make(clock, open_seconds=10)
    trip(b)
    clock.advance(15)
    b.failure(b.acquire())
    assert b.state == OPEN and changes[-1] == (HALF_OPEN, OPEN)
    assert b.opened_count == 2
    clock.advance(9)
    with pytest.raises(CircuitOpen):
        b.acquire()
    clock.advance(1)
    assert b.acquire().probe


def test_half_open_lets_only_k_trial_calls_through_and_needs_all_of_them(clock):
    b, _ = make(clock, probes=2)
    trip(b)
    clock.advance(10)
    first, second = b.acquire(), b.acquire()
    with pytest.raises(CircuitOpen) as e:
        b.acquire()
    assert e.value.state == HALF_OPEN and "trial calls already under way" in str(e.value)
    b.success(first)
    assert b.state == HALF_OPEN  # one of two
    with pytest.raises(CircuitOpen):
        b.acquire()  # both places were given out
    b.success(second)
    assert b.state == CLOSED


def test_one_failed_trial_call_among_k_reopens_it(clock):
    b, _ = make(clock, probes=3)
    trip(b)
    clock.advance(10)
    permits = [b.acquire() for _ in range(3)]
    b.success(permits[0])
    b.failure(permits[1])
    assert b.state == OPEN
    b.success(permits[2])  # a trial call of a period that is over: counted, but it does not close the breaker
    assert b.state == OPEN
    assert b.calls == {"success": 2, "failure": 4, "rejected": 0}


def test_a_cancelled_trial_call_frees_its_place(clock):
    b, _ = make(clock, probes=1)
    trip(b)
    clock.advance(10)
    permit = b.acquire()
    with pytest.raises(CircuitOpen):
        b.acquire()
    b.release(permit)
    b.success(b.acquire())
    assert b.state == CLOSED


def test_answers_of_calls_let_through_before_the_breaker_opened_do_not_move_it(clock):
    b, changes = make(clock, failures=2)
    slow = b.acquire()  # let through while closed, answers late
    trip(b)
    clock.advance(10)
    probe = b.acquire()
    b.failure(slow)  # must not reopen the half-open breaker, nor count towards anything
    assert b.state == HALF_OPEN
    b.success(probe)
    assert b.state == CLOSED
    b.failure(slow)
    assert b.failures == 0  # a closed period that is over
    assert changes == [(CLOSED, OPEN), (OPEN, HALF_OPEN), (HALF_OPEN, CLOSED)]


def test_after_closing_it_counts_failures_from_zero(clock):
    b, _ = make(clock, failures=3)
    trip(b)
    clock.advance(10)
    succeed(b)
    fail(b, 2)
    assert b.state == CLOSED
    fail(b)
    assert b.state == OPEN and b.opened_count == 2


def test_many_threads_open_it_exactly_once(clock):
    b, changes = make(clock, failures=50)
    barrier = threading.Barrier(8)

    def hammer() -> None:
        barrier.wait()
        for _ in range(100):
            try:
                b.failure(b.acquire())
            except CircuitOpen:
                pass

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert changes == [(CLOSED, OPEN)]
    assert b.opened_count == 1
    assert b.calls["failure"] + b.calls["rejected"] == 800
    assert b.calls["failure"] >= 50


def test_call_counts_exceptions_timeouts_and_bad_results_as_failures(clock):
    b, _ = make(clock, failures=3)

    async def scenario() -> None:
        async def ok() -> int:
            return 200

        async def error() -> int:
            raise RuntimeError("boom")

        async def hangs() -> int:
            await asyncio.sleep(10)
            return 200

        async def server_error() -> int:
            return 503

        assert await b.call(ok, failed=lambda s: s >= 500) == 200
        with pytest.raises(RuntimeError):
            await b.call(error)
        with pytest.raises(TimeoutError):
            await b.call(hangs, timeout=0.01)
        assert b.failures == 2
        assert await b.call(server_error, failed=lambda s: s >= 500) == 503
        assert b.state == OPEN
        with pytest.raises(CircuitOpen):
            await b.call(ok)

    asyncio.run(scenario())
    assert b.calls == {"success": 1, "failure": 3, "rejected": 1}


def test_a_cancelled_call_gives_its_permit_back(clock):
    b, _ = make(clock, probes=1)
    trip(b)
    clock.advance(10)

    async def scenario() -> None:
        task = asyncio.create_task(b.call(lambda: asyncio.sleep(10)))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert b.state == HALF_OPEN
    b.success(b.acquire())  # the place the cancelled trial call held is free
    assert b.state == CLOSED


@pytest.mark.parametrize("values", [(0, 10, 1), (3, 0, 1), (3, 10, 0)])
def test_impossible_settings_are_refused(values):
    with pytest.raises(ValueError):
        Settings(*values)


def test_settings_from_the_environment():
    assert Settings.from_env(Env({}), "PAYMENTS") is None
    env = Env({"PAYMENTS_BREAKER_FAILURES": "4", "PAYMENTS_BREAKER_OPEN_SECONDS": "15",
               "PAYMENTS_BREAKER_HALF_OPEN_PROBES": "2"})
    assert Settings.from_env(env, "PAYMENTS") == Settings(4, 15.0, 2)
    assert Settings.from_env(Env({"PAYMENTS_BREAKER_FAILURES": "5"}), "PAYMENTS") == Settings(5, 30.0, 1)


@pytest.mark.parametrize("env, words", [
    ({"PAYMENTS_BREAKER_OPEN_SECONDS": "10"}, "PAYMENTS_BREAKER_OPEN_SECONDS is set but PAYMENTS_BREAKER_FAILURES"),
    ({"PAYMENTS_BREAKER_FAILURES": "0"}, "between 1 and 1000"),
    ({"PAYMENTS_BREAKER_FAILURES": "many"}, "must be a whole number"),
    ({"PAYMENTS_BREAKER_FAILURES": "3", "PAYMENTS_BREAKER_OPEN_SECONDS": "0"}, "must be more than 0"),
    ({"PAYMENTS_BREAKER_FAILURES": "3", "PAYMENTS_BREAKER_HALF_OPEN_PROBES": "0"}, "between 1 and 100"),
])
def test_settings_that_cannot_work_are_refused_with_their_name(env, words):
    with pytest.raises(ConfigError, match=words):
        Settings.from_env(Env(env), "PAYMENTS")


def test_fallback_setting():
    assert fallback_setting(Env({}), "PAYMENTS_FALLBACK", ("none", "pending")) == "none"
    assert fallback_setting(Env({"PAYMENTS_FALLBACK": "Pending"}), "PAYMENTS_FALLBACK", ("none", "pending")) \
        == "pending"
    with pytest.raises(ConfigError, match="PAYMENTS_FALLBACK must be none or pending, got 'later'"):
        fallback_setting(Env({"PAYMENTS_FALLBACK": "later"}), "PAYMENTS_FALLBACK", ("none", "pending"))


def test_fault_switch_settings():
    assert Fault.from_env(Env({}), "PAYMENTS") == Fault("none", 5.0, "PAYMENTS_FAULT")
    slow = Fault.from_env(Env({"PAYMENTS_FAULT": "slow", "PAYMENTS_FAULT_DELAY_SECONDS": "0.5"}), "PAYMENTS")
    assert (slow.mode, slow.delay_seconds, slow.on) == ("slow", 0.5, True)
    with pytest.raises(ConfigError, match="PAYMENTS_FAULT must be none, fail or slow, got 'flaky'"):
        Fault.from_env(Env({"PAYMENTS_FAULT": "flaky"}), "PAYMENTS")


def test_a_refused_call_is_a_dependency_error_without_attempts(clock):
    b, _ = make(clock, open_seconds=10)
    trip(b)
    clock.advance(4)
    with pytest.raises(CircuitOpen) as refused:
        b.acquire()
    e = BreakerOpen(refused.value)
    assert isinstance(e, DependencyError)
    assert (e.target, e.attempts, e.retry_in) == ("payments", 0, pytest.approx(6))
    assert str(e) == "payments: circuit open, failing fast (trial call in 6.0s)"


def test_the_metrics_read_the_breakers_state_when_scraped(clock):
    async def build() -> GuardedDependency:
        dep = dependency(Env({"METRICS_TEST_BREAKER_FAILURES": "1"}), "metrics_test", "http://x", CallPolicy())
        await dep.close()
        return dep

    dep = asyncio.run(build())
    assert isinstance(dep, GuardedDependency)

    def sample(name: str, **labels: str) -> float | None:
        return REGISTRY.get_sample_value(name, {"target": "metrics_test", **labels})

    assert sample("labshop_breaker_state") == 0
    assert sample("labshop_breaker_opened_total") == 0
    dep.breaker.failure(dep.breaker.acquire())
    with pytest.raises(CircuitOpen):
        dep.breaker.acquire()
    assert sample("labshop_breaker_state") == 1
    assert sample("labshop_breaker_opened_total") == 1
    assert sample("labshop_breaker_calls_total", result="failure") == 1
    assert sample("labshop_breaker_calls_total", result="rejected") == 1
    assert sample("labshop_breaker_calls_total", result="success") == 0


def test_without_settings_a_dependency_is_plain():
    async def build() -> tuple[Dependency, Dependency]:
        plain = dependency(Env({}), "catalog", "http://catalog", CallPolicy())
        guarded = dependency(Env({"CATALOG_BREAKER_FAILURES": "2"}), "catalog", "http://catalog", CallPolicy())
        await plain.close()
        await guarded.close()
        return plain, guarded

    plain, guarded = asyncio.run(build())
    assert type(plain) is Dependency
    assert isinstance(guarded, GuardedDependency) and guarded.breaker.settings == Settings(2, 30.0, 1)
