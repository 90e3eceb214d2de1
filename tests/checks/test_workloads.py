"""probes, resources, security and image-pinned: checks on the pod template of any workload kind."""

from __future__ import annotations

from typing import Any

import pytest

from labctl.checks import FetchKey, Result, evaluate

pytestmark = pytest.mark.unit

NS = "lab-x"
API = {"Deployment": "apps/v1", "StatefulSet": "apps/v1", "DaemonSet": "apps/v1", "Job": "batch/v1",
       "CronJob": "batch/v1", "Pod": "v1"}


def run(type_: str, pod: Any, kind: str = "Deployment", **fields: Any) -> Result:
    """Evaluate a check of `type_` on a workload of `kind` whose pod spec is `pod`."""
    if kind == "Pod":
        obj = {"spec": pod}
    elif kind == "CronJob":
        obj = {"spec": {"jobTemplate": {"spec": {"template": {"spec": pod}}}}}
    else:
        obj = {"spec": {"template": {"spec": pod}}}
    obj["metadata"] = {"name": "web"}
    spec = {"id": "c", "title": "C", "type": type_, "hints": ["h"],
            "target": {"apiVersion": API[kind], "kind": kind, "name": "web"}, **fields}
    return evaluate(spec, {FetchKey(API[kind], kind, NS): [obj]}, NS)


READINESS = {"httpGet": {"path": "/readyz", "port": "http"}}
LIVENESS = {"httpGet": {"path": "/healthz", "port": "http"}}


def container(name: str = "web", **fields: Any) -> dict[str, Any]:
    return {"name": name, "image": f"{name}:1.0", **fields}


# -- where the pod template is --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(API))
def test_every_workload_kind_finds_its_pod_template(kind: str) -> None:
    pod = {"containers": [container(readinessProbe=READINESS, livenessProbe=LIVENESS)]}
    assert run("probes", pod, kind) == Result(
        True, f"{kind} web: container web has distinct readiness and liveness probes"
    )


@pytest.mark.parametrize(
    ("kind", "obj", "reason"),
    [
        ("Deployment", {"spec": {}}, "Deployment web has no pod template (spec.template.spec is missing)"),
        ("Deployment", {"spec": {"template": "x"}},
         "Deployment web has no pod template (spec.template.spec is missing)"),
        ("CronJob", {"spec": {"template": {"spec": {}}}},
         "CronJob web has no pod template (spec.jobTemplate.spec.template.spec is missing)"),
        ("Pod", {"spec": None}, "Pod web has no pod template (spec is missing)"),
        ("Deployment", {}, "Deployment web has no pod template (spec.template.spec is missing)"),
    ],
)
def test_a_workload_without_a_pod_template(kind: str, obj: dict[str, Any], reason: str) -> None:
    obj = {**obj, "metadata": {"name": "web"}}
    spec = {"id": "c", "title": "C", "type": "resources", "hints": ["h"],
            "target": {"apiVersion": API[kind], "kind": kind, "name": "web"}}
    assert evaluate(spec, {FetchKey(API[kind], kind, NS): [obj]}, NS) == Result(False, reason)


@pytest.mark.parametrize("type_", ["probes", "resources", "security", "image-pinned"])
@pytest.mark.parametrize("containers", [[], "web", None, [None, "web"], {"name": "web"}])
def test_no_usable_containers(type_: str, containers: Any) -> None:
    assert run(type_, {"containers": containers}) == Result(False, "Deployment web has no containers")


@pytest.mark.parametrize("type_", ["probes", "resources", "security", "image-pinned"])
def test_a_named_container_that_is_not_there(type_: str) -> None:
    pod = {"containers": [container("web"), container("proxy")]}
    assert run(type_, pod, container="api") == Result(
        False, "Deployment web has no container named api (containers: web, proxy)"
    )


