"""The checkout saga for real: the orchestrator and inventory, payments and orders as processes on loopback.
The happy path; a failure at each step undoing exactly the steps done before it; the orchestrator killed
(SIGKILL) mid-saga and recovering from its log; and no step's work done twice, counted by the participants."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.unit

STEPS = {
    "create-order": ("orders", "/saga/orders", "/saga/orders/cancel"),
    "reserve-stock": ("inventory", "/saga/reservations", "/saga/reservations/release"),
    "charge-payment": ("payments", "/saga/charges", "/saga/charges/refund"),
    "confirm-order": ("orders", "/saga/orders/confirm", "/saga/orders/cancel"),
}
PARTICIPANT = {"SAGA_PARTICIPANT": "true"}


def saga_env(log_path: Path, urls: dict[str, str], **extra: str) -> dict[str, str]:
    env = {"SAGA_LOG_PATH": str(log_path), "SAGA_STEPS": " ".join(STEPS), "SAGA_TIMEOUT_SECONDS": "2",
           "SAGA_RETRIES": "1", "SAGA_BACKOFF_SECONDS": "0.05", "SAGA_RETRY_INTERVAL_SECONDS": "0.5"}
    for step, (service, action, compensation) in STEPS.items():
        prefix = "SAGA_" + step.upper().replace("-", "_")
        env[f"{prefix}_URL"] = urls[service] + action
        env[f"{prefix}_COMPENSATION_URL"] = urls[service] + compensation
    return {**env, **extra}


@pytest.fixture(scope="module")
def shop(start_service, tmp_path_factory):
    """Participants (inventory, payments with a 5000-cent limit, orders), a failing payments, a slow payments and
    an orders that refuses to confirm; a checkout in front of each combination."""
    logs = tmp_path_factory.mktemp("saga-logs")
    inventory = start_service("inventory", PARTICIPANT, wait=False)
    payments = start_service("payments", {**PARTICIPANT, "PAYMENTS_LIMIT_CENTS": "5000"}, wait=False)
    orders = start_service("orders", PARTICIPANT, wait=False)
    failing = start_service("payments", {**PARTICIPANT, "PAYMENTS_FAULT": "fail"}, wait=False)
    slow = start_service("payments", {**PARTICIPANT, "PAYMENTS_FAULT": "slow", "PAYMENTS_FAULT_DELAY_SECONDS": "1.5"},
                         wait=False)
    refusing = start_service("orders", {**PARTICIPANT, "SAGA_REFUSE": "confirm"}, wait=False)
    urls = {"inventory": inventory.url, "payments": payments.url, "orders": orders.url}
    checkouts = {
        "main": start_service("checkout", saga_env(logs / "main.db", urls), wait=False),
        "payments-failing": start_service("checkout", saga_env(logs / "f.db", {**urls, "payments": failing.url}),
                                          wait=False),
        "payments-slow": start_service("checkout", saga_env(
            logs / "s.db", {**urls, "payments": slow.url}, SAGA_CHARGE_PAYMENT_TIMEOUT_SECONDS="0.5",
            SAGA_CHARGE_PAYMENT_RETRIES="0"), wait=False),
        "confirm-refused": start_service("checkout", saga_env(logs / "r.db", {**urls, "orders": refusing.url}),
                                         wait=False),
    }
    participants = {"inventory": inventory, "payments": payments, "orders": orders, "failing": failing,
                    "slow": slow, "refusing": refusing}
    for s in (*participants.values(), *checkouts.values()):
        s.wait_ready()
    return {**participants, **checkouts, "urls": urls, "logs": logs}


def operations(http, service, saga_id: str) -> dict[str, dict]:
    """What a participant did under each of the saga's keys, by step name."""
    listing = http.get(f"{service.url}/saga/operations", params={"saga": saga_id}).json()["operations"]
    return {op["key"].split(":", 1)[1]: op for op in listing}


def stock(http, shop, sku: str) -> int:
    return http.get(f"{shop['inventory'].url}/stock/{sku}").json()["available"]


def checkout(http, service, sku: str, quantity: int, key: str | None = None) -> httpx.Response:
    headers = {"Idempotency-Key": key} if key else {}
    return http.post(f"{service.url}/checkouts", json={"sku": sku, "quantity": quantity}, headers=headers)


def runs(ops: dict[str, dict]) -> dict[str, tuple[int, int]]:
    """Per step: (times its action was done, times its compensation was done)."""
    return {step: (op["action_runs"], op["compensation_runs"]) for step, op in ops.items()}


