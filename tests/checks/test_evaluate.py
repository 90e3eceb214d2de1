"""fetch_keys and evaluate for the object-level check types, on plain dicts."""

from __future__ import annotations

from typing import Any

import pytest

from labctl.checks import NOT_ON_PROVIDER, FetchKey, Result, evaluate, fetch_keys
from labctl.labs import Check

pytestmark = pytest.mark.unit

NS = "lab-x"
DEPLOYMENTS = FetchKey("apps/v1", "Deployment", NS)
SERVICES = FetchKey("v1", "Service", NS)
SLICES = FetchKey("discovery.k8s.io/v1", "EndpointSlice", NS)
PODS = FetchKey("v1", "Pod", NS)
WEB = {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"}
SVC = {"apiVersion": "v1", "kind": "Service", "name": "web"}


def deployment(name: str = "web", **fields: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": NS}, **fields}


def check(type_: str, **fields: Any) -> dict[str, Any]:
    return {"id": "c", "title": "C", "type": type_, "hints": ["h"], **fields}


# -- fetch_keys ---------------------------------------------------------------------------------------------


def test_fetch_keys_of_a_target() -> None:
    assert fetch_keys(check("exists", target=WEB), NS) == {DEPLOYMENTS}


def test_fetch_keys_of_endpoints_include_the_endpoint_slices() -> None:
    assert fetch_keys(check("endpoints", target=SVC, count=1), NS) == {SERVICES, SLICES}


def test_fetch_keys_in_another_namespace() -> None:
    keys = fetch_keys(check("endpoints", target={**SVC, "namespace": "shop"}, count=1), NS)
    assert keys == {FetchKey("v1", "Service", "shop"), FetchKey("discovery.k8s.io/v1", "EndpointSlice", "shop")}


def test_fetch_keys_of_cluster_scoped_kinds_have_no_namespace() -> None:
    crd = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition", "name": "a.example.com"}
    assert fetch_keys(check("exists", target=crd), NS) == {
        FetchKey("apiextensions.k8s.io/v1", "CustomResourceDefinition", None)
    }
    custom = {"apiVersion": "example.com/v1", "kind": "Widget", "name": "w", "scope": "Cluster"}
    assert fetch_keys(check("exists", target=custom), NS) == {FetchKey("example.com/v1", "Widget", None)}


def test_fetch_keys_of_count_and_http() -> None:
    assert fetch_keys(check("count", apiVersion="v1", kind="Pod", min=1), NS) == {PODS}
    assert fetch_keys(check("count", apiVersion="v1", kind="Pod", min=1, namespace="b"), NS) == {
        FetchKey("v1", "Pod", "b")
    }
    assert fetch_keys(check("http", service="web", port=80, path="/"), NS) == set()


def test_fetch_keys_and_evaluate_accept_a_check_object() -> None:
    spec = check("exists", target=WEB)
    c = Check(id="c", title="C", type="exists", hints=["h"], needs_running=False, spec=spec)
    assert fetch_keys(c, NS) == {DEPLOYMENTS}
    assert evaluate(c, {DEPLOYMENTS: [deployment()]}, NS) == Result(True, "Deployment web exists")


# -- dispatch -------------------------------------------------------------------------------------------------


def test_needs_running_is_not_verifiable_where_pods_do_not_run() -> None:
    spec = check("exists", target=WEB, needs="running")
    assert evaluate(spec, {DEPLOYMENTS: [deployment()]}, NS, pods_run=False) == Result(None, NOT_ON_PROVIDER)
    assert evaluate(spec, {DEPLOYMENTS: [deployment()]}, NS, pods_run=True).passed is True
    http = check("http", service="web", port=80, path="/")
    assert evaluate(http, {}, NS, pods_run=False) == Result(
        None, "not verifiable on this provider: pods do not run"
    )
    # Declared-state checks are verifiable everywhere.
    assert evaluate(check("exists", target=WEB), {DEPLOYMENTS: []}, NS, pods_run=False).passed is False


@pytest.mark.parametrize("kind", ["http", "probe", "scenario"])
def test_acting_checks_belong_to_the_runner(kind: str) -> None:
    with pytest.raises(ValueError, match="act on the cluster"):
        evaluate(check(kind, service="web", port=80, path="/"), {}, NS)


def test_unknown_check_type() -> None:
    with pytest.raises(ValueError, match="unknown check type 'prob'"):
        evaluate(check("prob", target=WEB), {}, NS)


def test_a_list_that_was_not_read_is_not_verifiable() -> None:
    result = evaluate(check("exists", target=WEB), {}, NS)
    assert result == Result(None, "not verifiable: Deployment objects (apps/v1) in namespace lab-x could not be read")
    gateway = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass", "name": "traefik"}
    assert evaluate(check("absent", target=gateway), {}, NS) == Result(
        None, "not verifiable: GatewayClass objects (gateway.networking.k8s.io/v1) could not be read"
    )


# -- exists / absent ----------------------------------------------------------------------------------------


def test_exists() -> None:
    spec = check("exists", target=WEB)
    assert evaluate(spec, {DEPLOYMENTS: [deployment("api"), deployment()]}, NS) == Result(
        True, "Deployment web exists"
    )
    assert evaluate(spec, {DEPLOYMENTS: [deployment("api")]}, NS) == Result(
        False, "Deployment web not found in namespace lab-x"
    )
    leaving = deployment(metadata={"name": "web", "deletionTimestamp": "2026-01-01T00:00:00Z"})
    assert evaluate(spec, {DEPLOYMENTS: [leaving]}, NS) == Result(True, "Deployment web exists (it is being deleted)")


def test_exists_of_a_cluster_scoped_object() -> None:
    ns = {"apiVersion": "v1", "kind": "Namespace", "name": "lab-y"}
    assert evaluate(check("exists", target=ns), {FetchKey("v1", "Namespace", None): []}, NS) == Result(
        False, "Namespace lab-y not found"
    )


def test_absent() -> None:
    spec = check("absent", target=WEB)
    assert evaluate(spec, {DEPLOYMENTS: []}, NS) == Result(True, "Deployment web is gone")
    assert evaluate(spec, {DEPLOYMENTS: [deployment()]}, NS) == Result(
        False, "Deployment web still exists (wanted it gone)"
    )
    leaving = deployment(metadata={"name": "web", "deletionTimestamp": "2026-01-01T00:00:00Z"})
    assert evaluate(spec, {DEPLOYMENTS: [leaving]}, NS) == Result(
        False, "Deployment web is being deleted (wanted it gone)"
    )


@pytest.mark.parametrize(
    "objects",
    [[None, "web", 3, {"metadata": "web"}, {"metadata": {"name": ["web"]}}], "not a list", None, {"web": {}}],
)
def test_malformed_lists_are_read_as_holding_no_such_object(objects: Any) -> None:
    assert evaluate(check("exists", target=WEB), {DEPLOYMENTS: objects}, NS).passed is False
    assert evaluate(check("absent", target=WEB), {DEPLOYMENTS: objects}, NS).passed is True


# -- matches ------------------------------------------------------------------------------------------------


def test_matches() -> None:
    obj = deployment(spec={"replicas": 1, "template": {"spec": {"containers": [{"name": "web", "image": "web:1"}]}}})
    ok = check("matches", target=WEB, subset={"spec": {"template": {"spec": {"containers": [{"name": "web"}]}}}})
    assert evaluate(ok, {DEPLOYMENTS: [obj]}, NS) == Result(True, "Deployment web has the expected fields")
    bad = check("matches", target=WEB, subset={"spec": {"replicas": 3}})
    assert evaluate(bad, {DEPLOYMENTS: [obj]}, NS) == Result(False, "Deployment web: spec.replicas is 1 (wanted 3)")
    assert evaluate(bad, {DEPLOYMENTS: []}, NS) == Result(False, "Deployment web not found in namespace lab-x")


# -- expression ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "obj", "result"),
    [
        ({"expr": "spec.replicas", "equals": 2}, {"spec": {"replicas": 2}},
         (True, "Deployment web: spec.replicas is 2")),
        ({"expr": "spec.replicas", "equals": 2}, {"spec": {"replicas": 1}},
         (False, "Deployment web: spec.replicas is 1 (wanted 2)")),
        ({"expr": "spec.replicas", "equals": 2, "message": "one replica is one point of failure"},
         {"spec": {"replicas": 1}},
         (False, "Deployment web: one replica is one point of failure (spec.replicas is 1, wanted 2)")),
        ({"expr": "spec.replicas", "equals": 2}, {"spec": {"replicas": "2"}},
         (False, "Deployment web: spec.replicas is '2' (wanted 2)")),
        ({"expr": "spec.replicas", "equals": 2}, {}, (False, "Deployment web: spec.replicas is null (wanted 2)")),
        ({"expr": "spec.paused", "equals": False}, {"spec": {"paused": 0}},
         (False, "Deployment web: spec.paused is 0 (wanted false)")),
        ({"expr": "length(spec.template.spec.containers) > `1`"},
         {"spec": {"template": {"spec": {"containers": [{}, {}]}}}},
         (True, "Deployment web: length(spec.template.spec.containers) > `1` is true")),
        ({"expr": "spec.template.spec.containers[?name=='web'].image | [0]", "equals": "web:1"},
         {"spec": {"template": {"spec": {"containers": [{"name": "db", "image": "db:1"}, {"name": "web",
                                                                                           "image": "web:1"}]}}}},
         (True, "Deployment web: spec.template.spec.containers[?name=='web'].image | [0] is 'web:1'")),
        # JMESPath truth: empty things and null are false, 0 is true.
        ({"expr": "metadata.labels"}, {"metadata": {"name": "web", "labels": {}}},
         (False, "Deployment web: metadata.labels is {} (wanted a value that is not empty, false or null)")),
        ({"expr": "spec.replicas"}, {"spec": {"replicas": 0}}, (True, "Deployment web: spec.replicas is 0")),
        # Wrong types inside the object: a reason, not an exception.
        ({"expr": "length(spec.template.spec.containers)"}, {"spec": {"template": {"spec": {"containers": 3}}}},
         (False, "Deployment web: length(spec.template.spec.containers) could not be evaluated (In function "
                 "length(), invalid type for value: 3, expected one of: ['string', 'array', 'object'], "
                 "received: \"number\")")),
    ],
)
def test_expression(fields: dict[str, Any], obj: dict[str, Any], result: tuple[bool, str]) -> None:
    obj = {**obj, "metadata": {"name": "web", **obj.get("metadata", {})}}
    assert evaluate(check("expression", target=WEB, **fields), {DEPLOYMENTS: [obj]}, NS) == Result(*result)


# -- condition ----------------------------------------------------------------------------------------------


def conditions(*entries: Any) -> dict[str, Any]:
    return deployment(status={"conditions": list(entries)})


@pytest.mark.parametrize(
    ("fields", "obj", "result"),
    [
        ({"condition": "Available"}, conditions({"type": "Available", "status": "True"}),
         (True, "Deployment web: Available is True")),
        ({"condition": "Available"},
         conditions({"type": "Progressing", "status": "True"},
                    {"type": "Available", "status": "False", "reason": "MinimumReplicasUnavailable",
                     "message": "Deployment does not have minimum availability."}),
         (False, "Deployment web: Available is False (wanted True): MinimumReplicasUnavailable: Deployment does "
                 "not have minimum availability.")),
        ({"condition": "Available", "status": "False"}, conditions({"type": "Available", "status": "False"}),
         (True, "Deployment web: Available is False")),
        ({"condition": "Available"}, conditions(),
         (False, "Deployment web has no Available condition (wanted Available=True)")),
        ({"condition": "Available"}, deployment(status={"conditions": "Available"}),
         (False, "Deployment web has no Available condition (wanted Available=True)")),
        ({"condition": "Available"}, deployment(status=None),
         (False, "Deployment web has no Available condition (wanted Available=True)")),
        ({"condition": "Available"}, conditions("Available", {"type": "Available", "status": True}),
         (False, "Deployment web: Available is true (wanted True)")),
    ],
)
def test_condition(fields: dict[str, Any], obj: dict[str, Any], result: tuple[bool, str]) -> None:
    assert evaluate(check("condition", target=WEB, **fields), {DEPLOYMENTS: [obj]}, NS) == Result(*result)


# -- endpoints ----------------------------------------------------------------------------------------------


def endpoint_slice(service: str, *endpoints: dict[str, Any], family: str = "IPv4") -> dict[str, Any]:
    return {
        "metadata": {"name": f"{service}-{family.lower()}", "labels": {"kubernetes.io/service-name": service}},
        "addressType": family,
        "endpoints": list(endpoints),
    }


def endpoint(pod: str, ip: str, ready: bool | None = True) -> dict[str, Any]:
    conditions = {} if ready is None else {"ready": ready}
    return {"addresses": [ip], "conditions": conditions, "targetRef": {"kind": "Pod", "namespace": NS, "name": pod}}


def test_endpoints_count_ready_pods_of_this_service() -> None:
    slices = [
        endpoint_slice("web", endpoint("web-a", "10.0.0.1"), endpoint("web-b", "10.0.0.2", ready=False)),
        endpoint_slice("web", endpoint("web-c", "10.0.0.3", ready=None), family="IPv4-extra"),
        endpoint_slice("db", endpoint("db-a", "10.0.0.9")),
    ]
    objects = {SERVICES: [deployment("web")], SLICES: slices}
    assert evaluate(check("endpoints", target=SVC, count=2), objects, NS) == Result(
        True, "Service web: 2 ready endpoints, 1 not ready"
    )
    assert evaluate(check("endpoints", target=SVC, count=3), objects, NS) == Result(
        False, "Service web: 2 ready endpoints, 1 not ready (wanted 3)"
    )


def test_endpoints_count_a_dual_stack_pod_once() -> None:
    slices = [
        endpoint_slice("web", endpoint("web-a", "10.0.0.1")),
        endpoint_slice("web", endpoint("web-a", "fd00::1"), family="IPv6"),
    ]
    result = evaluate(check("endpoints", target=SVC, count=1), {SERVICES: [deployment()], SLICES: slices}, NS)
    assert result == Result(True, "Service web: 1 ready endpoint")


def test_endpoints_without_target_refs_count_addresses() -> None:
    slices = [endpoint_slice("web", {"addresses": ["10.0.0.1"]}, {"addresses": ["10.0.0.2"]})]
    result = evaluate(check("endpoints", target=SVC, count=2), {SERVICES: [deployment()], SLICES: slices}, NS)
    assert result == Result(True, "Service web: 2 ready endpoints")


def test_endpoints_zero_wanted_and_errors() -> None:
    spec = check("endpoints", target=SVC, count=3)
    assert evaluate(spec, {SERVICES: [deployment()], SLICES: []}, NS) == Result(
        False, "Service web: 0 ready endpoints (wanted 3)"
    )
    assert evaluate(check("endpoints", target=SVC, count=0), {SERVICES: [deployment()], SLICES: []}, NS) == Result(
        True, "Service web: 0 ready endpoints"
    )
    assert evaluate(spec, {SERVICES: [], SLICES: []}, NS) == Result(False, "Service web not found in namespace lab-x")
    assert evaluate(spec, {SERVICES: [deployment()]}, NS).passed is None


def test_endpoints_with_malformed_slices() -> None:
    slices = [
        {"metadata": {"labels": {"kubernetes.io/service-name": "web"}}, "endpoints": "10.0.0.1"},
        {"metadata": {"labels": "web"}},
        {"metadata": {"labels": {"kubernetes.io/service-name": "web"}},
         "endpoints": [None, {"addresses": "10.0.0.1", "conditions": "ready"}, {"targetRef": "pod"}]},
    ]
    result = evaluate(check("endpoints", target=SVC, count=1), {SERVICES: [deployment()], SLICES: slices}, NS)
    assert result.passed is False and result.reason.startswith("Service web: ")


# -- count --------------------------------------------------------------------------------------------------


def pod(name: str, labels: Any = None, **metadata: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": labels or {}, **metadata}}


PODS_SEEN = [
    pod("web-1", {"app": "web"}),
    pod("web-2", {"app": "web", "tier": "front"}),
    pod("web-3", {"app": "web"}, deletionTimestamp="2026-01-01T00:00:00Z"),
    pod("db-1", {"app": "db"}),
    pod("odd", "app=web"),
    "garbage",
]


@pytest.mark.parametrize(
    ("fields", "result"),
    [
        ({"selector": {"app": "web"}, "equals": 2}, (True, "2 Pods labelled app=web")),
        ({"selector": {"app": "web"}, "equals": 3}, (False, "2 Pods labelled app=web (wanted exactly 3)")),
        ({"selector": {"app": "web"}, "min": 3}, (False, "2 Pods labelled app=web (wanted at least 3)")),
        ({"selector": {"app": "web", "tier": "front"}, "max": 0},
         (False, "1 Pod labelled app=web,tier=front (wanted at most 0)")),
        ({"min": 1, "max": 3}, (False, "4 Pods (wanted between 1 and 3)")),
        ({"min": 4, "max": 4}, (True, "4 Pods")),
        ({"selector": {"app": "none"}, "equals": 0}, (True, "0 Pods labelled app=none")),
    ],
)
def test_count(fields: dict[str, Any], result: tuple[bool, str]) -> None:
    spec = check("count", apiVersion="v1", kind="Pod", **fields)
    assert evaluate(spec, {PODS: PODS_SEEN}, NS) == Result(*result)


def test_count_plural_words() -> None:
    key = FetchKey("networking.k8s.io/v1", "NetworkPolicy", NS)
    spec = check("count", apiVersion="networking.k8s.io/v1", kind="NetworkPolicy", min=3)
    assert evaluate(spec, {key: [pod("a"), pod("b")]}, NS) == Result(False, "2 NetworkPolicies (wanted at least 3)")
    key = FetchKey("networking.k8s.io/v1", "Ingress", NS)
    spec = check("count", apiVersion="networking.k8s.io/v1", kind="Ingress", equals=1)
    assert evaluate(spec, {key: []}, NS) == Result(False, "0 Ingresses (wanted exactly 1)")
