"""The pure half of probe and scenario checks: metrics, probe Pods and their results, undoing a merge patch."""

from __future__ import annotations

import json

import pytest

from labctl.checks.metrics import evaluate_metric, find_sample, parse_samples
from labctl.checks.probe import (
    NEVER_READY,
    RESULT_MARKER,
    audiences_of,
    evaluate_probe,
    identity,
    parse_results,
    probe_pod,
    request_for,
)
from labctl.checks.scenario import apply_merge_patch, describe_step, inverse_merge_patch, step_timeout

pytestmark = pytest.mark.unit

METRICS = """\
# HELP labshop_breaker_state 0 closed, 1 open, 2 half-open
# TYPE labshop_breaker_state gauge
labshop_breaker_state{target="payments"} 1.0
labshop_breaker_state{target="inventory"} 0.0
# TYPE http_requests_total counter
http_requests_total{method="GET",path="/a \\"quoted\\"",code="200"} 12 1700000000000
http_request_duration_seconds_bucket{le="+Inf"} 7
up 1
broken line without value
"""


def test_samples_are_read_with_labels_and_escapes() -> None:
    samples = parse_samples(METRICS)
    assert ("up", {}, 1.0) in samples
    assert ("http_requests_total", {"method": "GET", "path": '/a "quoted"', "code": "200"}, 12.0) in samples
    assert find_sample(METRICS, "labshop_breaker_state", {"target": "inventory"}) == 0.0
    assert find_sample(METRICS, "http_request_duration_seconds_bucket", {"le": "+Inf"}) == 7.0
    assert find_sample(METRICS, "labshop_breaker_state", {"target": "nobody"}) is None


@pytest.mark.parametrize(("expect", "passed", "reason"), [
    ({"name": "labshop_breaker_state", "labels": {"target": "payments"}, "equals": 1}, True,
     'metric labshop_breaker_state{target="payments"} is 1'),
    ({"name": "labshop_breaker_state", "labels": {"target": "payments"}, "equals": 0}, False,
     'metric labshop_breaker_state{target="payments"} is 1 (wanted 0)'),
    ({"name": "http_requests_total", "min": 13}, False, "metric http_requests_total is 12 (wanted at least 13)"),
    ({"name": "http_requests_total", "max": 12, "min": 1}, True, "metric http_requests_total is 12"),
    ({"name": "up", "max": 0}, False, "metric up is 1 (wanted at most 0)"),
    ({"name": "labshop_breaker_opened_total"}, False,
     "metric labshop_breaker_opened_total is not exposed (series seen: labshop_breaker_state)"),
])
def test_metric_expectations(expect, passed, reason) -> None:
    result = evaluate_metric(expect, METRICS)
    assert (result.passed, result.reason) == (passed, reason)


