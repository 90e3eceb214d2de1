"""shop-api, the backend for the frontend, with real catalog and inventory processes: one answer from two
backends asked at once, a degraded answer when inventory is gone or slow, and API keys checked at the edge."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.unit

WEB_KEY = "labshop-web-7c1e4a9f3b2d"
MOBILE_KEY = "labshop-mobile-0d8b5e2a61f4"


def _dead_url() -> str:
    """An address nobody listens on: a backend that is down."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture(scope="module")
def keys_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("api-keys")
    (folder / "web").write_text(WEB_KEY + "\n")
    (folder / "mobile").write_text(MOBILE_KEY)
    (folder / "tiny").write_text("short")  # under 16 characters: never accepted
    return folder


@pytest.fixture(scope="module")
def shop(start_service, keys_dir):
    catalog = start_service("catalog", wait=False)
    inventory = start_service("inventory", wait=False)
    victim = start_service("inventory", wait=False)  # stopped by a test
    slow_catalog = start_service("catalog", {"RESPONSE_DELAY_SECONDS": "1"}, wait=False)
    slow_inventory = start_service("inventory", {"RESPONSE_DELAY_SECONDS": "1"}, wait=False)
    bff = start_service("shop_api", {"CATALOG_URL": catalog.url, "INVENTORY_URL": inventory.url,
                                     "API_KEYS_DIR": str(keys_dir)}, wait=False)
    fragile = start_service("shop_api", {"CATALOG_URL": catalog.url, "INVENTORY_URL": victim.url}, wait=False)
    concurrent = start_service("shop_api", {
        "CATALOG_URL": slow_catalog.url, "INVENTORY_URL": slow_inventory.url,
        "CATALOG_TIMEOUT_SECONDS": "3", "INVENTORY_TIMEOUT_SECONDS": "3"}, wait=False)
    impatient = start_service("shop_api", {"CATALOG_URL": catalog.url, "INVENTORY_URL": slow_inventory.url,
                                           "INVENTORY_TIMEOUT_SECONDS": "0.3"}, wait=False)
    blind = start_service("shop_api", {"CATALOG_URL": _dead_url(), "INVENTORY_URL": inventory.url}, wait=False)
    started = {"catalog": catalog, "inventory": inventory, "victim": victim, "bff": bff, "fragile": fragile,
               "concurrent": concurrent, "impatient": impatient, "blind": blind,
               "slow_catalog": slow_catalog, "slow_inventory": slow_inventory}
    for service in started.values():
        service.wait_ready()
    return started


def test_one_answer_from_both_backends(shop, http):
    answer = http.get(f"{shop['bff'].url}/api/products/tea", headers={"X-Api-Key": WEB_KEY})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["product"] == {"sku": "tea", "name": "Green tea, 100 g", "price_cents": 650, "currency": "EUR"}
    assert body["stock"] == {"available": http.get(f"{shop['inventory'].url}/stock/tea").json()["available"]}
    assert body["degraded"] == [] and body["client"] == "web" and body["served_by"] == "shop-api"
    assert "no-store" not in answer.headers.get("cache-control", "")


def test_an_unknown_product_is_404(shop, http):
    answer = http.get(f"{shop['bff'].url}/api/products/caviar", headers={"X-Api-Key": WEB_KEY})
    assert answer.status_code == 404 and "caviar" in answer.json()["error"]


def test_without_a_key_the_edge_answers_401_and_asks_nobody(shop, http):
    bff, catalog = shop["bff"], shop["catalog"]
    asked = catalog.metric("http_requests_total", route="/products/{sku}")
    missing = bff.metric("shop_api_rejected_requests_total", reason="missing")
    answer = http.get(f"{bff.url}/api/products/tea")
    assert answer.status_code == 401
    assert answer.json()["error"] == "an API key is required (X-Api-Key header)"
    assert answer.headers["www-authenticate"] == 'ApiKey header="X-Api-Key"'
    assert bff.metric("shop_api_rejected_requests_total", reason="missing") == missing + 1
    assert catalog.metric("http_requests_total", route="/products/{sku}") == asked  # rejected before any call


@pytest.mark.parametrize("key", [WEB_KEY[:-1], WEB_KEY + "x", "short", "", MOBILE_KEY.upper()])
def test_a_wrong_key_is_401(shop, http, key):
    answer = http.get(f"{shop['bff'].url}/api/products/tea", headers={"X-Api-Key": key})
    assert answer.status_code == 401, key


def test_each_client_is_known_by_its_own_key(shop, http):
    answer = http.get(f"{shop['bff'].url}/api/products/mug", headers={"X-Api-Key": MOBILE_KEY})
    assert answer.status_code == 200 and answer.json()["client"] == "mobile"
    # The key never reaches the log, the client's name does.
    shop["bff"].wait_for_record(msg="API keys loaded")
    assert WEB_KEY not in shop["bff"].log() and MOBILE_KEY not in shop["bff"].log()


def test_a_too_short_key_is_refused_and_logged(shop):
    record = shop["bff"].wait_for_record(msg="API key too short: ignored")
    assert record["client"] == "tiny" and record["level"] == "ERROR"


