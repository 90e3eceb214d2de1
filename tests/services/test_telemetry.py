"""Traces, logs and metrics of the shop's services as real processes: one order through orders yields one trace
whose spans (orders, catalog, inventory, payments) share its id and name their parents, received by a real
OTLP/HTTP endpoint in the test; request logs carry the trace id and reach a log file that the log shipper
follows; /metrics on its own port counts requests and their latency per route."""

from __future__ import annotations

import gzip
import io
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from tests.services.conftest import free_port

pytestmark = pytest.mark.unit

SERVICES_DIR = Path(__file__).resolve().parents[2] / "services"

SERVER, CLIENT = Span.SPAN_KIND_SERVER, Span.SPAN_KIND_CLIENT


class Collector:
    """An OTLP/HTTP trace endpoint (POST /v1/traces, protobuf): what a collector such as Jaeger receives."""

    def __init__(self) -> None:
        self.spans: list[dict] = []
        self.requests = 0
        self._lock = threading.Lock()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (named by http.server)
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path != "/v1/traces" or self.headers.get("Content-Type") != "application/x-protobuf":
                    self.send_error(404 if self.path != "/v1/traces" else 415)
                    return
                collector.receive(ExportTraceServiceRequest.FromString(body))
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def receive(self, request: ExportTraceServiceRequest) -> None:
        with self._lock:
            self.requests += 1
            for resource_spans in request.resource_spans:
                resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        self.spans.append({
                            "service": resource.get("service.name"), "resource": resource, "name": span.name,
                            "kind": span.kind, "trace_id": span.trace_id.hex(), "span_id": span.span_id.hex(),
                            "parent": span.parent_span_id.hex(), "status": span.status.code,
                            "attributes": {a.key: _value(a.value) for a in span.attributes},
                        })

    def trace(self, trace_id: str) -> list[dict]:
        with self._lock:
            return [s for s in self.spans if s["trace_id"] == trace_id]

    def wait_for(self, timeout: float = 15.0, **fields) -> dict:
        """The first span carrying `fields`, waiting for it (spans leave a service in batches)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                found = [s for s in self.spans if all(s.get(k) == v for k, v in fields.items())]
            if found:
                return found[0]
            time.sleep(0.05)
        raise AssertionError(f"no span with {fields} among {len(self.spans)}: "
                             f"{sorted({(s['service'], s['name']) for s in self.spans})}")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()




def _value(v):
    return getattr(v, v.WhichOneof("value")) if v.WhichOneof("value") else None


@pytest.fixture(scope="module")
def collector():
    c = Collector()
    yield c
    c.close()


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("shop-logs")


@pytest.fixture(scope="module")
def shop(start_service, collector, log_dir):
    """catalog, inventory, payments and orders, each exporting its spans to the test's collector; orders also
    writes its log to a file (followed by a log shipper) and serves its metrics on a port of their own."""

    def otel(name: str) -> dict[str, str]:
        # What the lab puts in each service's ConfigMap, with a short batch delay so the test need not wait 5 s.
        return {"OTEL_EXPORTER_OTLP_ENDPOINT": collector.url, "OTEL_SERVICE_NAME": name,
                "OTEL_TRACES_SAMPLER": "parentbased_always_on", "OTEL_PROPAGATORS": "tracecontext,baggage",
                "OTEL_BSP_SCHEDULE_DELAY": "100", "OTEL_RESOURCE_ATTRIBUTES": f"k8s.pod.name={name}-0"}

    catalog = start_service("catalog", otel("catalog"), wait=False)
    inventory = start_service("inventory", otel("inventory"), wait=False)
    payments = start_service("payments", otel("payments"), wait=False)
    metrics_port = free_port()
    log_file = log_dir / "orders.log"
    orders = start_service("orders", {
        **otel("orders"), "CATALOG_URL": catalog.url, "INVENTORY_URL": inventory.url, "PAYMENTS_URL": payments.url,
        "LOG_FILE": str(log_file), "METRICS_PORT": str(metrics_port),
    }, wait=False)
    shipper = start_service("logship", {"LOG_FILE": str(log_file), "LOGSHIP_POLL_SECONDS": "0.05"}, wait=False)
    for s in (catalog, inventory, payments, orders, shipper):
        s.wait_ready()
    return {"catalog": catalog, "inventory": inventory, "payments": payments, "orders": orders,
            "shipper": shipper, "metrics": f"http://127.0.0.1:{metrics_port}/metrics", "log_file": log_file}


def test_one_order_is_one_trace_across_the_services(shop, collector, http):
    answer = http.post(f"{shop['orders'].url}/orders", json={"sku": "tea", "quantity": 1})
    assert answer.status_code == 201, answer.text
    order_id = answer.json()["id"]
    payment = collector.wait_for(service="payments", name="POST /payments", kind=SERVER)
    trace_id = payment["trace_id"]
    # Everything that order caused arrives under the same trace id.
    root = collector.wait_for(service="orders", name="POST /orders", kind=SERVER, trace_id=trace_id)
    reservation = collector.wait_for(service="inventory", name="POST /reservations", trace_id=trace_id)
    product = collector.wait_for(service="catalog", name="GET /products/{sku}", trace_id=trace_id)
    spans = collector.trace(trace_id)
    assert {s["service"] for s in spans} == {"orders", "catalog", "inventory", "payments"}
    assert root["parent"] == "", "the order's span is the trace's root"
    assert root["attributes"]["http.route"] == "/orders" and root["attributes"]["http.response.status_code"] == 201
    # Each callee's span is the child of orders' client span for that call, which is the child of the root.
    by_id = {s["span_id"]: s for s in spans}
    for callee, target in ((reservation, "inventory"), (payment, "payments"), (product, "catalog")):
        call = by_id[callee["parent"]]
        assert (call["service"], call["kind"], call["attributes"]["peer.service"]) == ("orders", CLIENT, target)
        assert call["parent"] == root["span_id"]
        assert call["name"] == f"{callee['attributes']['http.request.method']} {target}"
    # Each service names itself; the resource attributes from the environment come along.
    assert {s["resource"]["k8s.pod.name"] for s in spans} == {f"{n}-0" for n in
                                                               ("orders", "catalog", "inventory", "payments")}
    # The order's request log line names the trace, in the log file as on stdout.
    record = shop["orders"].wait_for_record(msg="request", path="/orders")
    assert (record["trace_id"], record["span_id"]) == (trace_id, root["span_id"])
    placed = shop["orders"].wait_for_record(msg="order placed", order=order_id)
    assert placed["trace_id"] == trace_id


def test_a_callers_traceparent_is_continued(shop, collector, http):
    trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)
    answer = http.get(f"{shop['orders'].url}/availability/tea", headers={"traceparent": f"00-{trace_id}-{parent}-01"})
    assert answer.status_code == 200, answer.text
    entry = collector.wait_for(service="orders", name="GET /availability/{sku}", trace_id=trace_id)
    assert entry["parent"] == parent and entry["kind"] == SERVER
    stock = collector.wait_for(service="inventory", name="GET /stock/{sku}", trace_id=trace_id)
    assert collector.trace(trace_id) and stock["parent"] in {s["span_id"] for s in collector.trace(trace_id)}


def test_a_trace_the_caller_did_not_sample_is_not_recorded_downstream(shop, collector, http):
    # parentbased_*: every service follows the decision in the caller's traceparent (flags 00: not sampled),
    # so a trace is kept whole or not at all.
    dropped, kept = secrets.token_hex(16), secrets.token_hex(16)
    for trace_id, flags in ((dropped, "00"), (kept, "01")):
        answer = http.get(f"{shop['orders'].url}/availability/tea",
                          headers={"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-{flags}"})
        assert answer.status_code == 200, answer.text
    collector.wait_for(service="inventory", trace_id=kept)  # sent after the dropped one, by the same services
    collector.wait_for(service="orders", trace_id=kept)
    assert collector.trace(dropped) == []


def test_probes_and_scrapes_are_not_traced(shop, collector, http):
    for path in ("/healthz", "/readyz", "/metrics"):
        assert http.get(f"{shop['inventory'].url}{path}").status_code == 200
    marker = secrets.token_hex(16)
    http.get(f"{shop['inventory'].url}/stock/tea", headers={"traceparent": f"00-{marker}-{secrets.token_hex(8)}-01"})
    collector.wait_for(service="inventory", trace_id=marker)
    assert not [s for s in collector.spans if s["attributes"].get("url.path") in ("/healthz", "/readyz", "/metrics")]


def test_metrics_port_counts_requests_and_their_latency_per_route(shop, http):
    from prometheus_client.parser import text_string_to_metric_families

    for _ in range(3):
        assert http.get(f"{shop['orders'].url}/availability/coffee").status_code == 200
    text = http.get(shop["metrics"]).text
    samples = [s for f in text_string_to_metric_families(text) for s in f.samples]

    def value(name: str, **labels: str) -> float:
        return sum(s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))

    route = {"service": "orders", "method": "GET", "route": "/availability/{sku}"}
    assert value("http_requests_total", **route, status="200") >= 3
    assert value("http_request_duration_seconds_count", **route) >= 3
    buckets = [s for s in samples if s.name == "http_request_duration_seconds_bucket"
               and all(s.labels.get(k) == v for k, v in route.items())]
    assert len(buckets) > 5 and {"+Inf"} < {s.labels["le"] for s in buckets}
    assert value("http_request_duration_seconds_bucket", **route, le="+Inf") >= 3
    # The same registry as /metrics on the service's own port, and the calls to inventory are counted too.
    assert value("outbound_requests_total", target="inventory", outcome="ok") >= 3


def test_the_log_file_holds_the_json_lines_and_the_shipper_sends_them_on(shop, http):
    marker = f"shipped-{secrets.token_hex(4)}"
    assert http.get(f"{shop['orders'].url}/availability/{marker}").status_code == 404
    record = shop["orders"].wait_for_record(msg="request", path=f"/availability/{marker}")
    in_file = [line for line in shop["log_file"].read_text().splitlines() if marker in line]
    assert len(in_file) == 1 and '"service": "orders"' in in_file[0] and record["trace_id"] in in_file[0]
    shipped = shop["shipper"].wait_for_record(msg="request", path=f"/availability/{marker}", service="orders")
    assert shipped == record
    status = http.get(f"{shop['shipper'].url}/status").json()
    assert status["following"] and status["shipped"] >= 2


# The shipper alone, on a file the test writes.

@pytest.fixture()
def shipper(start_service, tmp_path):
    path = tmp_path / "app.log"
    service = start_service("logship", {"LOG_FILE": str(path), "LOGSHIP_POLL_SECONDS": "0.05"})
    return service, path


def _shipped(service, marker: str, count: int, timeout: float = 5.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        lines = [line for line in service.log().splitlines() if marker in line and '"service": "logship"' not in line]
        if len(lines) >= count or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


def test_the_shipper_waits_for_the_file_then_follows_rotation_and_truncation(shipper, http):
    service, path = shipper
    time.sleep(0.2)  # polling a file that does not exist yet
    with open(path, "w") as f:
        f.write("one\ntwo\nthr")
        f.flush()
        assert _shipped(service, "o", 2) == ["one", "two"]
        f.write("ee\n")
        f.flush()
        assert _shipped(service, "thr", 1) == ["three"], "a line is shipped whole, once its newline is written"
        f.write("four\n")
    path.rename(path.with_suffix(".log.1"))  # rotated, as RotatingFileHandler does
    with open(path, "w") as f:
        f.write("five\n")
    assert _shipped(service, "f", 2) == ["four", "five"]
    with open(path, "w") as f:  # truncated in place
        f.write("six\n")
    assert _shipped(service, "six", 1) == ["six"]
    metrics = http.get(f"{service.url}/metrics").text
    assert "logship_lines_total 6.0" in metrics
    assert 'logship_reopens_total{reason="rotated"} 1.0' in metrics
    assert 'logship_reopens_total{reason="truncated"} 1.0' in metrics


def test_the_shipper_ships_an_unfinished_last_line_when_it_stops(shipper):
    service, path = shipper
    path.write_text("first\nlast words")
    assert _shipped(service, "first", 1) == ["first"]
    assert service.stop() == 0
    assert _shipped(service, "last words", 1, timeout=0) == ["last words"]


def test_the_shipper_follows_the_services_own_rotation_and_loses_no_line(start_service, tmp_path, http):
    log_file = tmp_path / "orders.log"
    orders = start_service("orders", {"LOG_FILE": str(log_file), "LOG_FILE_MAX_BYTES": "2048",
                                      "INVENTORY_URL": "http://127.0.0.1:9"}, wait=False)
    shipper = start_service("logship", {"LOG_FILE": str(log_file), "LOGSHIP_POLL_SECONDS": "0.02"}, wait=False)
    orders.wait_ready()
    shipper.wait_ready()
    markers = [f"rotating-{i:02d}-{secrets.token_hex(3)}" for i in range(30)]
    for marker in markers:  # ~300 bytes a line: a new file every seven requests or so
        assert http.get(f"{orders.url}/orders/{marker}").status_code == 404
        time.sleep(0.05)
    assert log_file.with_suffix(".log.1").exists(), "the service rotated its file"
    deadline = time.monotonic() + 10
    while True:
        shipped = [r.get("path", "") for r in shipper.log_records() if r.get("service") == "orders"]
        if all(f"/orders/{m}" in shipped for m in markers) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert [p for p in shipped if p.startswith("/orders/rotating-")] == [f"/orders/{m}" for m in markers]


def test_the_shipper_leaves_the_services_other_settings_alone(start_service, tmp_path, http):
    # Given the whole of its service's ConfigMap, the sidecar still only follows LOG_FILE: no second listener on
    # the service's METRICS_PORT (it would collide in the pod: the port is taken here), no writing to the file.
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        path = tmp_path / "app.log"
        path.write_text("before\n")
        shipper = start_service("logship", {
            "LOG_FILE": str(path), "LOGSHIP_POLL_SECONDS": "0.05", "METRICS_PORT": str(taken.getsockname()[1]),
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9", "OTEL_SERVICE_NAME": "orders"})
        assert _shipped(shipper, "before", 1) == ["before"]
        assert http.get(f"{shipper.url}/status").status_code == 200
        assert path.read_text() == "before\n"
    finally:
        taken.close()


# Switched off, and refused when wrong.

def _run(code: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(SERVICES_DIR), **env})


CREATE_ORDERS = """
import sys
from labshop import orders, telemetry
from labshop.config import Env
env = Env()
telemetry.setup("orders", env)
built = orders.create(env)
telemetry.attach("orders", built, env)
print(sorted(m for m in sys.modules if m == "labshop.tracing" or m.startswith("opentelemetry.exporter")))
"""


def test_without_otel_variables_tracing_is_not_loaded():
    # (redis-py, which labshop.events imports, loads parts of the OpenTelemetry SDK itself when it is installed;
    # the tracing set-up and the exporter are what a service without OTEL_* must not pay for.)
    off = _run(CREATE_ORDERS, {"INVENTORY_URL": "http://inventory"})
    assert off.returncode == 0, off.stderr
    assert off.stdout.strip().splitlines()[-1] == "[]"
    on = _run(CREATE_ORDERS, {"INVENTORY_URL": "http://inventory", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"})
    assert on.returncode == 0, on.stderr
    assert "'labshop.tracing'" in on.stdout.strip().splitlines()[-1]
    disabled = _run(CREATE_ORDERS, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9", "OTEL_SDK_DISABLED": "true"})
    assert disabled.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize(("env", "message"), [
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://jaeger:4318", "OTEL_TRACES_SAMPLER": "sometimes"},
     "OTEL_TRACES_SAMPLER must be one of always_on, always_off, traceidratio"),
    ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
      "OTEL_TRACES_SAMPLER_ARG": "10%"}, "OTEL_TRACES_SAMPLER_ARG must be a ratio from 0 to 1"),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://jaeger:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
     "OTEL_EXPORTER_OTLP_PROTOCOL: only http/protobuf is available here (port 4318), got 'grpc'"),
    ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER: 'zipkin' is not available here"),
    ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_PROPAGATORS": "b3"}, "OTEL_PROPAGATORS: Propagator b3 not found"),
    ({"LOG_FILE": "/proc/no/such/dir/orders.log"}, "LOG_FILE: cannot write /proc/no/such/dir/orders.log"),
    ({"METRICS_PORT": "8080"}, "METRICS_PORT must differ from PORT (8080)"),
])
def test_a_wrong_setting_is_refused_in_one_line(env, message):
    done = subprocess.run([sys.executable, "-m", "labshop", "orders"], capture_output=True, text=True, timeout=60,
                          env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(SERVICES_DIR), "PORT": "8080",
                               "HOST": "127.0.0.1", **env})
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and done.stderr == ""


def test_the_shipper_needs_its_file():
    done = subprocess.run([sys.executable, "-m", "labshop", "logship"], capture_output=True, text=True, timeout=60,
                          env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(SERVICES_DIR)})
    assert done.returncode == 2 and "LOG_FILE must name the file to ship" in done.stdout


@pytest.mark.parametrize(("env", "wanted"), [
    ({}, False),
    ({"OTEL_SERVICE_NAME": "orders"}, False),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://jaeger:4318"}, True),
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://jaeger:4318/v1/traces"}, True),
    ({"OTEL_TRACES_EXPORTER": "console"}, True),
    ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://jaeger:4318"}, False),
    ({"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://jaeger:4318"}, False),
])
def test_when_tracing_is_wanted(env, wanted):
    from labshop.config import Env
    from labshop.telemetry import tracing_wanted

    assert tracing_wanted(Env(env)) is wanted


def test_the_follower_in_process(tmp_path):
    from labshop.logship import Follower

    path = tmp_path / "x.log"
    out = io.StringIO()
    follower = Follower(str(path), out)
    assert follower.poll() == 0 and not follower.following
    path.write_bytes(b'{"msg": "caf\xc3\xa9"}\n\n  \nhalf')
    assert follower.poll() == 1 and out.getvalue() == '{"msg": "café"}\n'  # blank lines are not shipped
    assert follower.close() == 1 and out.getvalue().endswith("half\n") and not follower.following


def test_no_request_is_left_unanswered_while_the_collector_is_away(start_service, http):
    # The collector's address refuses connections: spans are dropped in the background, answers are unchanged.
    dead = f"http://127.0.0.1:{free_port()}"
    service = start_service("catalog", {"OTEL_EXPORTER_OTLP_ENDPOINT": dead, "OTEL_BSP_SCHEDULE_DELAY": "50",
                                        "OTEL_EXPORTER_OTLP_TIMEOUT": "1"})
    started = time.monotonic()
    for _ in range(5):
        assert http.get(f"{service.url}/products/tea").status_code == 200
    assert time.monotonic() - started < 2
    assert service.stop() == 0


def test_collector_rejects_what_is_not_otlp(collector):
    # The test's collector is strict about what it accepts, so the services' exports above are real OTLP/HTTP.
    assert httpx.post(f"{collector.url}/v1/traces", content=b"{}",
                      headers={"Content-Type": "application/json"}).status_code == 415
