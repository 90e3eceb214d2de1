"""Health, readiness, gRPC with the standard health service, configuration errors and graceful shutdown."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from labshop import inventory_pb2, inventory_pb2_grpc

pytestmark = pytest.mark.unit

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture(scope="module")
def inventory(start_service):
    return start_service("inventory", grpc=True)


@pytest.fixture(scope="module")
def channel(inventory):
    with grpc.insecure_channel(f"127.0.0.1:{inventory.grpc_port}") as ch:
        yield ch


def health(channel, service: str = "") -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


def wait_for(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_health_and_readiness_answer(inventory, http):
    assert http.get(f"{inventory.url}/healthz").json() == {"status": "ok", "service": "inventory"}
    assert http.get(f"{inventory.url}/readyz").status_code == 200
    assert "http_requests_total" in http.get(f"{inventory.url}/metrics").text


def test_grpc_serves_stock_and_the_standard_health_service(inventory, channel):
    # The health service follows readiness within a fraction of a second.
    assert wait_for(lambda: health(channel) == SERVING)
    assert health(channel, "labshop.inventory.v1.Inventory") == SERVING
    stub = inventory_pb2_grpc.InventoryStub(channel)
    stock = stub.GetStock(inventory_pb2.GetStockRequest(sku="mug"), timeout=5)
    reserved = stub.Reserve(inventory_pb2.ReserveRequest(sku="mug", quantity=1, idempotency_key="k1"), timeout=5)
    assert reserved.remaining == stock.available - 1
    with pytest.raises(grpc.RpcError) as unknown:
        stub.GetStock(inventory_pb2.GetStockRequest(sku="caviar"), timeout=5)
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as too_many:
        stub.Reserve(inventory_pb2.ReserveRequest(sku="mug", quantity=1000), timeout=5)
    assert too_many.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_rest_and_grpc_see_the_same_stock(inventory, channel, http):
    stub = inventory_pb2_grpc.InventoryStub(channel)
    assert stub.GetStock(inventory_pb2.GetStockRequest(sku="kettle"), timeout=5).available == \
        http.get(f"{inventory.url}/stock/kettle").json()["available"]


def test_the_not_ready_file_takes_the_pod_out_of_rotation_on_both_protocols(inventory, channel, http):
    inventory.not_ready_file.touch()
    try:
        ready = http.get(f"{inventory.url}/readyz")
        assert ready.status_code == 503 and "exists" in ready.json()["status"]
        assert wait_for(lambda: health(channel) == NOT_SERVING)
        # Liveness is another question: the process is fine, it must not be restarted.
        assert http.get(f"{inventory.url}/healthz").status_code == 200
    finally:
        inventory.not_ready_file.unlink()
    assert http.get(f"{inventory.url}/readyz").status_code == 200
    assert wait_for(lambda: health(channel) == SERVING)


def test_sigterm_drains_then_exits_0(start_service, http):
    service = start_service("inventory", {"SHUTDOWN_DELAY_SECONDS": "1.5"}, grpc=True)
    with grpc.insecure_channel(f"127.0.0.1:{service.grpc_port}") as ch:
        assert wait_for(lambda: health(ch) == SERVING)
        service.terminate()
        # During the drain delay the pod says it is not ready, yet still serves what reaches it.
        assert wait_for(lambda: http.get(f"{service.url}/readyz").status_code == 503, timeout=1)
        assert http.get(f"{service.url}/readyz").json()["status"] == "shutting down"
        assert http.get(f"{service.url}/stock/tea").status_code == 200
        assert wait_for(lambda: health(ch) == NOT_SERVING, timeout=1)
    assert service.stop() == 0
    messages = [r["msg"] for r in service.log_records()]
    assert "draining" in messages and messages[-1] != "draining"
    assert any(r["msg"] == "stopped" for r in service.log_records())


@pytest.mark.parametrize("env, words", [
    ({"PORT": "eighty"}, "PORT must be a whole number"),
    ({"INVENTORY_URL": "inventory:80"}, "INVENTORY_URL must be an http:// or https:// URL"),
    ({"INVENTORY_URL": "http://inventory", "INVENTORY_TIMEOUT_SECONDS": "0"}, "must be more than 0"),
    ({"INVENTORY_URL": "http://inventory", "INVENTORY_RETRIES": "100"}, "INVENTORY_RETRIES must be between 0 and 10"),
    ({"LOG_LEVEL": "loud"}, "LOG_LEVEL must be"),
])
def test_bad_configuration_is_refused_with_one_json_line(env, words, services_dir):
    done = subprocess.run([sys.executable, "-m", "labshop", "orders"], capture_output=True, text=True, timeout=60,
                          env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(services_dir), **env})
    assert done.returncode == 2
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1 and words in json.loads(lines[0])["msg"], done.stdout + done.stderr


def test_an_unknown_service_is_a_usage_error(services_dir):
    done = subprocess.run([sys.executable, "-m", "labshop", "warehouse"], capture_output=True, text=True, timeout=60,
                          env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(services_dir)})
    assert done.returncode == 2 and "usage: python -m labshop" in done.stdout