def test_a_missing_workload() -> None:
    spec = {"id": "c", "title": "C", "type": "probes", "hints": ["h"],
            "target": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"}}
    assert evaluate(spec, {FetchKey("apps/v1", "Deployment", NS): []}, NS) == Result(
        False, "Deployment web not found in namespace lab-x"
    )


# -- probes ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("containers", "fields", "result"),
    [
        ([container(readinessProbe=READINESS, livenessProbe=LIVENESS)], {},
         (True, "Deployment web: container web has distinct readiness and liveness probes")),
        ([container(livenessProbe=LIVENESS)], {}, (False, "Deployment web: container web has no readinessProbe")),
        ([container(readinessProbe=READINESS)], {}, (False, "Deployment web: container web has no livenessProbe")),
        ([container()], {}, (False, "Deployment web: container web has no readinessProbe and no livenessProbe")),
        ([container(readinessProbe=READINESS, livenessProbe=dict(READINESS))], {},
         (False, "Deployment web: container web has identical readinessProbe and livenessProbe (they answer "
                 "different questions: can it serve now, is it stuck)")),
        ([container(readinessProbe={}, livenessProbe=LIVENESS)], {},
         (False, "Deployment web: container web has no readinessProbe")),
        ([container(readinessProbe="/readyz", livenessProbe=LIVENESS)], {},
         (False, "Deployment web: container web has no readinessProbe")),
        ([container(readinessProbe=READINESS, livenessProbe=LIVENESS), container("proxy")], {},
         (False, "Deployment web: container proxy has no readinessProbe and no livenessProbe")),
        ([container(readinessProbe=READINESS, livenessProbe=LIVENESS), container("proxy")], {"container": "web"},
         (True, "Deployment web: container web has distinct readiness and liveness probes")),
        ([container(readinessProbe=READINESS, livenessProbe=LIVENESS),
          container("proxy", readinessProbe=READINESS, livenessProbe={"tcpSocket": {"port": 15000}})], {},
         (True, "Deployment web: all 2 containers have distinct readiness and liveness probes")),
        ([container(readinessProbe=READINESS, livenessProbe=LIVENESS), {"image": "x:1"}], {},
         (False, "Deployment web: container #1 has no readinessProbe and no livenessProbe")),
    ],
)
def test_probes(containers: list[Any], fields: dict[str, Any], result: tuple[bool, str]) -> None:
    assert run("probes", {"containers": containers}, **fields) == Result(*result)


def test_probes_ignore_init_containers() -> None:
    pod = {"initContainers": [container("migrate")],
           "containers": [container(readinessProbe=READINESS, livenessProbe=LIVENESS)]}
    assert run("probes", pod).passed is True


# -- resources ------------------------------------------------------------------------------------------------

FULL = {"requests": {"cpu": "50m", "memory": "32Mi"}, "limits": {"cpu": "250m", "memory": "64Mi"}}


@pytest.mark.parametrize(
    ("pod", "fields", "result"),
    [
        ({"containers": [container(resources=FULL)]}, {},
         (True, "Deployment web: container web has cpu and memory requests and limits")),
        ({"containers": [container(resources={"requests": {"cpu": 1, "memory": "1Gi"},
                                              "limits": {"cpu": 2, "memory": "1Gi"}})]}, {},
         (True, "Deployment web: container web has cpu and memory requests and limits")),
        ({"containers": [container()]}, {},
         (False, "Deployment web: container web sets no requests.cpu, requests.memory, limits.cpu, limits.memory")),
        ({"containers": [container(resources={"requests": {"cpu": "50m", "memory": "32Mi"}, "limits": {"cpu": ""}})]},
         {}, (False, "Deployment web: container web sets no limits.cpu, limits.memory")),
        ({"containers": [container(resources="small")]}, {},
         (False, "Deployment web: container web sets no requests.cpu, requests.memory, limits.cpu, limits.memory")),
        ({"initContainers": [container("migrate")], "containers": [container(resources=FULL)]}, {},
         (False, "Deployment web: init container migrate sets no requests.cpu, requests.memory, limits.cpu, "
                 "limits.memory")),
        ({"initContainers": [container("migrate")], "containers": [container(resources=FULL)]}, {"container": "web"},
         (True, "Deployment web: container web has cpu and memory requests and limits")),
        ({"initContainers": [container("migrate", resources=FULL)], "containers": [container(resources=FULL)]}, {},
         (True, "Deployment web: all 2 containers have cpu and memory requests and limits")),
    ],
)
def test_resources(pod: dict[str, Any], fields: dict[str, Any], result: tuple[bool, str]) -> None:
    assert run("resources", pod, **fields) == Result(*result)