def test_a_checkout_goes_through_every_step_once(shop, http):
    before = stock(http, shop, "coffee")
    answer = checkout(http, shop["main"], "coffee", 2)
    assert answer.status_code == 201, answer.text
    saga = answer.json()
    assert saga["status"] == "completed"
    assert [(s["name"], s["status"]) for s in saga["steps"]] == [(n, "done") for n in STEPS]
    assert stock(http, shop, "coffee") == before - 2
    order = http.get(f"{shop['orders'].url}/orders/{saga['steps'][0]['result']['order_id']}").json()
    assert order["status"] == "confirmed" and order["total_cents"] == 2 * 1190
    assert order["reservation"].startswith("r-") and order["payment"].startswith("p-")
    assert runs(operations(http, shop["orders"], saga["id"])) == {"create-order": (1, 0), "confirm-order": (1, 0)}
    assert runs(operations(http, shop["inventory"], saga["id"])) == {"reserve-stock": (1, 0)}
    assert runs(operations(http, shop["payments"], saga["id"])) == {"charge-payment": (1, 0)}
    # The log tells the whole story, in order, write-ahead: each step started before it was done.
    log = http.get(f"{shop['main'].url}/checkouts/{saga['id']}").json()["log"]
    kinds = [(e["kind"], e["step"]) for e in log]
    assert kinds[0] == ("saga-started", None) and kinds[-1] == ("saga-completed", None)
    assert kinds[1:-1] == [(k, n) for n in STEPS for k in ("step-started", "step-done")]


def test_a_failed_first_step_leaves_nothing_to_undo(shop, http):
    answer = checkout(http, shop["main"], "caviar", 1)
    assert answer.status_code == 409, answer.text
    saga = answer.json()
    assert saga["status"] == "compensated"
    assert [s["status"] for s in saga["steps"]] == ["refused", "pending", "pending", "pending"]
    assert "answered 404" in saga["reason"]
    assert operations(http, shop["inventory"], saga["id"]) == {}


def test_out_of_stock_cancels_the_order_that_was_created(shop, http):
    before = stock(http, shop, "kettle")
    answer = checkout(http, shop["main"], "kettle", 50)
    saga = answer.json()
    assert answer.status_code == 409 and saga["status"] == "compensated", answer.text
    assert [s["status"] for s in saga["steps"]] == ["compensated", "refused", "pending", "pending"]
    assert runs(operations(http, shop["orders"], saga["id"])) == {"create-order": (1, 1)}
    assert runs(operations(http, shop["inventory"], saga["id"])) == {"reserve-stock": (0, 0)}
    assert operations(http, shop["payments"], saga["id"]) == {}
    order_id = saga["steps"][0]["result"]["order_id"]
    assert http.get(f"{shop['orders'].url}/orders/{order_id}").json()["status"] == "cancelled"
    assert stock(http, shop, "kettle") == before


def test_a_declined_payment_releases_the_stock_and_cancels_the_order(shop, http):
    before = stock(http, shop, "kettle")
    answer = checkout(http, shop["main"], "kettle", 2)  # 7800 cents, over the 5000 limit
    saga = answer.json()
    assert answer.status_code == 409 and saga["status"] == "compensated", answer.text
    assert [s["status"] for s in saga["steps"]] == ["compensated", "compensated", "refused", "pending"]
    assert "answered 402" in saga["reason"]
    assert saga["steps"][1]["compensation"]["released"] is True
    assert saga["steps"][0]["compensation"]["order_status"] == "cancelled"
    assert runs(operations(http, shop["inventory"], saga["id"])) == {"reserve-stock": (1, 1)}
    assert runs(operations(http, shop["payments"], saga["id"])) == {"charge-payment": (0, 0)}
    assert stock(http, shop, "kettle") == before


def test_payments_failing_compensates_what_was_done_before_the_charge(shop, http):
    before = stock(http, shop, "tea")
    answer = checkout(http, shop["payments-failing"], "tea", 3)
    saga = answer.json()
    assert answer.status_code == 409 and saga["status"] == "compensated", answer.text
    assert [s["status"] for s in saga["steps"]] == ["compensated", "compensated", "refused", "pending"]
    # 503 means "did nothing": retried once (SAGA_RETRIES=1), then a refusal; nothing to refund.
    charge = saga["steps"][2]
    assert "answered 503" in charge["reason"] and "after 2 attempts" in charge["reason"]
    assert operations(http, shop["failing"], saga["id"]) == {}
    assert runs(operations(http, shop["inventory"], saga["id"])) == {"reserve-stock": (1, 1)}
    assert runs(operations(http, shop["orders"], saga["id"])) == {"create-order": (1, 1)}
    assert stock(http, shop, "tea") == before