def test_probe_pod_is_restricted_never_ready_and_carries_its_identity() -> None:
    actions = [{"http": {"url": "http://inventory/stock", "token_audience": "inventory"}}, {"dns": "orders"}]
    audiences = audiences_of(actions)
    requests = [request_for(a, None, 5, audiences) for a in actions]
    pod = probe_pod("lab-x", requests, labels={"app.kubernetes.io/name": "orders"}, service_account="orders",
                    audiences=audiences)
    spec = pod["spec"]
    container = spec["containers"][0]
    assert pod["metadata"]["labels"]["app.kubernetes.io/name"] == "orders"
    assert pod["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "labctl"
    assert spec["readinessGates"] == [{"conditionType": NEVER_READY}]
    assert spec["securityContext"]["runAsNonRoot"] and spec["securityContext"]["runAsUser"] != 0
    assert container["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                            "capabilities": {"drop": ["ALL"]}}
    assert spec["serviceAccountName"] == "orders" and spec["automountServiceAccountToken"] is False
    assert spec["volumes"][0]["projected"]["sources"][0]["serviceAccountToken"]["audience"] == "inventory"
    sent = json.loads(container["env"][0]["value"])
    assert sent[0]["token_file"] == "/var/run/labctl/tokens/token-0" and "token_audience" not in sent[0]
    assert sent[1] == {"kind": "dns", "name": "orders", "timeout": 5.0, "retry": True}
    assert spec["activeDeadlineSeconds"] >= 10


def test_a_refusal_is_tried_once_after_the_enforcer_settles() -> None:
    request = request_for({"tcp": {"host": "db", "port": 5432}}, {"connects": False}, 5, [])
    assert request["retry"] is False and request["settle"] > 0
    assert request_for({"tcp": {"host": "db", "port": 5432}}, None, 5, [])["retry"] is True


def test_probes_share_a_pod_only_with_the_same_identity() -> None:
    assert identity({"labels": {"a": "1", "b": "2"}}) == identity({"labels": {"b": "2", "a": "1"}})
    assert identity(None) == identity({})
    assert identity({"labels": {"a": "1"}}) != identity({"labels": {"a": "1"}, "service_account": "x"})


def test_results_are_read_from_the_last_marked_line() -> None:
    log = "starting\n" + RESULT_MARKER + json.dumps([{"addresses": ["10.0.0.1"]}]) + "\n"
    assert parse_results(log, 1) == [{"addresses": ["10.0.0.1"]}]
    assert parse_results(log, 2) == "the probe answered [{addresses: ['10.0.0.1']}] (wanted 2 results)"
    assert parse_results("Traceback: boom", 1) == "the probe printed no result (its log: Traceback: boom)"


@pytest.mark.parametrize(("action", "expect", "result", "passed", "reason"), [
    ({"dns": "orders"}, None, {"addresses": ["10.96.0.12"]}, True, "DNS lookup of orders from a pod: 10.96.0.12"),
    ({"dns": "ordrs"}, None, {"error": "Name or service not known"}, False,
     "DNS lookup of ordrs from a pod: does not resolve (Name or service not known)"),
    ({"dns": "inventory-peers"}, {"min_addresses": 3}, {"addresses": ["10.1.0.4", "10.1.0.5"]}, False,
     "DNS lookup of inventory-peers from a pod: 2 addresses (10.1.0.4, 10.1.0.5; wanted at least 3)"),
    ({"dns": "gone"}, {"resolves": False}, {"error": "Name or service not known"}, True,
     "DNS lookup of gone from a pod: does not resolve (Name or service not known)"),
    ({"tcp": {"host": "db", "port": 5432}}, {"connects": False}, {"connected": True}, False,
     "TCP connection to db:5432 from a pod: connected (wanted the connection refused or dropped)"),
    ({"tcp": {"host": "db", "port": 5432}}, {"connects": False}, {"connected": False, "error": "timed out"}, True,
     "TCP connection to db:5432 from a pod: no connection (timed out)"),
    ({"tcp": {"host": "db", "port": 5432}}, None, {"connected": False, "error": "Connection refused"}, False,
     "TCP connection to db:5432 from a pod: Connection refused"),
    ({"grpc_health": {"host": "inventory", "port": 9090}}, None, {"status": "NOT_SERVING"}, False,
     "gRPC health of inventory:9090 from a pod: NOT_SERVING (wanted SERVING)"),
    ({"http": {"url": "http://inventory/stock/tea", "token_audience": "inventory"}}, {"status": 200},
     {"status": 401, "body": '{"error": "no token"}', "elapsed_ms": 3}, False,
     'GET http://inventory/stock/tea from a pod: status 401 (wanted 200): \'{"error": "no token"}\''),
    ({"http": {"url": "http://inventory/stock/tea"}}, {"json": {"sku": "tea"}},
     {"status": 200, "body": '{"sku": "tea"}', "elapsed_ms": 3.2}, True,
     "GET http://inventory/stock/tea from a pod: 200 in 3 ms"),
])
def test_probe_results_are_judged_in_the_learners_words(action, expect, result, passed, reason) -> None:
    judged = evaluate_probe(action, expect, result)
    assert (judged.passed, judged.reason) == (passed, reason)


@pytest.mark.parametrize(("original", "patch"), [
    ({"data": {"A": "1", "B": "2"}}, {"data": {"A": "9", "C": "3"}}),
    ({"data": {"A": "1"}}, {"data": None}),
    ({"spec": {"replicas": 2}}, {"spec": {"replicas": 0, "paused": True}, "metadata": {"labels": {"x": "y"}}}),
    ({"data": {"A": {"deep": [1, 2]}}}, {"data": {"A": {"deep": [3]}}}),
    ({}, {"data": {"A": "1"}}),
])
def test_the_inverse_patch_restores_the_original(original, patch) -> None:
    changed = apply_merge_patch(original, patch)
    assert apply_merge_patch(changed, inverse_merge_patch(original, patch)) == original


def test_steps_are_named_and_timed() -> None:
    http = {"http": {"service": "orders", "port": 80, "path": "/checkout", "method": "POST", "count": 6}}
    assert describe_step(http) == "POST /checkout on Service orders:80, 6 requests"
    assert describe_step({**http, "title": "orders fails fast"}) == "orders fails fast"
    assert describe_step({"restart": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "payments"}}) == \
        "restart Deployment payments"
    assert step_timeout({"sleep": 2}) == 2.0
    assert step_timeout({"restart": {"kind": "Deployment"}}) == 120.0
    assert step_timeout({"probe": {"dns": "x"}, "timeout_seconds": 7}) == 7.0


def test_a_check_waits_for_the_checks_it_comes_after() -> None:
    from labctl.checks import Result
    from labctl.runner import waiting_for

    results = {"config": Result(True, "ok"), "broken": Result(False, "no"), "sim-only": Result(None, "n/a")}
    assert waiting_for(["config"], results) is None
    assert waiting_for(["config", "broken"], results) == Result(False, "not tried until broken passes")
    assert waiting_for(["sim-only"], results) == Result(None, "not tried: sim-only cannot be verified here")