def test_probes_need_no_key(shop, http):
    for path in ("/healthz", "/readyz", "/metrics"):
        assert http.get(f"{shop['bff'].url}{path}").status_code == 200, path


def test_without_inventory_the_answer_is_degraded_not_failed(shop, http):
    fragile, victim = shop["fragile"], shop["victim"]
    before = http.get(f"{fragile.url}/api/products/coffee")
    assert before.status_code == 200 and before.json()["degraded"] == [] and before.json()["client"] is None
    victim.proc.kill()
    victim.proc.wait(10)
    degraded = fragile.metric("shop_api_degraded_responses_total", part="inventory")
    started = time.monotonic()
    answer = http.get(f"{fragile.url}/api/products/coffee")
    elapsed = time.monotonic() - started
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["degraded"] == ["inventory"] and body["stock"] is None
    assert body["product"]["name"] == "Coffee beans, 250 g"
    assert answer.headers["cache-control"] == "no-store"
    assert "127.0.0.1" not in answer.text  # the reason stays inside: it is in the log
    assert elapsed < 1.5, elapsed  # a refused connection is known at once
    assert fragile.metric("shop_api_degraded_responses_total", part="inventory") == degraded + 1
    record = fragile.wait_for_record(msg="answering without inventory")
    assert "cannot connect" in record["reason"]


def test_a_slow_inventory_costs_its_timeout_only(shop, http):
    started = time.monotonic()
    answer = http.get(f"{shop['impatient'].url}/api/products/tea")
    elapsed = time.monotonic() - started
    assert answer.status_code == 200 and answer.json()["degraded"] == ["inventory"]
    assert answer.json()["product"]["sku"] == "tea"
    assert 0.3 <= elapsed < 0.9, elapsed  # inventory takes 1 s; the page waits 0.3 s for it


def test_without_catalog_there_is_no_page(shop, http):
    answer = http.get(f"{shop['blind'].url}/api/products/tea")
    assert answer.status_code == 503
    assert answer.json()["degraded"] == ["catalog"]
    assert shop["blind"].wait_for_record(msg="catalog cannot answer")["sku"] == "tea"


def test_the_backends_are_asked_at_the_same_time(shop, http):
    # Each backend takes 1 s: one after the other would be 2 s or more.
    for _ in range(2):
        started = time.monotonic()
        answer = http.get(f"{shop['concurrent'].url}/api/products/kettle")
        elapsed = time.monotonic() - started
        assert answer.status_code == 200 and answer.json()["degraded"] == [], answer.text
        assert 1.0 <= elapsed < 1.8, elapsed


def test_a_rotated_key_works_without_a_restart(start_service, tmp_path, http):
    folder = tmp_path / "keys"
    folder.mkdir()
    (folder / "web").write_text(WEB_KEY)
    catalog = start_service("catalog", wait=False)
    inventory = start_service("inventory", wait=False)
    bff = start_service("shop_api", {"CATALOG_URL": catalog.url, "INVENTORY_URL": inventory.url,
                                     "API_KEYS_DIR": str(folder)}, wait=False)
    for service in (catalog, inventory, bff):
        service.wait_ready()
    url = f"{bff.url}/api/products/tea"
    assert http.get(url, headers={"X-Api-Key": WEB_KEY}).status_code == 200
    # As the kubelet updates a mounted Secret: the new content appears at once, as a new file.
    fresh = "labshop-web-rotated-5e6f7a8b"
    (folder / "web.new").write_text(fresh)
    os.replace(folder / "web.new", folder / "web")
    assert http.get(url, headers={"X-Api-Key": fresh}).status_code == 200
    assert http.get(url, headers={"X-Api-Key": WEB_KEY}).status_code == 401
    # Every key removed: nobody gets in (fail closed), and the log says why.
    (folder / "web").unlink()
    assert http.get(url, headers={"X-Api-Key": fresh}).status_code == 401
    bff.wait_for_record(msg="no usable API key: every request is refused")


def test_a_keys_dir_that_is_not_there_stops_the_start(services_dir, tmp_path):
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(services_dir), "PORT": "0",
           "API_KEYS_DIR": str(tmp_path / "nowhere")}
    done = subprocess.run([sys.executable, "-m", "labshop", "shop_api"], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2
    assert "API_KEYS_DIR" in done.stdout and "is not a directory" in done.stdout
    assert "Traceback" not in done.stdout + done.stderr


def test_api_keys_compare_every_key(tmp_path):
    from labshop.shop_api import ApiKeys

    (tmp_path / "a").write_text("a" * 16)
    (tmp_path / "b").write_text("b" * 20)
    (tmp_path / ".hidden").mkdir()
    keys = ApiKeys(tmp_path, logging.getLogger("test"))
    assert keys.client("a" * 16) == "a" and keys.client("b" * 20) == "b"
    assert keys.client("a" * 15) is None and keys.client("") is None
    assert sorted(keys.digests()) == ["a", "b"]
    assert "a" * 16 not in repr(keys.digests())  # only digests are kept