def test_a_refused_confirmation_undoes_the_three_steps_before_it(shop, http):
    before = stock(http, shop, "mug")
    answer = checkout(http, shop["confirm-refused"], "mug", 1)
    saga = answer.json()
    assert answer.status_code == 409 and saga["status"] == "compensated", answer.text
    assert [s["status"] for s in saga["steps"]] == ["compensated", "compensated", "compensated", "refused"]
    assert saga["steps"][2]["compensation"]["refunded"] is True
    assert runs(operations(http, shop["refusing"], saga["id"])) == {"create-order": (1, 1), "confirm-order": (0, 0)}
    assert runs(operations(http, shop["payments"], saga["id"])) == {"charge-payment": (1, 1)}
    assert runs(operations(http, shop["inventory"], saga["id"])) == {"reserve-stock": (1, 1)}
    assert stock(http, shop, "mug") == before


def test_a_charge_without_an_answer_is_compensated_and_the_late_charge_refused(shop, http):
    # payments waits 1.5 s before it looks at a charge; the orchestrator gives up after 0.5 s. The outcome is
    # unknown, so the charge is compensated too. The refund overtakes the charge: there is nothing to refund
    # yet, and the key is blocked, so when the charge does arrive it is refused and nobody pays for nothing.
    answer = checkout(http, shop["payments-slow"], "tea", 1)
    saga = answer.json()
    assert answer.status_code == 409 and saga["status"] == "compensated", answer.text
    charge = saga["steps"][2]
    assert charge["status"] == "compensated" and "no answer" in charge["reason"]
    assert charge["compensation"]["refunded"] is False
    late = wait_for(lambda: (op := operations(http, shop["slow"], saga["id"])["charge-payment"])["action_requests"]
                    and op, what="the late charge to reach payments")
    assert (late["state"], late["action_runs"], late["compensation_runs"]) == ("blocked", 0, 0)
    assert [s["status"] for s in saga["steps"]] == ["compensated", "compensated", "compensated", "pending"]


def test_the_same_idempotency_key_gets_the_same_checkout_back(shop, http):
    first = checkout(http, shop["main"], "tea", 1, key="client-order-77")
    again = checkout(http, shop["main"], "tea", 1, key="client-order-77")
    assert first.status_code == again.status_code == 201
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json()["id"] == first.json()["id"] == "client-order-77"
    assert runs(operations(http, shop["orders"], "client-order-77")) == {"create-order": (1, 0),
                                                                       "confirm-order": (1, 0)}
    different = checkout(http, shop["main"], "tea", 5, key="client-order-77")
    assert different.status_code == 422 and "different request" in different.json()["error"]


def test_listing_and_describing(shop, http):
    listing = http.get(f"{shop['main'].url}/checkouts", params={"status": "compensated", "limit": 2}).json()
    assert 1 <= len(listing["checkouts"]) <= 2 and {c["status"] for c in listing["checkouts"]} == {"compensated"}
    assert listing["counts"]["completed"] >= 1
    described = http.get(f"{shop['main'].url}/saga").json()
    assert [s["name"] for s in described["steps"]] == list(STEPS)
    assert all(s["compensation_url"] for s in described["steps"])
    assert described["holds_log"] is True and described["recovery"] == "resume"
    assert described["log"]["older_than_this_process"] is False  # this process made it
    assert http.get(f"{shop['main'].url}/checkouts/nope").status_code == 404


