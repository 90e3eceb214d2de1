"""The operator's pure functions: validation, the children it wants, drift, status and the events it posts."""

from __future__ import annotations

import copy

import pytest

from labctl_operator import model
from labctl_operator.reconcile import needs_attention

pytestmark = pytest.mark.unit


def microservice(**spec) -> dict:
    return {
        "apiVersion": "labctl.dev/v1alpha1",
        "kind": "Microservice",
        "metadata": {"name": "web", "namespace": "shop", "uid": "u-1", "generation": 2},
        "spec": {"image": "labctl.local/hello:1.0", "replicas": 3, "port": 8080, "servicePort": 80, **spec},
    }


def deployment_status(*, replicas=3, updated=3, ready=3, available=3, generation=5, observed=5, spec_replicas=3,
                      conditions=None) -> dict:
    return {"metadata": {"generation": generation}, "spec": {"replicas": spec_replicas},
            "status": {"observedGeneration": observed, "replicas": replicas, "updatedReplicas": updated,
                       "readyReplicas": ready, "availableReplicas": available, "conditions": conditions or []}}


@pytest.mark.parametrize(("image", "pinned"), [
    ("labctl.local/hello:1.0", True),
    ("hello:1.0", True),
    ("registry:5000/team/hello:2.3.1", True),
    ("hello@sha256:" + "a" * 64, True),
    ("hello", False),
    ("hello:latest", False),
    ("registry:5000/hello", False),  # the port is not a tag
    ("registry:5000/hello:latest", False),
])
def test_image_pinned(image, pinned):
    assert model.image_pinned(image) is pinned


def test_validate_accepts_a_good_spec():
    assert model.validate(microservice(probes={"readiness": {"path": "/readyz"}, "liveness": {"path": "/healthz"}})
                          ["spec"]) == []


def test_validate_names_each_problem():
    spec = microservice(image="hello:latest", probes={"readiness": {"path": "/healthz"},
                                                       "liveness": {"path": "/healthz"}},
                        logShipping={"image": "shipper"})["spec"]
    problems = model.validate(spec)
    assert len(problems) == 3
    assert problems[0].startswith("spec.image: hello:latest is not pinned")
    assert problems[1].startswith("spec.logShipping.image: shipper is not pinned")
    assert problems[2].startswith("spec.probes: readiness and liveness both ask /healthz")


@pytest.mark.parametrize("spec", [None, {}, {"image": ""}, {"image": 5}])
def test_validate_survives_a_spec_without_an_image(spec):
    assert model.validate(spec)