# -- image-pinned ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("images", "result"),
    [
        (["web:1.0"], (True, "Deployment web: every image is pinned")),
        (["labctl.local/hello:1.0"], (True, "Deployment web: every image is pinned")),
        (["registry:5000/team/web:2024.1"], (True, "Deployment web: every image is pinned")),
        (["web@sha256:" + "a" * 64], (True, "Deployment web: every image is pinned")),
        (["web:latest@sha256:" + "a" * 64], (True, "Deployment web: every image is pinned")),
        (["web:latest"], (False, "Deployment web: container web image web:latest uses the tag 'latest' (pin a "
                                 "version such as web:1.0)")),
        (["web"], (False, "Deployment web: container web image web has no tag, which means 'latest' (pin a version "
                          "such as web:1.0)")),
        (["registry:5000/web"], (False, "Deployment web: container web image registry:5000/web has no tag, which "
                                        "means 'latest' (pin a version such as registry:5000/web:1.0)")),
        ([""], (False, "Deployment web: container web has no image")),
        ([None], (False, "Deployment web: container web has no image")),
        ([["web:1.0"]], (False, "Deployment web: container web has no image")),
    ],
)
def test_image_pinned(images: list[Any], result: tuple[bool, str]) -> None:
    pod = {"containers": [{"name": "web", "image": image} for image in images]}
    assert run("image-pinned", pod) == Result(*result)


def test_image_pinned_reads_init_containers_and_every_problem() -> None:
    pod = {"initContainers": [{"name": "migrate", "image": "migrate:latest"}],
           "containers": [{"name": "web", "image": "web:1.0"}, {"name": "proxy", "image": "proxy"}]}
    assert run("image-pinned", pod) == Result(
        False,
        "Deployment web: init container migrate image migrate:latest uses the tag 'latest' (pin a version such as "
        "migrate:1.0); container proxy image proxy has no tag, which means 'latest' (pin a version such as proxy:1.0)",
    )
    assert run("image-pinned", pod, container="web").passed is True


# -- security -------------------------------------------------------------------------------------------------

RESTRICTED_POD = {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
RESTRICTED_CONTAINER = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                        "capabilities": {"drop": ["ALL"]}}


def secure(pod_context: Any = None, *contexts: Any, init: Any = None) -> dict[str, Any]:
    pod: dict[str, Any] = {"containers": [container(f"c{i}", securityContext=c) for i, c in enumerate(contexts)]}
    if pod_context is not None:
        pod["securityContext"] = pod_context
    if init is not None:
        pod["initContainers"] = [container("init", securityContext=init)]
    return pod


def test_security_all_requirements_by_default() -> None:
    assert run("security", secure(RESTRICTED_POD, RESTRICTED_CONTAINER)) == Result(
        True,
        "Deployment web: container c0 meets runAsNonRoot, noPrivilegeEscalation, readOnlyRootFilesystem, "
        "dropAllCapabilities, seccompRuntimeDefault",
    )
    assert run("security", secure(None, {})) == Result(
        False,
        "Deployment web: container c0: runAsNonRoot is not true (set it on the pod or the container), "
        "allowPrivilegeEscalation is not false (set it on the container), readOnlyRootFilesystem is not true (set "
        "it on the container), capabilities.drop does not include ALL (set it on the container), seccompProfile "
        "type is unset (wanted RuntimeDefault, on the pod or the container)",
    )


