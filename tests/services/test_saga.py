"""The saga engine on plain callables and a real SQLite log: forward, compensation in reverse for exactly what may
have happened, recovery from the log after a crash, and the participants' once-per-key ledger."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Mapping
from typing import Any

import pytest

from labshop.calls import CallPolicy
from labshop.checkout import SagaConfig
from labshop.config import ConfigError, Env
from labshop.participants import Ledger
from labshop.saga import (COMPENSATED, COMPENSATING, COMPLETED, RUNNING, Answer, KeyReused, Orchestrator, Outcome,
                          SagaLog, Step, replay)

pytestmark = pytest.mark.unit

NAMES = ("create-order", "reserve-stock", "charge-payment", "confirm-order")


class Participant:
    """Records every call it gets, and answers as told: per step, a list of outcomes consumed one per call."""

    def __init__(self, script: Mapping[str, list[Outcome]] | None = None,
                 undo_script: Mapping[str, list[Outcome]] | None = None, *, hold: str = "") -> None:
        self.calls: list[tuple[str, str, str, dict]] = []  # (phase, step, key, context)
        self.script = {k: list(v) for k, v in (script or {}).items()}
        self.undo_script = {k: list(v) for k, v in (undo_script or {}).items()}
        self.hold = hold  # this step's action never answers; `held` is set when it has been called
        self.held = asyncio.Event()

    def action(self, step: str):
        async def call(key: str, context: Mapping[str, Any]) -> Answer:
            self.calls.append(("action", step, key, dict(context)))
            if step == self.hold:
                self.held.set()
                await asyncio.Event().wait()
            outcome = self.script[step].pop(0) if self.script.get(step) else Outcome.DONE
            return Answer(outcome, {f"{step}_result": len(self.calls)} if outcome is Outcome.DONE else {},
                          f"{step} said {outcome.value}")
        return call

    def compensation(self, step: str):
        async def call(key: str, context: Mapping[str, Any]) -> Answer:
            self.calls.append(("compensation", step, key, dict(context)))
            outcome = self.undo_script[step].pop(0) if self.undo_script.get(step) else Outcome.DONE
            return Answer(outcome, {"undone": step} if outcome is Outcome.DONE else {}, "try later")
        return call

    def steps(self, without_compensation: tuple[str, ...] = ()) -> list[Step]:
        return [Step(n, self.action(n), None if n in without_compensation else self.compensation(n)) for n in NAMES]

    def seen(self, phase: str | None = None) -> list[str]:
        return [f"{p}:{s}" if phase is None else s for p, s, _, _ in self.calls if phase in (None, p)]


@pytest.fixture
def log(tmp_path):
    saga_log = SagaLog(tmp_path / "saga.db")
    yield saga_log
    saga_log.close()


def run(coro):
    return asyncio.run(coro)


def test_a_saga_that_goes_through_runs_each_step_once_in_order_and_passes_results_on(log):
    p = Participant()
    saga, created = run(Orchestrator(log, p.steps()).start("s1", {"sku": "tea", "quantity": 2}))
    assert created and saga.status == COMPLETED
    assert p.seen() == [f"action:{n}" for n in NAMES]
    assert [key for _, _, key, _ in p.calls] == [f"s1:{n}" for n in NAMES]
    # Each step gets the input, the saga id and every earlier step's result.
    last_context = p.calls[-1][3]
    assert last_context["sku"] == "tea" and last_context["saga_id"] == "s1"
    assert last_context["create-order_result"] == 1 and last_context["charge-payment_result"] == 3
    assert [s.status for s in saga.steps] == ["done"] * 4
    assert log.unfinished() == []


@pytest.mark.parametrize("failing", range(len(NAMES)), ids=NAMES)
def test_a_refused_step_turns_the_saga_back_through_exactly_the_steps_done_before_it(log, failing):
    p = Participant({NAMES[failing]: [Outcome.REFUSED]})
    saga, _ = run(Orchestrator(log, p.steps()).start("s1", {"sku": "tea"}))
    assert saga.status == COMPENSATED
    done_before = list(NAMES[:failing])
    assert p.seen("action") == [*done_before, NAMES[failing]]  # nothing after the failure runs
    assert p.seen("compensation") == done_before[::-1]          # undone newest first; the refused one is not
    statuses = {s.name: s.status for s in saga.steps}
    assert statuses == {**{n: "compensated" for n in done_before}, NAMES[failing]: "refused",
                        **{n: "pending" for n in NAMES[failing + 1:]}}
    assert saga.reason.startswith(f"{NAMES[failing]} refused")


@pytest.mark.parametrize("failing", range(len(NAMES)), ids=NAMES)
def test_a_step_with_an_unknown_outcome_is_compensated_too(log, failing):
    # No answer (a timeout): the participant may have done it, so its compensation is sent as well.
    p = Participant({NAMES[failing]: [Outcome.UNKNOWN]})
    saga, _ = run(Orchestrator(log, p.steps()).start("s1", {}))
    assert saga.status == COMPENSATED
    assert p.seen("compensation") == list(NAMES[:failing + 1])[::-1]
    assert saga.step(NAMES[failing]).status == "compensated"


def test_an_action_that_raises_counts_as_unknown(log):
    async def broken(key, context):
        raise RuntimeError("client bug")

    p = Participant()
    steps = p.steps()
    steps[1] = Step("reserve-stock", broken, p.compensation("reserve-stock"))
    saga, _ = run(Orchestrator(log, steps).start("s1", {}))
    assert saga.status == COMPENSATED
    assert "RuntimeError: client bug" in saga.step("reserve-stock").reason
    assert p.seen("compensation") == ["reserve-stock", "create-order"]


def test_a_failed_compensation_keeps_the_saga_compensating_until_it_succeeds(log):
    p = Participant({"charge-payment": [Outcome.REFUSED]}, undo_script={"reserve-stock": [Outcome.UNKNOWN]})
    orchestrator = Orchestrator(log, p.steps())
    saga, _ = run(orchestrator.start("s1", {}))
    assert saga.status == COMPENSATING
    assert saga.step("reserve-stock").status == "compensating"
    assert saga.step("create-order").status == "done"  # not undone out of order
    assert log.unfinished() == ["s1"]
    saga = run(orchestrator.drive("s1"))
    assert saga.status == COMPENSATED
    assert p.seen("compensation") == ["reserve-stock", "reserve-stock", "create-order"]


def test_a_step_without_compensation_blocks_the_saga_until_one_is_configured(log, tmp_path):
    p = Participant({"charge-payment": [Outcome.REFUSED]})
    saga, _ = run(Orchestrator(log, p.steps(without_compensation=("reserve-stock",))).start("s1", {}))
    assert saga.status == COMPENSATING
    assert "reserve-stock has no compensation configured" in saga.blocked
    assert p.seen("compensation") == []
    # Driving it again changes nothing and writes nothing new.
    events = len(log.events("s1"))
    run(Orchestrator(log, p.steps(without_compensation=("reserve-stock",))).drive("s1"))
    assert len(log.events("s1")) == events
    # With the compensation configured, a restarted orchestrator finishes the job from the log.
    recovered = run(Orchestrator(log, p.steps()).recover())
    assert [s.status for s in recovered] == [COMPENSATED]
    assert p.seen("compensation") == ["reserve-stock", "create-order"]
    assert recovered[0].blocked == ""


def crash_during(log, step: str, saga_id: str = "s1") -> Participant:
    """Start a saga and kill its driver while `step` is at its participant (as a crash would): what the log
    holds then is all a restarted orchestrator has."""

    async def scenario() -> Participant:
        p = Participant(hold=step)
        task = asyncio.create_task(Orchestrator(log, p.steps()).start(saga_id, {"sku": "tea"}))
        await p.held.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return p

    return run(scenario())


def test_the_log_shows_the_step_in_flight_when_the_orchestrator_dies(log):
    crash_during(log, "charge-payment")
    saga = replay(log.record("s1"), log.events("s1"))
    assert saga.status == RUNNING
    assert [s.status for s in saga.steps] == ["done", "done", "in-flight", "pending"]
    kinds = [e.kind for e in log.events("s1")]
    assert kinds[-1] == "step-started"  # written before the call went out: the write-ahead record


def test_resume_sends_the_interrupted_step_again_with_the_same_key_and_finishes(log, tmp_path):
    crash_during(log, "charge-payment")
    log.close()
    reopened = SagaLog(tmp_path / "saga.db")  # a new process opening the same file
    try:
        after = Participant()
        [saga] = run(Orchestrator(reopened, after.steps(), recovery="resume").recover())
        assert saga.status == COMPLETED
        assert after.seen() == ["action:charge-payment", "action:confirm-order"]
        assert after.calls[0][2] == "s1:charge-payment"  # the key it had the first time
        assert saga.step("charge-payment").sent == 2
        # The results recorded before the crash are still passed on.
        assert after.calls[0][3]["create-order_result"] == 1
    finally:
        reopened.close()


def test_compensate_recovery_undoes_the_interrupted_step_and_everything_before_it(log, tmp_path):
    crash_during(log, "charge-payment")
    after = Participant()
    [saga] = run(Orchestrator(log, after.steps(), recovery="compensate").recover())
    assert saga.status == COMPENSATED
    assert after.seen() == ["compensation:charge-payment", "compensation:reserve-stock", "compensation:create-order"]
    assert saga.reason == "the orchestrator restarted while charge-payment was in flight"


def test_a_known_saga_id_returns_that_saga_without_running_anything(log):
    p = Participant()
    orchestrator = Orchestrator(log, p.steps())
    first, created = run(orchestrator.start("s1", {"sku": "tea", "quantity": 1}))
    again, created_again = run(orchestrator.start("s1", {"quantity": 1, "sku": "tea"}))
    assert created and not created_again
    assert again.status == first.status == COMPLETED
    assert len(p.calls) == len(NAMES)
    with pytest.raises(KeyReused):
        run(orchestrator.start("s1", {"sku": "mug", "quantity": 1}))


def test_every_step_is_on_disk_before_the_next_call(log, tmp_path):
    seen_by_participant = []

    def action(step):
        async def call(key, context):
            # Another connection (another process would see the same): the start of this step is committed.
            with sqlite3.connect(tmp_path / "saga.db") as other:
                kinds = [k for (k,) in other.execute("SELECT kind FROM events WHERE saga_id = 's1' ORDER BY seq")]
            seen_by_participant.append(kinds[-1])
            return Answer(Outcome.DONE, {})
        return call

    steps = [Step(n, action(n)) for n in NAMES[:2]]
    run(Orchestrator(log, steps).start("s1", {}))
    assert seen_by_participant == ["step-started", "step-started"]


def test_the_log_survives_reopening_and_keeps_its_age(tmp_path):
    first = SagaLog(tmp_path / "saga.db")
    run(Orchestrator(first, Participant().steps()).start("s1", {"sku": "tea"}))
    created = first.created_at
    first.close()
    second = SagaLog(tmp_path / "saga.db")
    try:
        assert second.created_at == created
        assert [r.id for r in second.recent()] == ["s1"]
        assert second.counts() == {COMPLETED: 1}
        assert second.record("s1").input == {"sku": "tea"}
    finally:
        second.close()


def test_saga_json_carries_steps_and_optionally_the_log(log):
    p = Participant({"charge-payment": [Outcome.REFUSED]})
    saga, _ = run(Orchestrator(log, p.steps()).start("s1", {"sku": "tea"}))
    body = saga.to_json(events=True)
    json.dumps(body)  # serialisable as it is
    assert body["status"] == "compensated"
    assert [s["status"] for s in body["steps"]] == ["compensated", "compensated", "refused", "pending"]
    assert body["steps"][1]["compensation"] == {"undone": "reserve-stock"}
    assert body["log"][0]["kind"] == "saga-started" and body["log"][-1]["kind"] == "saga-compensated"
    assert "log" not in saga.to_json()


def test_the_orchestrator_refuses_an_unknown_recovery_policy_and_duplicate_steps(log):
    with pytest.raises(ValueError, match="recovery"):
        Orchestrator(log, Participant().steps(), recovery="retry")
    p = Participant()
    with pytest.raises(ValueError, match="unique"):
        Orchestrator(log, [Step("a", p.action("a")), Step("a", p.action("a"))])


# --- the participants' ledger ------------------------------------------------------------------------------

def body(response) -> dict:
    return json.loads(response.body)


def test_the_ledger_does_an_action_once_and_replays_its_answer():
    ledger, runs = Ledger("inventory"), []

    def work():
        runs.append(1)
        return (201, {"reservation_id": f"r-{len(runs)}"}), "detail"

    first = ledger.act("s1:reserve-stock", "reserve", work)
    again = ledger.act("s1:reserve-stock", "reserve", work)
    assert first.status_code == again.status_code == 201
    assert body(first) == body(again) == {"reservation_id": "r-1"}
    assert again.headers["idempotent-replayed"] == "true" and "idempotent-replayed" not in first.headers
    assert runs == [1]
    [op] = ledger.listing("s1")["operations"]
    assert (op["action_requests"], op["action_runs"], op["state"]) == (2, 1, "done")


def test_the_ledger_undoes_once_and_refuses_an_action_whose_compensation_came_first():
    ledger, undone = Ledger("payments"), []

    def undo(op):
        undone.append(op.key)
        return {"payment_id": op.detail}

    ledger.act("s1:charge-payment", "charge", lambda: ((201, {"payment_id": "p-1"}), "p-1"))
    first = ledger.compensate("s1:charge-payment", {"charge": undo}, "refunded")
    again = ledger.compensate("s1:charge-payment", {"charge": undo}, "refunded")
    assert body(first) == body(again) == {"refunded": True, "payment_id": "p-1"}
    assert undone == ["s1:charge-payment"]

    # The compensation overtook its action (the action timed out at the orchestrator, and was still on its way).
    early = ledger.compensate("s2:charge-payment", {"charge": undo}, "refunded")
    assert early.status_code == 200 and body(early)["refunded"] is False
    late = ledger.act("s2:charge-payment", "charge", lambda: pytest.fail("a blocked action must not run"))
    assert late.status_code == 409
    ops = {op["key"]: op for op in ledger.listing()["operations"]}
    assert ops["s2:charge-payment"]["state"] == "blocked" and ops["s2:charge-payment"]["action_runs"] == 0


def test_the_ledger_has_nothing_to_undo_for_a_refused_action():
    ledger = Ledger("inventory")
    refused = ledger.act("s1:reserve-stock", "reserve", lambda: ((409, {"error": "not enough tea"}), None))
    assert refused.status_code == 409
    assert ledger.act("s1:reserve-stock", "reserve", lambda: pytest.fail("replayed, not run")).status_code == 409
    undo = ledger.compensate("s1:reserve-stock", {"reserve": lambda op: pytest.fail("nothing to undo")}, "released")
    assert body(undo) == {"released": False, "reason": "the action was refused: there is nothing to undo"}


# --- configuration -----------------------------------------------------------------------------------------

def saga_env(**overrides: str) -> dict[str, str]:
    env = {"SAGA_LOG_PATH": "/var/lib/checkout/saga.db", "SAGA_STEPS": "reserve-stock, charge-payment",
           "SAGA_RESERVE_STOCK_URL": "http://inventory/saga/reservations",
           "SAGA_RESERVE_STOCK_COMPENSATION_URL": "http://inventory/saga/reservations/release",
           "SAGA_CHARGE_PAYMENT_URL": "http://payments/saga/charges", "SAGA_RETRIES": "2",
           "SAGA_CHARGE_PAYMENT_TIMEOUT_SECONDS": "1.5"}
    return {**env, **overrides}


def test_saga_config_reads_steps_in_order_with_their_urls_and_policies():
    config = SagaConfig.from_env(Env(saga_env()))
    assert [s.name for s in config.steps] == ["reserve-stock", "charge-payment"]
    reserve, charge = config.steps
    assert reserve.compensation_url == "http://inventory/saga/reservations/release"
    assert charge.compensation_url == ""
    assert reserve.policy == CallPolicy(timeout_seconds=5.0, retries=2, backoff_seconds=0.1)
    assert charge.policy.timeout_seconds == 1.5 and charge.policy.retries == 2
    assert config.recovery == "resume" and config.step_delay_seconds == 0


@pytest.mark.parametrize("overrides, words", [
    ({"SAGA_LOG_PATH": ""}, "SAGA_LOG_PATH must name"),
    ({"SAGA_LOG_PATH": "saga.db"}, "absolute path"),
    ({"SAGA_STEPS": ""}, "SAGA_STEPS must list"),
    ({"SAGA_STEPS": "Reserve"}, "is not a step name"),
    ({"SAGA_STEPS": "reserve-stock reserve-stock"}, "names a step twice"),
    ({"SAGA_CHARGE_PAYMENT_URL": ""}, "SAGA_CHARGE_PAYMENT_URL must say where"),
    ({"SAGA_RESERVE_STOCK_COMPENSATION_URL": "inventory/release"}, "SAGA_RESERVE_STOCK_COMPENSATION_URL must be"),
    ({"SAGA_RECOVERY": "retry"}, "SAGA_RECOVERY must be resume or compensate"),
    ({"SAGA_TIMEOUT_SECONDS": "0"}, "must be more than 0"),
    ({"SAGA_RETRY_INTERVAL_SECONDS": "0"}, "must be more than 0"),
])
def test_saga_config_refuses_what_cannot_work(overrides, words):
    with pytest.raises(ConfigError, match=words):
        SagaConfig.from_env(Env(saga_env(**overrides)))
