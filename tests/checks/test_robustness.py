"""Whatever the API hands over, evaluation gives a Result with a reason: never an exception."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from labctl.checks import FetchKey, HttpResponse, Result, evaluate, evaluate_http, fetch_keys

pytestmark = pytest.mark.unit

NS = "lab-x"
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Field names and values the check types read, so random objects reach the deep branches.
KEYS = st.sampled_from(
    [
        "metadata", "name", "spec", "status", "template", "containers", "initContainers", "securityContext",
        "image", "replicas", "availableReplicas", "updatedReplicas", "readyReplicas", "conditions", "type",
        "endpoints", "addresses", "ready", "labels", "kubernetes.io/service-name", "targetRef", "resources",
        "requests", "limits", "cpu", "memory", "readinessProbe", "livenessProbe", "capabilities", "drop",
        "runAsNonRoot", "runAsUser", "seccompProfile", "observedGeneration", "generation", "jobTemplate",
        "succeeded", "completions", "desiredNumberScheduled", "numberReady", "updatedNumberScheduled",
        "deletionTimestamp", "app", "reason", "message", "currentRevision", "updateRevision",
        "allowPrivilegeEscalation", "readOnlyRootFilesystem", "addressType",
    ]
)
SCALARS = (
    st.none() | st.booleans() | st.integers(-3, 5) | st.floats(allow_nan=True) | st.text(max_size=6)
    | st.sampled_from(["web", "ALL", "True", "False", "RuntimeDefault", "Complete", "Failed", "Available", "1.0",
                       "web:latest", "web:1.0", "10.0.0.1"])
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS | st.text(max_size=4), inner, max_size=5),
    max_leaves=25,
)


@st.composite
def api_objects(draw: st.DrawFn) -> list[Any]:
    objects = draw(st.lists(VALUES, max_size=4))
    # Most lists should hold the object the check names, however broken the rest of it is.
    if draw(st.booleans()):
        obj = draw(st.dictionaries(KEYS, VALUES, max_size=6))
        metadata = obj.get("metadata")
        obj["metadata"] = {**(metadata if isinstance(metadata, dict) else {}), "name": "web"}
        if draw(st.booleans()):
            obj["metadata"]["labels"] = {"kubernetes.io/service-name": "web", "app": "web"}
        objects.insert(draw(st.integers(0, len(objects))), obj)
    return objects


def target(kind: str) -> dict[str, str]:
    api = {"Service": "v1", "Pod": "v1", "Job": "batch/v1", "CronJob": "batch/v1"}.get(kind, "apps/v1")
    return {"apiVersion": api, "kind": kind, "name": "web"}


WORKLOADS = ["Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob", "Pod"]
CHECKS = (
    [{"type": "exists", "target": target("Deployment")}, {"type": "absent", "target": target("Service")}]
    + [{"type": "matches", "target": target("Deployment"),
        "subset": {"spec": {"template": {"spec": {"containers": [{"name": "web", "image": "web:1.0"}]}}},
                   "metadata": {"labels": {"app": "web"}}, "status": None}}]
    + [{"type": "expression", "target": target("Deployment"), "expr": expr, **extra}
       for expr in ["spec.replicas", "length(spec.template.spec.containers)", "sort(metadata.labels.*)",
                    "status.conditions[?type=='Available'].status | [0]", "max_by(items, &x)"]
       for extra in ({}, {"equals": 2}, {"equals": "True", "message": "m"})]
    + [{"type": "condition", "target": target("Deployment"), "condition": "Available"},
       {"type": "condition", "target": target("Job"), "condition": "Complete", "status": "False"}]
    + [{"type": "ready", "target": target(k), **extra}
       for k in ["Deployment", "StatefulSet", "DaemonSet", "Job"] for extra in ({}, {"replicas": 2})]
    + [{"type": "endpoints", "target": target("Service"), "count": n} for n in (0, 1, 2)]
    + [{"type": "count", "apiVersion": "v1", "kind": "Pod", "selector": {"app": "web"}, "min": 1, "max": 2},
       {"type": "count", "apiVersion": "v1", "kind": "Pod", "equals": 1}]
    + [{"type": t, "target": target(k), **extra}
       for t in ["probes", "resources", "security", "image-pinned"] for k in WORKLOADS
       for extra in ({}, {"container": "web"})]
    + [{"type": "security", "target": target("Deployment"), "require": ["runAsNonRoot", "dropAllCapabilities"]}]
)


@FUZZ
@given(check=st.sampled_from(CHECKS), lists=st.lists(api_objects(), min_size=2, max_size=2))
def test_evaluate_never_raises(check: dict[str, Any], lists: list[list[Any]]) -> None:
    spec = {"id": "c", "title": "C", "hints": ["h"], **check}
    keys = sorted(fetch_keys(spec, NS), key=lambda k: k.kind)
    objects = {key: lists[i % 2] for i, key in enumerate(keys)}
    result = evaluate(spec, objects, NS)
    assert isinstance(result, Result)
    assert result.passed in (True, False)
    assert isinstance(result.reason, str) and result.reason


@FUZZ
@given(
    expect=st.fixed_dictionaries(
        {},
        optional={
            "status": st.integers(100, 599),
            "json": st.dictionaries(st.sampled_from(["version", "items[0]", "length(items)", "a.b", "@"]), VALUES,
                                    max_size=3),
            "contains": st.text(min_size=1, max_size=4),
            "max_ms": st.floats(min_value=0.1, max_value=1000),
        },
    ),
    status=st.integers(100, 599),
    body=st.binary(max_size=60) | VALUES.map(lambda v: __import__("json").dumps(v).encode()),
    ms=st.floats(min_value=0, max_value=5000),
)
def test_evaluate_http_never_raises(expect: dict[str, Any], status: int, body: bytes, ms: float) -> None:
    spec = {"id": "h", "title": "H", "type": "http", "hints": ["h"], "service": "web", "port": 80, "path": "/",
            "expect": expect}
    result = evaluate_http(spec, HttpResponse(status=status, body=body, elapsed_ms=ms), None)
    assert result.passed in (True, False) and result.reason.startswith("GET / on Service web:80: ")


def test_fetch_keys_are_hashable_and_distinct_per_namespace() -> None:
    assert len({FetchKey("v1", "Pod", "a"), FetchKey("v1", "Pod", "b"), FetchKey("v1", "Pod", None)}) == 3