@pytest.mark.parametrize(
    ("require", "pod", "passed", "reason"),
    [
        # runAsNonRoot and seccompProfile are inherited from the pod...
        ("runAsNonRoot", secure({"runAsNonRoot": True}, {}), True, None),
        ("runAsNonRoot", secure(None, {"runAsNonRoot": True}), True, None),
        ("seccompRuntimeDefault", secure({"seccompProfile": {"type": "RuntimeDefault"}}, {}), True, None),
        ("seccompRuntimeDefault", secure(None, {"seccompProfile": {"type": "RuntimeDefault"}}), True, None),
        # ...and a container's own setting overrides the pod's.
        ("runAsNonRoot", secure({"runAsNonRoot": True}, {"runAsNonRoot": False}), False,
         "container c0: runAsNonRoot is not true (set it on the pod or the container)"),
        ("seccompRuntimeDefault",
         secure({"seccompProfile": {"type": "RuntimeDefault"}}, {"seccompProfile": {"type": "Unconfined"}}), False,
         "container c0: seccompProfile type is Unconfined (wanted RuntimeDefault, on the pod or the container)"),
        ("seccompRuntimeDefault", secure({"seccompProfile": {"type": "Localhost"}}, {}), False,
         "container c0: seccompProfile type is Localhost (wanted RuntimeDefault, on the pod or the container)"),
        # Root by user id, wherever it is set.
        ("runAsNonRoot", secure({"runAsNonRoot": True, "runAsUser": 0}, {}), False,
         "container c0: runAsUser is 0, which is root (wanted a non-root user and runAsNonRoot: true)"),
        ("runAsNonRoot", secure({"runAsNonRoot": True, "runAsUser": 0}, {"runAsUser": 10001}), True, None),
        ("runAsNonRoot", secure({"runAsNonRoot": "true"}, {}), False,
         "container c0: runAsNonRoot is not true (set it on the pod or the container)"),
        # The rest exists on containers only: the same field on the pod does not count.
        ("noPrivilegeEscalation", secure({"allowPrivilegeEscalation": False}, {}), False,
         "container c0: allowPrivilegeEscalation is not false (set it on the container)"),
        ("noPrivilegeEscalation", secure(None, {"allowPrivilegeEscalation": False}), True, None),
        ("readOnlyRootFilesystem", secure({"readOnlyRootFilesystem": True}, {}), False,
         "container c0: readOnlyRootFilesystem is not true (set it on the container)"),
        ("readOnlyRootFilesystem", secure(None, {"readOnlyRootFilesystem": True}), True, None),
        ("dropAllCapabilities", secure({"capabilities": {"drop": ["ALL"]}}, {}), False,
         "container c0: capabilities.drop does not include ALL (set it on the container)"),
        ("dropAllCapabilities", secure(None, {"capabilities": {"drop": ["NET_RAW", "ALL"]}}), True, None),
        ("dropAllCapabilities", secure(None, {"capabilities": {"drop": ["all"]}}), False,
         "container c0: capabilities.drop does not include ALL (set it on the container)"),
        ("dropAllCapabilities", secure(None, {"capabilities": {"drop": "ALL"}}), False,
         "container c0: capabilities.drop does not include ALL (set it on the container)"),
        # Wrong types read as unset.
        ("runAsNonRoot", secure("non-root", "strict"), False,
         "container c0: runAsNonRoot is not true (set it on the pod or the container)"),
        # Init containers must comply too.
        ("noPrivilegeEscalation", secure(None, {"allowPrivilegeEscalation": False}, init={}), False,
         "init container init: allowPrivilegeEscalation is not false (set it on the container)"),
        # Every failing container is named.
        ("noPrivilegeEscalation", secure(None, {}, {}), False,
         "container c0: allowPrivilegeEscalation is not false (set it on the container); container c1: "
         "allowPrivilegeEscalation is not false (set it on the container)"),
    ],
)
def test_security_requirement(require: str, pod: dict[str, Any], passed: bool, reason: str | None) -> None:
    result = run("security", pod, require=[require])
    assert result.passed is passed
    if reason is not None:
        assert result.reason == f"Deployment web: {reason}"


def test_security_on_a_named_container_and_a_pod() -> None:
    pod = secure(RESTRICTED_POD, RESTRICTED_CONTAINER, {})
    assert run("security", pod).passed is False
    assert run("security", pod, container="c0").passed is True
    assert run("security", {"securityContext": RESTRICTED_POD, "containers": [
        container(securityContext=RESTRICTED_CONTAINER)]}, "Pod").passed is True
    assert run("security", pod, "CronJob", require=["runAsNonRoot", "seccompRuntimeDefault"]) == Result(
        True, "CronJob web: all 2 containers meet runAsNonRoot, seccompRuntimeDefault"
    )
