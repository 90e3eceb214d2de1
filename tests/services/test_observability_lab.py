"""The observability lab's behaviour checks, rehearsed with local processes: the shop's services started with the
configuration the lab's solution gives their pods, a real Jaeger v2 (the toolbox's binary) as the collector, and
every http step of the lab's scenarios sent to them and judged by labctl's own judge. On a cluster the same steps
go through the API server's service proxy (`labctl check` on local or kind)."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml

from labctl.checks import HttpResponse, evaluate_http
from labctl.labs import load_lab
from labctl.paths import labs_dir
from labctl.render import render_objects

from tests.services.conftest import free_port

pytestmark = pytest.mark.unit

LAB = load_lab(labs_dir() / "10-observability")
SCENARIOS = {c.id: c.spec for c in LAB.checks if c.spec["type"] == "scenario"}
SOLUTION = render_objects(LAB.solution, LAB.path, LAB.values, LAB.namespace)


def _object(kind: str, name: str) -> dict:
    return next(o for o in SOLUTION if o["kind"] == kind and o["metadata"]["name"] == name)


_free_port = free_port  # one registry of handed-out ports for the whole run


def pod_env(name: str, replace: dict[str, str], container: str | None = None) -> dict[str, str]:
    """The environment the solution gives a container of Deployment `name` (its ConfigMap, then its env with
    $(VAR) expanded, as the kubelet does), with cluster addresses replaced by local ones."""
    pod = _object("Deployment", name)["spec"]["template"]["spec"]
    spec = next(c for c in [*pod.get("initContainers", []), *pod["containers"]] if c["name"] == (container or name))
    config = _object("ConfigMap", f"{name}-config")["data"]
    env: dict[str, str] = {}
    for source in spec.get("envFrom", []):
        env.update(_object("ConfigMap", source["configMapRef"]["name"])["data"])
    for var in spec.get("env", []):
        if "value" in var:
            env[var["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), var["value"])
        elif "configMapKeyRef" in var["valueFrom"]:
            env[var["name"]] = config[var["valueFrom"]["configMapKeyRef"]["key"]]
        elif "fieldRef" in var["valueFrom"]:
            env[var["name"]] = f"{name}-7d4b9c-x2x4q"  # metadata.name of a pod
    return {k: replace.get(v, v) if k != "METRICS_PORT" else replace.get("METRICS_PORT", v) for k, v in env.items()}


class Jaeger:
    """The toolbox's Jaeger v2 with its components on free loopback ports (the lab runs its built-in all-in-one
    configuration; this one holds the same pipeline: OTLP/HTTP in, memory storage, the query service)."""

    def __init__(self, binary: Path, workdir: Path) -> None:
        self.otlp, self.query, self.health, self.query_grpc = (_free_port() for _ in range(4))
        config = {
            "service": {
                "extensions": ["jaeger_storage", "jaeger_query", "healthcheckv2"],
                "pipelines": {"traces": {"receivers": ["otlp"], "processors": ["batch"],
                                         "exporters": ["jaeger_storage_exporter"]}},
                "telemetry": {"metrics": {"level": "none"}},
            },
            "extensions": {
                "jaeger_storage": {"backends": {"memstore": {"memory": {"max_traces": 1000}}}},
                # Its own tracing off: it would send spans of its queries to whatever listens on localhost:4317.
                "jaeger_query": {"storage": {"traces": "memstore"}, "enable_tracing": False,
                                 "http": {"endpoint": f"127.0.0.1:{self.query}"},
                                 "grpc": {"endpoint": f"127.0.0.1:{self.query_grpc}"}},
                "healthcheckv2": {"use_v2": True, "http": {"endpoint": f"127.0.0.1:{self.health}"}},
            },
            "receivers": {"otlp": {"protocols": {"http": {"endpoint": f"127.0.0.1:{self.otlp}"}}}},
            "processors": {"batch": {}},
            "exporters": {"jaeger_storage_exporter": {"trace_storage": "memstore"}},
        }
        path = workdir / "jaeger.yaml"
        path.write_text(yaml.safe_dump(config))
        self.log_path = workdir / "jaeger.log"
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen([str(binary), "--config", str(path)], stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env={"PATH": os.environ.get("PATH", "")})
        self.url = f"http://127.0.0.1:{self.query}"
        self.otlp_url = f"http://127.0.0.1:{self.otlp}"

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"jaeger exited with {self.proc.returncode}:\n{self.log_path.read_text()}"
            try:
                if httpx.get(f"http://127.0.0.1:{self.health}/status", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"jaeger not ready after {timeout}s:\n{self.log_path.read_text()}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


def _jaeger_binary() -> Path | None:
    from labctl.toolbox.components import COMPONENTS
    from labctl.toolbox.store import binary_path

    path = binary_path("jaeger", COMPONENTS["jaeger"].version)
    return path if path.exists() else None


@pytest.fixture(scope="module")
def jaeger(tmp_path_factory):
    """A running Jaeger, or None when the toolbox has none (the tests that need it then skip, or fail under
    LABCTL_REQUIRE_CLUSTER=1)."""
    binary = _jaeger_binary()
    if binary is None:
        yield None
        return
    j = Jaeger(binary, tmp_path_factory.mktemp("jaeger"))
    try:
        j.wait_ready()
        yield j
    finally:
        j.stop()


def needs(jaeger: Jaeger | None) -> Jaeger:
    if jaeger is None:
        reason = "the toolbox's jaeger is not installed (`labctl toolbox install jaeger`)"
        if os.environ.get("LABCTL_REQUIRE_CLUSTER") == "1":
            pytest.fail(f"LABCTL_REQUIRE_CLUSTER=1 but {reason}", pytrace=False)
        pytest.skip(reason)
    return jaeger


@pytest.fixture(scope="module")
def shop(start_service, tmp_path_factory, jaeger):
    """The four services and orders' log shipper with the solution's configuration, sending spans to Jaeger."""
    log_dir = tmp_path_factory.mktemp("pod-logs")
    collector = jaeger.otlp_url if jaeger else ""  # no Jaeger: no tracing, the metrics still count
    services = {}
    metrics = {}
    for name in ("catalog", "inventory", "payments"):
        metrics[name] = _free_port()
        services[name] = start_service(name, pod_env(name, {
            "http://jaeger:4318": collector, "METRICS_PORT": str(metrics[name])}), wait=False)
    metrics["orders"] = _free_port()
    local = {
        "http://jaeger:4318": collector, "METRICS_PORT": str(metrics["orders"]),
        "/var/log/labshop/orders.log": str(log_dir / "orders.log"),
        **{f"http://{n}": services[n].url for n in ("catalog", "inventory", "payments")},
    }
    services["orders"] = start_service("orders", pod_env("orders", local), wait=False)
    sidecar = pod_env("orders", local, container="logship")
    assert sidecar.pop("PORT") == "8081"  # the pod's second port; here the process gets a free one
    services["logship"] = start_service("logship", sidecar, wait=False)
    for s in services.values():
        s.wait_ready()
    # Where each (Service, port) of a step leads: the pods' ports behind the Services.
    routes = {("orders", 80): services["orders"].url, ("orders", "metrics"): f"http://127.0.0.1:{metrics['orders']}"}
    if jaeger:
        routes[("jaeger", "query")] = jaeger.url
    return services, routes


def rehearse(scenario: dict, routes: dict) -> list[str]:
    """Send every http step of `scenario` to the local processes and judge it as `labctl check` does."""
    seen = []
    with httpx.Client() as client:
        for number, step in enumerate(scenario["steps"], start=1):
            h = step["http"]
            body = h.get("body")
            headers = {"Content-Type": "application/json"} if body and body.lstrip()[:1] in "{[" else {}
            judged_as = {**h, "expect": step.get("expect") or {}}
            deadline = time.monotonic() + float(step.get("timeout_seconds") or 10)
            while True:
                for _ in range(int(h.get("count", 1))):
                    started = time.monotonic()
                    r = client.request(h.get("method", "GET"), routes[(h["service"], h["port"])] + h["path"],
                                       content=body, headers=headers, timeout=10)
                    result = evaluate_http(judged_as, HttpResponse(r.status_code, r.content,
                                                                   (time.monotonic() - started) * 1000), None)
                    if not result.passed:
                        break
                if result.passed or not step.get("until") or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            assert result.passed, f"step {number} ({step.get('title')}): {result.reason}"
            seen.append(result.reason)
    return seen


def test_the_metrics_scenario_passes_against_the_solutions_services(shop):
    _, routes = shop
    assert len(rehearse(SCENARIOS["metrics-count-requests"], routes)) == 3


def test_the_metrics_scenario_fails_on_the_unnamed_starting_state(start_service):
    # Without METRICS_PORT nothing answers on the metrics port: the step fails, it does not pass by accident.
    orders = start_service("orders", {"INVENTORY_URL": "http://127.0.0.1:9"})
    routes = {("orders", 80): orders.url, ("orders", "metrics"): f"http://127.0.0.1:{_free_port()}"}
    with pytest.raises((AssertionError, httpx.TransportError)):
        rehearse(SCENARIOS["metrics-count-requests"], routes)


def test_the_tracing_scenario_passes_against_the_solutions_services_and_jaeger(jaeger, shop):
    jaeger = needs(jaeger)
    services, routes = shop
    started = time.monotonic()
    rehearse(SCENARIOS["one-trace-three-services"], routes)
    # The lab gives the services Jaeger's address and the default batch delay (5 s): well inside the 30 s.
    assert time.monotonic() - started < 25
    # The trace, read by its id from the query API, as the README does it.
    traces = httpx.get(f"{jaeger.url}/api/traces", params={"service": "payments", "limit": 1}).json()["data"]
    trace = httpx.get(f"{jaeger.url}/api/traces/{traces[0]['traceID']}").json()["data"][0]
    assert {p["serviceName"] for p in trace["processes"].values()} >= {"orders", "inventory", "payments", "catalog"}
    assert {s["traceID"] for s in trace["spans"]} == {traces[0]["traceID"]}
    tags = {t["key"]: t["value"] for p in trace["processes"].values() if p["serviceName"] == "orders"
            for t in p["tags"]}
    assert tags["k8s.pod.name"] == "orders-7d4b9c-x2x4q" and tags["k8s.namespace.name"] == LAB.namespace
    # The order's log line names that trace, in orders' stdout and in what its sidecar shipped from the file.
    record = services["orders"].wait_for_record(msg="request", path="/orders")
    assert record["trace_id"] == traces[0]["traceID"]
    assert services["logship"].wait_for_record(msg="request", path="/orders", service="orders") == record
