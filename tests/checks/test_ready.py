"""The `ready` check for each workload kind, on status blocks as the controllers write them."""

from __future__ import annotations

from typing import Any

import pytest

from labctl.checks import FetchKey, Result, evaluate

pytestmark = pytest.mark.unit

NS = "lab-x"


def ready(kind: str, obj: dict[str, Any], replicas: int | None = None) -> Result:
    api = {"Job": "batch/v1"}.get(kind, "apps/v1")
    spec: dict[str, Any] = {
        "id": "r", "title": "R", "type": "ready", "hints": ["h"],
        "target": {"apiVersion": api, "kind": kind, "name": "web"},
    }
    if replicas is not None:
        spec["replicas"] = replicas
    obj = {**obj, "metadata": {"name": "web", **obj.get("metadata", {})}}
    return evaluate(spec, {FetchKey(api, kind, NS): [obj]}, NS)


def workload(generation: int = 2, observed: int | None = 2, spec_replicas: Any = 3, **status: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {"metadata": {"generation": generation}, "spec": {}, "status": dict(status)}
    if spec_replicas is not None:
        obj["spec"]["replicas"] = spec_replicas
    if observed is not None:
        obj["status"]["observedGeneration"] = observed
    return obj


# -- Deployment -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("obj", "replicas", "result"),
    [
        (workload(availableReplicas=3, updatedReplicas=3, replicas=3), None,
         (True, "Deployment web: 3/3 replicas available")),
        (workload(availableReplicas=1, updatedReplicas=3, replicas=3), None,
         (False, "Deployment web: 1/3 replicas available (wanted 3)")),
        (workload(), None, (False, "Deployment web: 0/3 replicas available (wanted 3)")),
        # spec.replicas defaults to 1.
        (workload(spec_replicas=None, availableReplicas=1, updatedReplicas=1), None,
         (True, "Deployment web: 1/1 replicas available")),
        (workload(spec_replicas=None), None, (False, "Deployment web: 0/1 replicas available (wanted 1)")),
        # The check's own replicas: at least that many, whatever the Deployment asks for.
        (workload(spec_replicas=2, availableReplicas=2, updatedReplicas=2), 3,
         (False, "Deployment web: 2/2 replicas available (wanted 3)")),
        (workload(spec_replicas=3, availableReplicas=3, updatedReplicas=3), 2,
         (True, "Deployment web: 3/3 replicas available")),
        # A status written for an older spec says nothing about this one.
        (workload(generation=3, observed=2, availableReplicas=3, updatedReplicas=3), None,
         (False, "Deployment web: the controller has not caught up with the latest change yet (generation 3, "
                 "observed 2)")),
        (workload(generation=1, observed=None, availableReplicas=3), None,
         (False, "Deployment web: the controller has not caught up with the latest change yet (generation 1, "
                 "observed 0)")),
        # A stuck rollout: the old pods are still available, the new ones are not.
        (workload(spec_replicas=2, availableReplicas=2, updatedReplicas=1), None,
         (False, "Deployment web: rollout in progress: 1/2 replicas run the latest pod template")),
        (workload(spec_replicas=1, availableReplicas=1, updatedReplicas=1, replicas=2), None,
         (False, "Deployment web: rollout in progress: 1 old replica still running (the new ones are not "
                 "available yet)")),
        (workload(spec_replicas=0), None, (True, "Deployment web: 0/0 replicas available")),
        # Wrong types read as nothing.
        (workload(availableReplicas="3", updatedReplicas=3), None,
         (False, "Deployment web: 0/3 replicas available (wanted 3)")),
        (workload(spec_replicas="3", availableReplicas=1, updatedReplicas=1), None,
         (True, "Deployment web: 1/1 replicas available")),
        ({"metadata": {"generation": "2"}, "spec": "x", "status": ["available"]}, None,
         (False, "Deployment web: 0/1 replicas available (wanted 1)")),
        ({"metadata": {}, "status": {"availableReplicas": True}}, None,
         (False, "Deployment web: 0/1 replicas available (wanted 1)")),
    ],
)
def test_deployment(obj: dict[str, Any], replicas: int | None, result: tuple[bool, str]) -> None:
    assert ready("Deployment", obj, replicas) == Result(*result)


