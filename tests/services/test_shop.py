"""The monolith alone, and the monolith answering its product routes from an extracted catalog service."""

from __future__ import annotations

import socket
import time

import pytest

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def shop_alone(start_service):
    return start_service("shop")


@pytest.fixture(scope="module")
def split(start_service):
    catalog = start_service("catalog", {"CATALOG_CURRENCY": "CHF"}, wait=False)
    # The shop does not need the catalog to start (only to answer), so both start at once.
    shop = start_service("shop", {"CATALOG_URL": catalog.url}, wait=False)
    return shop.wait_ready(), catalog.wait_ready()


def test_the_monolith_serves_products_itself(shop_alone, http):
    body = http.get(f"{shop_alone.url}/products").json()
    assert body["served_by"] == "shop"
    assert {p["sku"] for p in body["products"]} >= {"tea", "coffee"}


def test_the_monolith_takes_an_order_and_reserves_stock(shop_alone, http):
    before = http.get(f"{shop_alone.url}/stock/mug").json()["available"]
    order = http.post(f"{shop_alone.url}/orders", json={"sku": "mug", "quantity": 2})
    assert order.status_code == 201, order.text
    assert order.json()["total_cents"] == 3000
    assert http.get(f"{shop_alone.url}/stock/mug").json()["available"] == before - 2
    assert http.get(f"{shop_alone.url}/orders/{order.json()['id']}").json()["status"] == "confirmed"


def test_the_monolith_refuses_what_it_cannot_do(shop_alone, http):
    assert http.post(f"{shop_alone.url}/orders", json={"sku": "kettle", "quantity": 99}).status_code == 409
    assert http.post(f"{shop_alone.url}/orders", json={"sku": "caviar", "quantity": 1}).status_code == 404
    bad = http.post(f"{shop_alone.url}/orders", json={"sku": "tea", "quantity": 0})
    assert bad.status_code == 422 and "quantity" in bad.json()["error"]


def test_with_catalog_url_the_products_come_from_the_catalog_service(split, http):
    shop, catalog = split
    body = http.get(f"{shop.url}/products").json()
    assert body["served_by"] == "catalog"
    assert body["products"][0]["currency"] == "CHF"
    assert http.get(f"{shop.url}/products/tea").json()["served_by"] == "catalog"
    assert http.get(f"{shop.url}/products/caviar").status_code == 404
    # The order path asks the catalog for the price too.
    order = http.post(f"{shop.url}/orders", json={"sku": "tea", "quantity": 1})
    assert order.status_code == 201 and order.json()["total_cents"] == 650
    assert catalog.metric("http_requests_total", route="/products/{sku}", status="200") >= 2


def test_an_unreachable_catalog_fails_fast_with_503(start_service, http):
    with socket.socket() as s:  # a port nobody listens on once it is closed
        s.bind(("127.0.0.1", 0))
        nobody = s.getsockname()[1]
    shop = start_service("shop", {"CATALOG_URL": f"http://127.0.0.1:{nobody}", "CATALOG_RETRIES": "1",
                                  "CATALOG_BACKOFF_SECONDS": "0.01"})
    started = time.monotonic()
    answer = http.get(f"{shop.url}/products")
    assert time.monotonic() - started < 2
    assert answer.status_code == 503
    assert "after 2 attempts" in answer.json()["error"]


def test_requests_are_logged_as_json_lines(shop_alone, http):
    http.get(f"{shop_alone.url}/products/coffee")
    request = shop_alone.wait_for_record(msg="request", path="/products/coffee")
    assert request["status"] == 200 and request["service"] == "shop" and request["duration_ms"] >= 0
    records = shop_alone.log_records()
    assert all({"time", "level", "msg", "service"} <= r.keys() for r in records)
    # Probes are not logged: they would drown the requests people look for.
    assert not [r for r in records if r.get("path") == "/readyz"]