def wait_for(predicate, timeout: float = 15.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def post_in_background(url: str, body: dict, key: str) -> threading.Thread:
    """A checkout whose answer nobody waits for: the orchestrator is killed while it runs."""

    def send():
        try:
            httpx.post(url, json=body, headers={"Idempotency-Key": key}, timeout=30)
        except httpx.TransportError:
            pass  # the orchestrator died under the request, as intended

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread


def kill_during(start_service, shop, http, log_path: Path, *, step: str, service: str, key: str, sku: str,
                quantity: int, phase: str = "action", urls: dict[str, str] | None = None) -> None:
    """Start a checkout on an orchestrator that pauses after each call, and SIGKILL it once `service` has done
    `step`'s action (or compensation): the log says the call went out, not what came of it."""
    slow_writer = start_service("checkout", saga_env(log_path, urls or shop["urls"], SAGA_STEP_DELAY_SECONDS="1.5"))
    thread = post_in_background(f"{slow_writer.url}/checkouts", {"sku": sku, "quantity": quantity}, key)
    wait_for(lambda: operations(http, shop[service], key).get(step, {}).get(f"{phase}_runs") == 1,
             what=f"{service} to do {step}'s {phase}")
    slow_writer.proc.kill()
    slow_writer.proc.wait()
    thread.join(5)


def test_an_orchestrator_killed_mid_saga_resumes_from_its_log_and_no_step_runs_twice(start_service, shop, http):
    log_path = shop["logs"] / "killed-resume.db"
    before = stock(http, shop, "coffee")
    kill_during(start_service, shop, http, log_path, step="reserve-stock", service="inventory", key="crash-1",
                sku="coffee", quantity=4)
    assert stock(http, shop, "coffee") == before - 4
    assert operations(http, shop["payments"], "crash-1") == {}  # it died before the charge

    restarted = start_service("checkout", saga_env(log_path, shop["urls"]))
    saga = wait_for(lambda: (s := http.get(f"{restarted.url}/checkouts/crash-1").json())["status"] == "completed"
                    and s, what="the saga to complete after the restart")
    # The reservation was sent twice (its outcome was not logged before the crash); inventory did it once.
    reserve = operations(http, shop["inventory"], "crash-1")["reserve-stock"]
    assert (reserve["action_requests"], reserve["action_runs"]) == (2, 1)
    assert saga["steps"][1]["sent"] == 2
    assert stock(http, shop, "coffee") == before - 4
    assert runs(operations(http, shop["orders"], "crash-1")) == {"create-order": (1, 0), "confirm-order": (1, 0)}
    assert runs(operations(http, shop["payments"], "crash-1")) == {"charge-payment": (1, 0)}
    log = [(e["kind"], e["step"]) for e in saga["log"]]
    assert log.count(("step-started", "reserve-stock")) == 2 and log.count(("step-done", "reserve-stock")) == 1
    assert http.get(f"{restarted.url}/saga").json()["log"]["older_than_this_process"] is True


def test_an_orchestrator_killed_mid_saga_can_compensate_instead(start_service, shop, http):
    log_path = shop["logs"] / "killed-compensate.db"
    before = stock(http, shop, "coffee")
    kill_during(start_service, shop, http, log_path, step="charge-payment", service="payments", key="crash-2",
                sku="coffee", quantity=1)
    restarted = start_service("checkout", saga_env(log_path, shop["urls"], SAGA_RECOVERY="compensate"))
    saga = wait_for(lambda: (s := http.get(f"{restarted.url}/checkouts/crash-2").json())["status"] == "compensated"
                    and s, what="the saga to be compensated after the restart")
    assert saga["reason"] == "the orchestrator restarted while charge-payment was in flight"
    assert [s["status"] for s in saga["steps"]] == ["compensated", "compensated", "compensated", "pending"]
    assert runs(operations(http, shop["payments"], "crash-2")) == {"charge-payment": (1, 1)}
    assert runs(operations(http, shop["inventory"], "crash-2")) == {"reserve-stock": (1, 1)}
    assert runs(operations(http, shop["orders"], "crash-2")) == {"create-order": (1, 1)}
    assert stock(http, shop, "coffee") == before


def test_an_orchestrator_killed_while_compensating_finishes_the_compensation_once(start_service, shop, http):
    log_path = shop["logs"] / "killed-compensating.db"
    before = stock(http, shop, "mug")
    kill_during(start_service, shop, http, log_path, step="reserve-stock", service="inventory", key="crash-3",
                sku="mug", quantity=2, phase="compensation", urls={**shop["urls"], "payments": shop["failing"].url})
    restarted = start_service("checkout", saga_env(log_path, {**shop["urls"], "payments": shop["failing"].url}))
    saga = wait_for(lambda: (s := http.get(f"{restarted.url}/checkouts/crash-3").json())["status"] == "compensated"
                    and s, what="the compensation to finish after the restart")
    release = operations(http, shop["inventory"], "crash-3")["reserve-stock"]
    assert (release["compensation_requests"], release["compensation_runs"]) == (2, 1)
    assert runs(operations(http, shop["orders"], "crash-3")) == {"create-order": (1, 1)}
    assert [s["status"] for s in saga["steps"]] == ["compensated", "compensated", "refused", "pending"]
    assert stock(http, shop, "mug") == before


def test_a_second_orchestrator_on_the_same_log_waits_until_the_first_stops(start_service, shop, http):
    log_path = shop["logs"] / "single-writer.db"
    first = start_service("checkout", saga_env(log_path, shop["urls"]))
    assert checkout(http, first, "tea", 1, key="before-handover").status_code == 201
    second = start_service("checkout", saga_env(log_path, shop["urls"]), wait=False)
    second.wait_for_record(msg="another orchestrator holds the saga log; waiting for it to stop")
    ready = http.get(f"{second.url}/readyz")
    assert ready.status_code == 503 and "waiting for the saga log" in ready.json()["status"]
    assert checkout(http, second, "tea", 1).status_code == 503
    assert first.stop() == 0
    second.wait_ready(timeout=15)
    assert http.get(f"{second.url}/checkouts/before-handover").json()["status"] == "completed"


def test_a_log_path_that_cannot_be_written_is_refused_at_start(start_service, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    refused = start_service("checkout", saga_env(blocker / "saga.db", {"orders": "http://o", "inventory": "http://i",
                                                                        "payments": "http://p"}), wait=False)
    assert refused.proc.wait(30) == 2
    assert "SAGA_LOG_PATH" in refused.log() and "cannot write there" in refused.log()
