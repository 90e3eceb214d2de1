"""orders' circuit breaker in front of a real payments process whose fault switch makes it fail or slow down:
failures open the breaker, calls fail fast while it is open, a trial call closes it once payments is back, the
fallback answers, the metrics tell, and readiness that depends on payments takes orders down with it."""

from __future__ import annotations

import socket
import time

import pytest

pytestmark = pytest.mark.unit

TIMEOUT = 0.5        # orders' timeout per call to payments
OPEN_SECONDS = 1.5   # how long the breaker stays open
SLOW = "1.5"         # how long the slow payments takes (longer than the timeout)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Payments:
    """A payments process on a fixed port, restarted with another PAYMENTS_FAULT as the tests need (orders keeps
    its PAYMENTS_URL, as a Service's name stays while its pods are replaced)."""

    def __init__(self, start_service) -> None:
        self.start_service = start_service
        self.port = _port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = None
        self.fault = ""

    def run(self, fault: str) -> Payments:
        if self.process is not None and self.fault == fault:
            return self
        self.stop()
        process = self.start_service("payments", {
            "PORT": str(self.port), "PAYMENTS_FAULT": fault, "PAYMENTS_FAULT_DELAY_SECONDS": SLOW,
            "PAYMENTS_LIMIT_CENTS": "5000", "SHUTDOWN_TIMEOUT_SECONDS": "0.5"}, wait=False)
        process.port, process.url = self.port, self.url
        self.process, self.fault = process.wait_ready(), fault
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None

    def requests(self) -> float:
        return self.process.metric("http_requests_total", service="payments", route="/payments")


@pytest.fixture(scope="module")
def shop(start_service):
    catalog = start_service("catalog", wait=False)
    inventory = start_service("inventory", wait=False)
    payments = Payments(start_service)
    for s in (catalog, inventory):
        s.wait_ready()

    def orders(**env: str):
        """An orders process calling catalog, inventory and the payments above."""
        return start_service("orders", {
            "CATALOG_URL": catalog.url, "INVENTORY_URL": inventory.url, "PAYMENTS_URL": payments.url,
            "PAYMENTS_TIMEOUT_SECONDS": str(TIMEOUT), **env})

    return {"payments": payments, "orders": orders, "inventory": inventory}


BREAKER = {"PAYMENTS_BREAKER_FAILURES": "3", "PAYMENTS_BREAKER_OPEN_SECONDS": str(OPEN_SECONDS),
           "PAYMENTS_BREAKER_HALF_OPEN_PROBES": "1"}


def order(http, orders, sku: str = "tea", quantity: int = 1):
    """(answer, milliseconds it took)."""
    started = time.perf_counter()
    answer = http.post(f"{orders.url}/orders", json={"sku": sku, "quantity": quantity})
    return answer, (time.perf_counter() - started) * 1000


def state(orders) -> float:
    return orders.metric("labshop_breaker_state", target="payments")


def test_the_fault_switch_fails_or_slows_post_payments_only(shop, start_service, http):
    payments = shop["payments"].run("fail")
    answer = http.post(f"{payments.url}/payments", json={"order_id": "o-1", "amount_cents": 100})
    assert answer.status_code == 503
    assert answer.json() == {"error": "failing on purpose (PAYMENTS_FAULT=fail)", "fault": "fail"}
    assert http.get(f"{payments.url}/readyz").status_code == 200
    assert http.get(f"{payments.url}/healthz").status_code == 200

    payments.run("slow")
    started = time.perf_counter()
    answer = http.post(f"{payments.url}/payments", json={"order_id": "o-2", "amount_cents": 100})
    assert answer.status_code == 201 and answer.json()["status"] == "authorized"
    assert time.perf_counter() - started >= float(SLOW)
    started = time.perf_counter()
    assert http.get(f"{payments.url}/readyz").status_code == 200
    assert time.perf_counter() - started < 0.5

    broken = start_service("payments", {"PAYMENTS_FAULT": "flaky"}, wait=False)
    assert broken.proc.wait(30) == 2
    assert "PAYMENTS_FAULT must be none, fail or slow, got 'flaky'" in broken.log()


def test_timeouts_open_the_breaker_then_calls_fail_fast_and_a_trial_call_closes_it(shop, http):
    payments = shop["payments"].run("slow")
    orders = shop["orders"](**BREAKER, PAYMENTS_FALLBACK="pending")
    assert state(orders) == 0
    assert orders.metric("labshop_breaker_opened_total", target="payments") == 0

    # Closed: each order waits for payments' timeout, then the fallback takes it without a payment.
    for _ in range(3):
        answer, ms = order(http, orders)
        assert answer.status_code == 202, answer.text
        body = answer.json()
        assert body["status"] == "pending_payment" and body["payment"] is None and body["reservation"]
        assert f"no answer within {TIMEOUT:g}s" in body["fallback"]
        assert ms >= TIMEOUT * 1000
    opened_at = time.monotonic()
    assert state(orders) == 1
    assert orders.metric("labshop_breaker_opened_total", target="payments") == 1
    assert orders.metric("labshop_breaker_calls_total", target="payments", result="failure") == 3
    orders.wait_for_record(msg="circuit opened", target="payments")

    # Open: payments is not called at all, and the answer comes in milliseconds instead of the timeout.
    calls_before = payments.requests()
    times = []
    for _ in range(5):
        answer, ms = order(http, orders)
        assert answer.status_code == 202
        assert answer.json()["fallback"].startswith("payments: circuit open, failing fast")
        times.append(ms)
    assert max(times) < 200, times
    assert payments.requests() == calls_before
    assert orders.metric("labshop_breaker_calls_total", target="payments", result="rejected") == 5
    assert orders.metric("labshop_fallbacks_total", target="payments") == 8

    # payments recovers; once the open time is up, one trial call goes through, succeeds and closes the breaker.
    payments.run("none")
    time.sleep(max(0.0, opened_at + OPEN_SECONDS - time.monotonic()) + 0.1)
    answer, _ = order(http, orders)
    assert answer.status_code == 201, answer.text
    assert answer.json()["status"] == "confirmed"
    assert payments.requests() == 1  # the new process: the trial call only
    assert state(orders) == 0
    assert http.get(f"{orders.url}/orders/{answer.json()['id']}").json()["status"] == "confirmed"
    closed = orders.wait_for_record(msg="circuit closed")
    assert closed["from"] == "half-open"