# -- StatefulSet ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("obj", "replicas", "result"),
    [
        (workload(readyReplicas=3), None, (True, "StatefulSet web: 3/3 replicas ready")),
        (workload(readyReplicas=2), None, (False, "StatefulSet web: 2/3 replicas ready (wanted 3)")),
        (workload(spec_replicas=None), None, (False, "StatefulSet web: 0/1 replicas ready (wanted 1)")),
        (workload(readyReplicas=3), 4, (False, "StatefulSet web: 3/3 replicas ready (wanted 4)")),
        (workload(generation=5, observed=4, readyReplicas=3), None,
         (False, "StatefulSet web: the controller has not caught up with the latest change yet (generation 5, "
                 "observed 4)")),
        (workload(readyReplicas=3, updatedReplicas=1, currentRevision="web-a", updateRevision="web-b"), None,
         (False, "StatefulSet web: rollout in progress: 1/3 replicas run the latest pod template")),
        (workload(readyReplicas=3, updatedReplicas=3, currentRevision="web-a", updateRevision="web-b"), None,
         (True, "StatefulSet web: 3/3 replicas ready")),
    ],
)
def test_statefulset(obj: dict[str, Any], replicas: int | None, result: tuple[bool, str]) -> None:
    assert ready("StatefulSet", obj, replicas) == Result(*result)


# -- DaemonSet ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("obj", "replicas", "result"),
    [
        (workload(desiredNumberScheduled=2, numberReady=2, updatedNumberScheduled=2), None,
         (True, "DaemonSet web: 2/2 pods ready")),
        (workload(desiredNumberScheduled=2, numberReady=1, updatedNumberScheduled=2), None,
         (False, "DaemonSet web: 1/2 pods ready (wanted 2)")),
        (workload(desiredNumberScheduled=2, numberReady=2, updatedNumberScheduled=1), None,
         (False, "DaemonSet web: rollout in progress: 1/2 pods run the latest pod template")),
        (workload(desiredNumberScheduled=1, numberReady=1, updatedNumberScheduled=1), 2,
         (False, "DaemonSet web: 1/1 pods ready (wanted 2)")),
        # No status yet: the controller has not seen it, so "0 of 0 ready" must not pass.
        ({"metadata": {"generation": 1}}, None,
         (False, "DaemonSet web: the controller has not caught up with the latest change yet (generation 1, "
                 "observed 0)")),
    ],
)
def test_daemonset(obj: dict[str, Any], replicas: int | None, result: tuple[bool, str]) -> None:
    assert ready("DaemonSet", obj, replicas) == Result(*result)


# -- Job ------------------------------------------------------------------------------------------------------


def job(completions: int | None = 1, succeeded: int | None = None, *conditions: dict[str, Any]) -> dict[str, Any]:
    obj: dict[str, Any] = {"spec": {}, "status": {"conditions": list(conditions)}}
    if completions is not None:
        obj["spec"]["completions"] = completions
    if succeeded is not None:
        obj["status"]["succeeded"] = succeeded
    return obj


COMPLETE = {"type": "Complete", "status": "True"}


@pytest.mark.parametrize(
    ("obj", "replicas", "result"),
    [
        (job(1, 1, COMPLETE), None, (True, "Job web completed (1 pods succeeded)")),
        (job(3, 1), None, (False, "Job web: 1/3 pods succeeded (wanted 3)")),
        (job(None, 0), None, (False, "Job web: 0 pods succeeded (wanted 1)")),
        (job(1, 1), None, (False, "Job web: 1 pods succeeded, but the Job is not marked Complete yet")),
        (job(1, 1, {"type": "Complete", "status": "False"}), None,
         (False, "Job web: 1 pods succeeded, but the Job is not marked Complete yet")),
        (job(2, 2, COMPLETE), 3, (False, "Job web: 2/2 pods succeeded (wanted 3)")),
        (job(1, 0, {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                    "message": "Job has reached the specified backoff limit"}), None,
         (False, "Job web failed: BackoffLimitExceeded: Job has reached the specified backoff limit")),
        (job(1, 0, {"type": "Failed", "status": "True"}), None, (False, "Job web failed")),
        ({"spec": [], "status": "done"}, None, (False, "Job web: 0 pods succeeded (wanted 1)")),
    ],
)
def test_job(obj: dict[str, Any], replicas: int | None, result: tuple[bool, str]) -> None:
    assert ready("Job", obj, replicas) == Result(*result)


def test_ready_of_a_missing_workload() -> None:
    spec = {"id": "r", "title": "R", "type": "ready", "hints": ["h"],
            "target": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"}}
    assert evaluate(spec, {FetchKey("apps/v1", "Deployment", NS): []}, NS) == Result(
        False, "Deployment web not found in namespace lab-x"
    )


def test_ready_of_a_kind_it_cannot_read() -> None:
    spec = {"id": "r", "title": "R", "type": "ready", "hints": ["h"],
            "target": {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web"}}
    result = evaluate(spec, {FetchKey("apps/v1", "ReplicaSet", NS): [{"metadata": {"name": "web"}}]}, NS)
    assert result == Result(False, "ReplicaSet web: a ready check reads a Deployment, StatefulSet, DaemonSet or Job")
