"""orders calling catalog, inventory and payments for real: timeouts, bounded retries with backoff, idempotent
reservations, and what a caller sees when a dependency is slow."""

from __future__ import annotations

import random
import time

import pytest

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def shop(start_service):
    """catalog, inventory and payments, and orders pointed at them; plus a slow inventory and an orders that
    calls it with a short timeout and two retries."""
    catalog = start_service("catalog", wait=False)
    inventory = start_service("inventory", wait=False)
    payments = start_service("payments", {"PAYMENTS_LIMIT_CENTS": "5000"}, wait=False)
    slow = start_service("inventory", {"RESPONSE_DELAY_SECONDS": "3"}, wait=False)
    orders = start_service("orders", {
        "CATALOG_URL": catalog.url, "INVENTORY_URL": inventory.url, "PAYMENTS_URL": payments.url,
        "INVENTORY_TIMEOUT_SECONDS": "2", "INVENTORY_RETRIES": "2",
    }, wait=False)
    impatient = start_service("orders", {
        "INVENTORY_URL": slow.url, "INVENTORY_TIMEOUT_SECONDS": "0.3", "INVENTORY_RETRIES": "2",
        "INVENTORY_BACKOFF_SECONDS": "0.05",
    }, wait=False)
    for s in (catalog, inventory, payments, slow, orders, impatient):
        s.wait_ready()
    return {"catalog": catalog, "inventory": inventory, "payments": payments, "slow": slow, "orders": orders,
            "impatient": impatient}


def test_an_order_goes_through_all_three_services(shop, http):
    orders, inventory = shop["orders"], shop["inventory"]
    before = http.get(f"{inventory.url}/stock/coffee").json()["available"]
    answer = http.post(f"{orders.url}/orders", json={"sku": "coffee", "quantity": 3})
    assert answer.status_code == 201, answer.text
    order = answer.json()
    assert order["total_cents"] == 3 * 1190 and order["status"] == "confirmed"
    assert order["reservation"].startswith("r-") and order["payment"].startswith("p-")
    assert http.get(f"{inventory.url}/stock/coffee").json()["available"] == before - 3
    assert http.get(f"{orders.url}/orders/{order['id']}").json() == order


def test_the_dependencies_answers_become_the_callers_answers(shop, http):
    orders = shop["orders"]
    assert http.post(f"{orders.url}/orders", json={"sku": "caviar", "quantity": 1}).status_code == 404
    assert http.post(f"{orders.url}/orders", json={"sku": "kettle", "quantity": 50}).status_code == 409
    declined = http.post(f"{orders.url}/orders", json={"sku": "kettle", "quantity": 2})  # 7800 > 5000
    assert declined.status_code == 402, declined.text


def test_availability_asks_inventory(shop, http):
    answer = http.get(f"{shop['orders'].url}/availability/tea")
    assert answer.status_code == 200
    assert answer.json()["available"] > 0 and answer.json()["inventory_pod"]


def test_a_timed_out_call_is_retried_then_fails_fast(shop, http):
    impatient = shop["impatient"]
    timeouts = impatient.metric("outbound_requests_total", target="inventory", outcome="timeout")
    retries = impatient.metric("outbound_retries_total", target="inventory")
    started = time.monotonic()
    answer = http.get(f"{impatient.url}/availability/tea")
    elapsed = time.monotonic() - started
    assert answer.status_code == 503
    body = answer.json()
    assert body["target"] == "inventory" and body["attempts"] == 3
    assert "no answer within 0.3s" in body["error"]
    # Three attempts of 0.3 s and two short backoffs: far less than the 3 s the slow inventory takes once.
    assert 0.9 <= elapsed < 2.5, elapsed
    assert impatient.metric("outbound_requests_total", target="inventory", outcome="timeout") == timeouts + 3
    assert impatient.metric("outbound_retries_total", target="inventory") == retries + 2
    impatient.wait_for_record(msg="call failed", attempt=3)
    attempts = [r for r in impatient.log_records() if r.get("msg") == "call failed"]
    assert [r["attempt"] for r in attempts[-3:]] == [1, 2, 3]


def test_a_reservation_retried_with_its_key_is_made_once(shop, http):
    inventory = shop["inventory"]
    before = http.get(f"{inventory.url}/stock/tea").json()["available"]
    key = f"order-{random.randrange(10**9)}"
    first = http.post(f"{inventory.url}/reservations", json={"sku": "tea", "quantity": 2},
                      headers={"Idempotency-Key": key})
    again = http.post(f"{inventory.url}/reservations", json={"sku": "tea", "quantity": 2},
                      headers={"Idempotency-Key": key})
    assert first.status_code == again.status_code == 201
    assert first.json()["id"] == again.json()["id"]
    assert http.get(f"{inventory.url}/stock/tea").json()["available"] == before - 2


def test_an_unset_dependency_is_a_clear_503(shop, http):
    answer = http.post(f"{shop['impatient'].url}/orders", json={"sku": "tea", "quantity": 1})
    assert answer.status_code == 503
    assert "CATALOG_URL is not set" in answer.json()["error"]