def test_failures_open_it_and_a_failed_trial_call_opens_it_again(shop, http):
    payments = shop["payments"].run("fail")
    orders = shop["orders"](**BREAKER, PAYMENTS_FALLBACK="pending")
    for _ in range(3):
        answer, _ = order(http, orders)
        assert answer.status_code == 202 and "answered 503" in answer.json()["fallback"]
    assert state(orders) == 1
    time.sleep(OPEN_SECONDS + 0.1)
    calls_before = payments.requests()
    answer, _ = order(http, orders)  # the trial call: payments still fails
    assert answer.status_code == 202 and "answered 503" in answer.json()["fallback"]
    assert payments.requests() == calls_before + 1
    assert state(orders) == 1
    assert orders.metric("labshop_breaker_opened_total", target="payments") == 2
    answer, _ = order(http, orders)
    assert "circuit open" in answer.json()["fallback"]
    assert payments.requests() == calls_before + 1


def test_without_a_fallback_an_open_breaker_answers_503_at_once(shop, http):
    shop["payments"].run("fail")
    orders = shop["orders"](**BREAKER)
    for _ in range(3):
        answer, _ = order(http, orders)
        assert answer.status_code == 503 and answer.json()["attempts"] == 1
    answer, ms = order(http, orders)
    assert answer.status_code == 503
    assert answer.json()["target"] == "payments" and answer.json()["attempts"] == 0
    assert answer.json()["error"].startswith("payments: circuit open, failing fast (trial call in")
    assert ms < 200
    assert orders.metric("labshop_fallbacks_total", target="payments") == 0


def test_a_declined_payment_is_an_answer_not_a_failure(shop, http):
    shop["payments"].run("none")
    orders = shop["orders"](**BREAKER, PAYMENTS_FALLBACK="pending")
    for _ in range(4):
        answer, _ = order(http, orders, sku="coffee", quantity=5)  # 5950 cents, over payments' limit of 5000
        assert answer.status_code == 402
    assert state(orders) == 0
    assert orders.metric("labshop_breaker_calls_total", target="payments", result="success") == 4


def test_without_breaker_settings_orders_waits_for_every_timeout(shop, http):
    shop["payments"].run("slow")
    orders = shop["orders"]()
    for _ in range(4):
        answer, ms = order(http, orders)
        assert answer.status_code == 503 and f"no answer within {TIMEOUT:g}s" in answer.json()["error"]
        assert ms >= TIMEOUT * 1000
    assert "labshop_breaker_state" not in http.get(f"{orders.url}/metrics").text


def test_readiness_that_checks_payments_takes_orders_down_with_it(shop, http):
    payments = shop["payments"].run("none")
    deep = shop["orders"](READINESS_CHECKS_DOWNSTREAM="payments")
    own = shop["orders"](**BREAKER, PAYMENTS_FALLBACK="pending")
    payments.stop()
    deadline = time.monotonic() + 10
    while http.get(f"{deep.url}/readyz").status_code == 200:
        assert time.monotonic() < deadline, "orders stayed ready although it checks payments, which is gone"
        time.sleep(0.1)
    answer = http.get(f"{deep.url}/readyz")
    assert answer.json()["status"] == "payments is not ready (cannot connect)"

    # The orders that checks only itself stays ready and serves what does not need payments, and the rest
    # through its fallback.
    assert http.get(f"{own.url}/readyz").status_code == 200
    assert http.get(f"{own.url}/availability/tea").status_code == 200
    answer, _ = order(http, own)
    assert answer.status_code == 202 and "cannot connect" in answer.json()["fallback"]

    payments.run("none")
    deadline = time.monotonic() + 10
    while http.get(f"{deep.url}/readyz").status_code != 200:
        assert time.monotonic() < deadline, "orders did not come back after payments did"
        time.sleep(0.1)


def test_readiness_names_only_real_dependencies(start_service):
    wrong = start_service("orders", {"PAYMENTS_URL": "http://127.0.0.1:1", "READINESS_CHECKS_DOWNSTREAM": "billing"},
                          wait=False)
    assert wrong.proc.wait(30) == 2
    assert "READINESS_CHECKS_DOWNSTREAM names 'billing', which is not a dependency with a URL (payments)" in wrong.log()