def test_desired_deployment_is_owned_selected_and_restricted():
    d = model.desired_deployment(microservice(env=[{"name": "A", "value": "1"}],
                                              probes={"readiness": {"path": "/readyz", "periodSeconds": 5}}))
    meta = d["metadata"]
    assert (meta["name"], meta["namespace"]) == ("web", "shop")
    assert meta["ownerReferences"] == [{"apiVersion": "labctl.dev/v1alpha1", "kind": "Microservice", "name": "web",
                                        "uid": "u-1", "controller": True, "blockOwnerDeletion": True}]
    spec = d["spec"]
    assert spec["replicas"] == 3
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    pod = spec["template"]["spec"]
    assert pod["securityContext"] == {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
    (c,) = pod["containers"]
    assert c["image"] == "labctl.local/hello:1.0" and c["imagePullPolicy"] == "IfNotPresent"
    assert c["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert c["env"] == [{"name": "A", "value": "1"}]
    assert c["readinessProbe"] == {"httpGet": {"path": "/readyz", "port": "http", "scheme": "HTTP"}, "periodSeconds": 5}
    assert "livenessProbe" not in c
    assert c["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                    "capabilities": {"drop": ["ALL"]}}
    assert c["resources"] == model.DEFAULT_RESOURCES
    assert "initContainers" not in pod


def test_resources_override_the_defaults_key_by_key():
    d = model.desired_deployment(microservice(resources={"limits": {"memory": "1Gi"}}))
    assert d["spec"]["template"]["spec"]["containers"][0]["resources"] == {
        "requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"cpu": "500m", "memory": "1Gi"}}
    assert model.DEFAULT_RESOURCES["limits"]["memory"] == "128Mi"  # the defaults themselves are untouched


def test_log_shipping_is_a_native_sidecar_sharing_the_log_volume():
    d = model.desired_deployment(microservice(logShipping={"image": "shipper:1.2", "args": ["--follow"]}))
    pod = d["spec"]["template"]["spec"]
    (sidecar,) = pod["initContainers"]
    assert sidecar["restartPolicy"] == "Always"
    assert sidecar["args"] == ["--follow"]
    assert sidecar["volumeMounts"] == [{"name": "logs", "mountPath": model.LOG_DIR, "readOnly": True}]
    app = pod["containers"][0]
    assert {"name": "logs", "mountPath": model.LOG_DIR} in app["volumeMounts"]
    assert {"name": "LOG_DIR", "value": model.LOG_DIR} in app["env"]
    assert any(v["name"] == "logs" for v in pod["volumes"])


def test_desired_service_targets_the_named_port():
    s = model.desired_service(microservice(servicePort=8081))
    assert s["spec"]["selector"] == {model.OWNER_LABEL: "web"}
    assert s["spec"]["ports"] == [{"name": "http", "port": 8081, "targetPort": "http", "protocol": "TCP"}]
    assert s["metadata"]["ownerReferences"][0]["uid"] == "u-1"


def test_owner_name_and_owned_by():
    child = model.desired_service(microservice())
    assert model.owner_name(child) == "web"
    assert model.owned_by(child, microservice())
    other = microservice()
    other["metadata"]["uid"] = "u-2"  # a Microservice of the same name, created again
    assert not model.owned_by(child, other)
    assert model.owner_name({"metadata": {"ownerReferences": [{"kind": "ReplicaSet", "name": "x"}]}}) is None


def test_drift_ignores_what_the_server_and_others_add():
    desired = model.desired_deployment(microservice(env=[{"name": "A", "value": "1"}]))
    observed = copy.deepcopy(desired)
    observed["metadata"]["resourceVersion"] = "7"
    observed["metadata"]["labels"]["team"] = "shop"
    c = observed["spec"]["template"]["spec"]["containers"][0]
    c["terminationMessagePath"] = "/dev/termination-log"
    c["env"].insert(0, {"name": "ADDED_BY_HAND", "value": "x"})
    observed["spec"]["template"]["spec"]["containers"].append({"name": "debug", "image": "busybox:1"})
    assert model.drift(desired, observed) == []


def test_drift_names_the_changed_fields():
    desired = model.desired_deployment(microservice(env=[{"name": "A", "value": "1"}]))
    observed = copy.deepcopy(desired)
    observed["spec"]["replicas"] = 1
    observed["spec"]["template"]["spec"]["containers"][0]["image"] = "evil:1"
    observed["spec"]["template"]["spec"]["containers"][0]["env"] = []
    assert model.drift(desired, observed) == [
        "spec.replicas",
        "spec.template.spec.containers[name=app].image",
        "spec.template.spec.containers[name=app].env[name=A]",
    ]
    assert model.drift({"a": [1, 2]}, {"a": [1]}) == ["a[1]"]
    assert model.drift({"a": {"b": 1}}, {"a": "x"}) == ["a"]


def test_overlay_replaces_owned_fields_and_keeps_the_rest():
    desired = model.desired_service(microservice())
    observed = copy.deepcopy(desired)
    observed["metadata"].update(resourceVersion="9", managedFields=[{"manager": "kubectl"}])
    observed["spec"]["clusterIP"] = "10.96.0.7"
    observed["spec"]["ports"] = [{"name": "http", "port": 81, "targetPort": "http", "protocol": "TCP"}]
    observed["status"] = {"loadBalancer": {}}
    body = model.overlay(observed, desired)
    assert body["spec"]["ports"] == desired["spec"]["ports"]
    assert body["spec"]["clusterIP"] == "10.96.0.7"
    assert body["metadata"]["resourceVersion"] == "9"
    assert "managedFields" not in body["metadata"] and "status" not in body
    assert observed["spec"]["ports"][0]["port"] == 81  # the input is left alone


@pytest.mark.parametrize(("kw", "done"), [
    ({}, True),
    ({"observed": 4}, False),                                  # the controller has not seen the latest spec
    ({"available": 2}, False),
    ({"updated": 2}, False),                                   # a rollout half-way
    ({"replicas": 5, "updated": 5, "available": 5}, False),    # a scale-down with surplus pods left
    ({"spec_replicas": 1}, False),                             # someone else's replica count
])
def test_rollout_done(kw, done):
    assert model.rollout(deployment_status(**kw), 3).done is done


def test_rollout_reports_a_stuck_rollout():
    stuck = deployment_status(available=1, conditions=[
        {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
         "message": 'ReplicaSet "web-1" has timed out progressing.'}])
    assert model.rollout(stuck, 3).stuck == 'ReplicaSet "web-1" has timed out progressing.'
    assert model.rollout(None, 3) == model.Rollout(3, 0, 0, 0, 0, False, None)


def conditions(status: dict) -> dict:
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


def test_status_ready():
    status = model.build_status(microservice(), deployment_status(), {"kind": "Service"}, None)
    assert conditions(status) == {"Ready": ("True", "Available"), "Progressing": ("False", "Complete"),
                                  "Degraded": ("False", "AsExpected")}
    assert status["observedGeneration"] == 2
    assert (status["replicas"], status["readyReplicas"], status["availableReplicas"]) == (3, 3, 3)
    assert status["selector"] == "labctl.dev/microservice=web"
    assert all(c["observedGeneration"] == 2 for c in status["conditions"])


def test_status_rolling_out_creating_and_stuck():
    rolling = model.build_status(microservice(), deployment_status(available=1), {}, None)
    assert conditions(rolling)["Ready"] == ("False", "RollingOut")
    assert conditions(rolling)["Progressing"] == ("True", "RollingOut")
    creating = model.build_status(microservice(), None, None, None)
    assert conditions(creating)["Ready"] == ("False", "Creating")
    stuck = model.build_status(microservice(), deployment_status(available=1, conditions=[
        {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded", "message": "timed out"}]),
        {}, None)
    assert conditions(stuck) == {"Ready": ("False", "RolloutStuck"), "Progressing": ("False", "RolloutStuck"),
                                 "Degraded": ("True", "RolloutStuck")}


def test_status_problems():
    invalid = model.build_status(microservice(), deployment_status(), {}, model.Problem("InvalidSpec", "bad image"))
    assert conditions(invalid) == {"Ready": ("False", "InvalidSpec"), "Progressing": ("False", "InvalidSpec"),
                                   "Degraded": ("True", "InvalidSpec")}
    assert invalid["readyReplicas"] == 3  # what still runs is still reported
    retrying = model.build_status(microservice(), deployment_status(), {}, model.Problem("Retrying", "API down"))
    assert conditions(retrying) == {"Ready": ("True", "Available"), "Progressing": ("True", "Retrying"),
                                    "Degraded": ("False", "AsExpected")}


def test_merge_status_keeps_transition_times_while_a_condition_holds():
    first = model.merge_status(None, model.build_status(microservice(), deployment_status(), {}, None), "T1")
    assert {c["lastTransitionTime"] for c in first["conditions"]} == {"T1"}
    again = model.merge_status(first, model.build_status(microservice(), deployment_status(), {}, None), "T2")
    assert again == first and not model.status_differs(first, again)
    rolling = model.merge_status(again, model.build_status(microservice(), deployment_status(available=1), {}, None),
                                 "T3")
    times = {c["type"]: c["lastTransitionTime"] for c in rolling["conditions"]}
    assert times == {"Ready": "T3", "Progressing": "T3", "Degraded": "T1"}
    assert model.status_differs(first, rolling)


def test_transitions_post_one_event_per_change():
    ready = model.merge_status(None, model.build_status(microservice(), deployment_status(), {}, None), "T")
    assert model.transitions({}, ready) == [("Normal", "Ready", "3/3 replicas available")]
    assert model.transitions(ready, ready) == []
    invalid = model.build_status(microservice(), None, None, model.Problem("InvalidSpec", "bad image"))
    assert model.transitions(ready, invalid) == [("Warning", "InvalidSpec", "bad image")]
    assert model.transitions(invalid, ready) == [("Normal", "Ready", "3/3 replicas available"),
                                                 ("Normal", "Recovered", "no longer InvalidSpec")]


def test_backoff_doubles_up_to_a_cap():
    assert [model.backoff(n) for n in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    assert model.backoff(0, base=0.5) == 0.5


def test_needs_attention():
    ms = microservice()
    dep, svc = model.desired_deployment(ms), model.desired_service(ms)
    observed = deployment_status()
    dep["status"] = observed["status"]
    dep["metadata"]["generation"] = observed["metadata"]["generation"]
    ms["status"] = model.merge_status(None, model.build_status(ms, dep, svc, None), "T")
    assert not needs_attention(ms, dep, svc)
    assert needs_attention(ms, None, svc)
    drifted = copy.deepcopy(dep)
    drifted["spec"]["replicas"] = 1
    assert needs_attention(ms, drifted, svc)
    stale = copy.deepcopy(ms)
    stale["metadata"]["generation"] = 3
    assert needs_attention(stale, dep, svc)
    invalid = microservice(image="hello:latest")
    invalid["status"] = model.merge_status(None, model.build_status(
        invalid, None, None, model.Problem("InvalidSpec", model.validate(invalid["spec"])[0])), "T")
    assert not needs_attention(invalid, None, None)  # refused, and the status already says why
