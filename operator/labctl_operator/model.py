"""What a Microservice wants and what its status says, as pure functions on plain dicts.

Nothing here talks to a cluster: the reconciler reads objects, asks these functions what the children should
look like, whether what it observed drifted from that, and what status to report, then writes the answers.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

GROUP = "labctl.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "Microservice"
PLURAL = "microservices"

MANAGER = "labctl-operator"  # the server-side apply field manager, and the managed-by label of the children
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
OWNER_LABEL = "labctl.dev/microservice"
CONTAINER = "app"
LOG_SHIPPER = "log-shipper"
LOG_DIR = "/var/log/app"

DEFAULT_RESOURCES = {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"cpu": "500m", "memory": "128Mi"}}
SIDECAR_RESOURCES = {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"cpu": "100m", "memory": "64Mi"}}
# A rollout that makes no progress for this long is reported as stuck (Degraded) rather than still progressing.
PROGRESS_DEADLINE_SECONDS = 120

# Reasons of a problem that stops the operator from acting on the spec: Degraded=True with this reason.
INVALID_SPEC = "InvalidSpec"
REJECTED = "Rejected"
NAME_TAKEN = "NameTaken"
# A transient API failure: the operator is retrying; what runs keeps running.
RETRYING = "Retrying"

CONDITION_TYPES = ("Ready", "Progressing", "Degraded")


@dataclass(frozen=True)
class Problem:
    """Why the operator could not make the children match the spec: a condition reason and a message."""

    reason: str
    message: str


# -- validation -------------------------------------------------------------------------------------------


def image_pinned(image: str) -> bool:
    """True for a reference with a digest, or a tag other than latest (`repo:1.0`, `host:5000/repo@sha256:...`)."""
    if "@" in image:
        return True
    last = image.rsplit("/", 1)[-1]
    if ":" not in last:
        return False
    return last.rsplit(":", 1)[1] not in ("", "latest")


def validate(spec: Any) -> list[str]:
    """What is wrong with a spec beyond what the CRD schema refuses, in the words of a status message.

    The schema checks types and ranges at admission; these are judgements about meaning it cannot make.
    """
    if not isinstance(spec, dict):
        return ["spec: missing"]
    problems = []
    image = spec.get("image")
    if not isinstance(image, str) or not image:
        problems.append("spec.image: missing")
    elif not image_pinned(image):
        problems.append(f"spec.image: {image} is not pinned (use a version tag or a digest)")
    shipping = spec.get("logShipping")
    if isinstance(shipping, dict):
        sidecar = shipping.get("image")
        if isinstance(sidecar, str) and sidecar and not image_pinned(sidecar):
            problems.append(f"spec.logShipping.image: {sidecar} is not pinned (use a version tag or a digest)")
    probes = spec.get("probes") or {}
    readiness, liveness = probes.get("readiness"), probes.get("liveness")
    if isinstance(readiness, dict) and isinstance(liveness, dict) and readiness.get("path") == liveness.get("path"):
        problems.append(f"spec.probes: readiness and liveness both ask {readiness.get('path')} "
                        "(give each its own question)")
    return problems


# -- the children -----------------------------------------------------------------------------------------


def selector(name: str) -> dict[str, str]:
    """The labels the Deployment selects its pods by and the Service sends traffic to."""
    return {OWNER_LABEL: name}


def selector_string(name: str) -> str:
    return ",".join(f"{k}={v}" for k, v in selector(name).items())


def child_labels(name: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": name, MANAGED_BY_LABEL: MANAGER, OWNER_LABEL: name}


def owner_reference(ms: dict) -> dict:
    """The reference that makes a child belong to its Microservice: deleted with it, never orphaned."""
    meta = ms["metadata"]
    return {"apiVersion": ms.get("apiVersion", API_VERSION), "kind": KIND, "name": meta["name"], "uid": meta["uid"],
            "controller": True, "blockOwnerDeletion": True}


def owner_name(child: dict) -> str | None:
    """The name of the Microservice that controls `child`, or None."""
    for ref in (child.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("kind") == KIND and str(ref.get("apiVersion", "")).startswith(GROUP + "/") and ref.get("controller"):
            return ref.get("name")
    return None


def owned_by(child: dict, ms: dict) -> bool:
    """True when `child` is controlled by this very Microservice (same uid, not an earlier one of that name)."""
    uid = ms["metadata"]["uid"]
    return any(ref.get("uid") == uid and ref.get("controller")
               for ref in (child.get("metadata") or {}).get("ownerReferences") or [])


def _child_meta(ms: dict) -> dict:
    meta = ms["metadata"]
    return {"name": meta["name"], "namespace": meta["namespace"], "labels": child_labels(meta["name"]),
            "ownerReferences": [owner_reference(ms)]}


def _probe(probe: dict) -> dict:
    out: dict[str, Any] = {"httpGet": {"path": probe["path"], "port": "http", "scheme": "HTTP"}}
    for key in ("initialDelaySeconds", "periodSeconds", "failureThreshold"):
        if key in probe:
            out[key] = probe[key]
    return out


def _resources(given: Any, defaults: dict) -> dict:
    out = copy.deepcopy(defaults)
    for section in ("requests", "limits"):
        for key, value in ((given or {}).get(section) or {}).items():
            out[section][key] = value
    return out


def _container_security() -> dict:
    return {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}}


def desired_deployment(ms: dict) -> dict:
    """The Deployment a (valid) Microservice asks for, as a server-side apply body."""
    name = ms["metadata"]["name"]
    spec = ms.get("spec") or {}
    env = [{"name": e["name"], "value": str(e.get("value", ""))} for e in spec.get("env") or []]
    mounts = [{"name": "tmp", "mountPath": "/tmp"}]
    volumes: list[dict] = [{"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}}]
    init_containers = []
    shipping = spec.get("logShipping")
    if shipping:
        if not any(e["name"] == "LOG_DIR" for e in env):
            env.append({"name": "LOG_DIR", "value": LOG_DIR})
        mounts.append({"name": "logs", "mountPath": LOG_DIR})
        volumes.append({"name": "logs", "emptyDir": {"sizeLimit": "64Mi"}})
        sidecar: dict[str, Any] = {
            "name": LOG_SHIPPER,
            "image": shipping["image"],
            "imagePullPolicy": "IfNotPresent",
            # restartPolicy Always on an init container makes it a native sidecar: started before the app,
            # kept running beside it, stopped after it, so the last log lines are shipped too.
            "restartPolicy": "Always",
            "volumeMounts": [{"name": "logs", "mountPath": LOG_DIR, "readOnly": True}],
            "resources": copy.deepcopy(SIDECAR_RESOURCES),
            "securityContext": _container_security(),
        }
        if shipping.get("args"):
            sidecar["args"] = list(shipping["args"])
        init_containers.append(sidecar)
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": spec["image"],
        # Lab images live on the nodes and in no registry; a pinned tag never needs a fresh pull.
        "imagePullPolicy": "IfNotPresent",
        "ports": [{"name": "http", "containerPort": spec.get("port", 8080), "protocol": "TCP"}],
        "resources": _resources(spec.get("resources"), DEFAULT_RESOURCES),
        "securityContext": _container_security(),
        "volumeMounts": mounts,
    }
    if env:
        container["env"] = env
    probes = spec.get("probes") or {}
    if probes.get("readiness"):
        container["readinessProbe"] = _probe(probes["readiness"])
    if probes.get("liveness"):
        container["livenessProbe"] = _probe(probes["liveness"])
    pod: dict[str, Any] = {
        "automountServiceAccountToken": False,  # the app does not call the Kubernetes API
        "enableServiceLinks": False,
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [container],
        "volumes": volumes,
    }
    if init_containers:
        pod["initContainers"] = init_containers
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _child_meta(ms),
        "spec": {
            "replicas": spec.get("replicas", 1),
            "revisionHistoryLimit": 3,
            "progressDeadlineSeconds": PROGRESS_DEADLINE_SECONDS,
            "selector": {"matchLabels": selector(name)},
            "template": {
                "metadata": {"labels": child_labels(name),
                             "annotations": {"kubectl.kubernetes.io/default-container": CONTAINER}},
                "spec": pod,
            },
        },
    }


def desired_service(ms: dict) -> dict:
    """The Service in front of the Microservice's pods, as a server-side apply body."""
    spec = ms.get("spec") or {}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _child_meta(ms),
        "spec": {
            "type": "ClusterIP",
            "selector": selector(ms["metadata"]["name"]),
            "ports": [{"name": "http", "port": spec.get("servicePort", 80), "targetPort": "http", "protocol": "TCP"}],
        },
    }


# -- drift ------------------------------------------------------------------------------------------------


def drift(desired: Any, observed: Any, path: str = "") -> list[str]:
    """The paths where `observed` does not hold what `desired` says (fields `desired` leaves out are ignored).

    Lists of named items (containers, env, ports) are matched by name, owner references by uid, other lists by
    position, so a field someone else added is not drift: server-side apply would leave it there anyway.
    """
    if isinstance(desired, dict):
        if not isinstance(observed, dict):
            return [path or "."]
        found = []
        for key, value in desired.items():
            found += drift(value, observed.get(key), f"{path}.{key}" if path else key)
        return found
    if isinstance(desired, list):
        if not isinstance(observed, list):
            return [path]
        found = []
        for i, item in enumerate(desired):
            key = _list_key(item)
            if key is not None:
                match = next((o for o in observed if isinstance(o, dict) and o.get(key) == item[key]), None)
                where = f"{path}[{key}={item[key]}]"
            else:
                match = observed[i] if i < len(observed) else None
                where = f"{path}[{i}]"
            found += drift(item, match, where)
        return found
    return [] if desired == observed else [path]


def overlay(observed: dict, desired: dict) -> dict:
    """`observed` with every field `desired` names set to the desired value (lists replaced whole): a body to
    replace the object with, keeping what others own elsewhere and the resourceVersion it was read at."""
    out = copy.deepcopy(observed)
    out.get("metadata", {}).pop("managedFields", None)
    out.pop("status", None)

    def put(target: dict, wanted: dict) -> None:
        for key, value in wanted.items():
            if isinstance(value, dict) and isinstance(target.get(key), dict):
                put(target[key], value)
            else:
                target[key] = copy.deepcopy(value)

    put(out, desired)
    return out


def _list_key(item: Any) -> str | None:
    if isinstance(item, dict):
        for key in ("name", "uid"):
            if isinstance(item.get(key), str):
                return key
    return None


# -- status -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rollout:
    """How far the Deployment is from what it was asked."""

    wanted: int
    replicas: int
    updated: int
    ready: int
    available: int
    done: bool
    stuck: str | None  # the Deployment's message when its progress deadline passed

    def summary(self) -> str:
        text = f"{self.available}/{self.wanted} replicas available"
        if not self.done and (self.updated != self.wanted or self.replicas != self.wanted):
            text += f", {self.updated} updated of {self.replicas} pods"
        return text


def rollout(deployment: dict | None, wanted: int) -> Rollout:
    """Read a Deployment's status as the controllers write it."""
    if not deployment:
        return Rollout(wanted, 0, 0, 0, 0, False, None)
    status = deployment.get("status") or {}
    meta = deployment.get("metadata") or {}
    spec_replicas = (deployment.get("spec") or {}).get("replicas", 1)
    replicas = int(status.get("replicas") or 0)
    updated = int(status.get("updatedReplicas") or 0)
    ready = int(status.get("readyReplicas") or 0)
    available = int(status.get("availableReplicas") or 0)
    fresh = int(status.get("observedGeneration") or 0) >= int(meta.get("generation") or 0)
    # As the Deployment controller judges "complete": every pod runs the latest template, as many pods as asked
    # (a scale-down is not done while surplus pods remain), and all of them available.
    done = (fresh and spec_replicas == wanted and updated == wanted and replicas == wanted
            and available >= wanted)
    stuck = None
    for c in status.get("conditions") or []:
        if c.get("type") == "Progressing" and c.get("status") == "False" and c.get("reason") == "ProgressDeadlineExceeded":
            stuck = c.get("message") or "the rollout made no progress"
    return Rollout(wanted, replicas, updated, ready, available, done, stuck)


def _condition(kind: str, status: bool, reason: str, message: str, generation: int) -> dict:
    return {"type": kind, "status": "True" if status else "False", "reason": reason, "message": message,
            "observedGeneration": generation}


def build_status(ms: dict, deployment: dict | None, service: dict | None, problem: Problem | None) -> dict:
    """The status a Microservice should carry now (conditions without transition times; see `merge_status`)."""
    meta = ms["metadata"]
    name = meta["name"]
    generation = int(meta.get("generation") or 0)
    wanted = (ms.get("spec") or {}).get("replicas", 1)
    state = rollout(deployment, wanted)
    status: dict[str, Any] = {
        "observedGeneration": generation,
        "replicas": state.replicas,
        "readyReplicas": state.ready,
        "availableReplicas": state.available,
        "selector": selector_string(name),
    }
    if problem is not None and problem.reason != RETRYING:
        conditions = [
            _condition("Ready", False, problem.reason, problem.message, generation),
            _condition("Progressing", False, problem.reason, "fix the spec; what runs keeps running", generation),
            _condition("Degraded", True, problem.reason, problem.message, generation),
        ]
    elif state.stuck:
        message = f"Deployment {name}: {state.stuck}"
        conditions = [
            _condition("Ready", False, "RolloutStuck", f"{state.summary()}; {message}", generation),
            _condition("Progressing", False, "RolloutStuck", message, generation),
            _condition("Degraded", True, "RolloutStuck", message, generation),
        ]
    else:
        ready = state.done and service is not None
        if ready:
            readiness = _condition("Ready", True, "Available", state.summary(), generation)
        elif deployment is None or service is None:
            missing = " and ".join(k for k, o in (("Deployment", deployment), ("Service", service)) if o is None)
            readiness = _condition("Ready", False, "Creating", f"{missing} {name} not created yet", generation)
        else:
            readiness = _condition("Ready", False, "RollingOut", state.summary(), generation)
        if problem is not None:
            progressing = _condition("Progressing", True, RETRYING, problem.message, generation)
        elif ready:
            progressing = _condition("Progressing", False, "Complete", state.summary(), generation)
        else:
            progressing = _condition("Progressing", True, "RollingOut", state.summary(), generation)
        conditions = [readiness, progressing, _condition("Degraded", False, "AsExpected", "", generation)]
    status["conditions"] = conditions
    return status


def merge_status(old: dict | None, new: dict, now: str) -> dict:
    """`new` with each condition's lastTransitionTime: kept from `old` while its status is unchanged, else now."""
    before = {c.get("type"): c for c in (old or {}).get("conditions") or [] if isinstance(c, dict)}
    merged = copy.deepcopy(new)
    for c in merged.get("conditions", []):
        prior = before.get(c["type"])
        if prior and prior.get("status") == c["status"] and prior.get("lastTransitionTime"):
            c["lastTransitionTime"] = prior["lastTransitionTime"]
        else:
            c["lastTransitionTime"] = now
    return merged


def condition(status: dict | None, kind: str) -> dict | None:
    """The condition of that type in a status, or None."""
    for c in (status or {}).get("conditions") or []:
        if isinstance(c, dict) and c.get("type") == kind:
            return c
    return None


def status_differs(old: dict | None, new: dict) -> bool:
    """True when writing `new` would change what `old` says (fields outside `new` are not compared)."""
    old = old or {}
    return any(old.get(key) != value for key, value in new.items())


def transitions(old: dict | None, new: dict) -> list[tuple[str, str, str]]:
    """Events (type, reason, message) worth posting for the change from `old` to `new` status.

    A condition that keeps its status and reason posts nothing, so a resync of a healthy object is silent.
    """
    events = []
    for kind in ("Ready", "Degraded"):
        before, after = condition(old, kind), condition(new, kind)
        if after is None:
            continue
        same = before is not None and (before.get("status"), before.get("reason")) == (after["status"], after["reason"])
        if same:
            continue
        if kind == "Ready" and after["status"] == "True":
            events.append(("Normal", "Ready", after["message"]))
        elif kind == "Degraded" and after["status"] == "True":
            events.append(("Warning", after["reason"], after["message"]))
        elif kind == "Degraded" and before is not None and before.get("status") == "True":
            events.append(("Normal", "Recovered", f"no longer {before.get('reason')}"))
    return events


# -- retrying ---------------------------------------------------------------------------------------------


def backoff(retry: int, *, base: float = 1.0, cap: float = 30.0) -> float:
    """Seconds to wait before retry number `retry` (0-based): 1, 2, 4, ... capped, so a sick API is not hammered."""
    return min(cap, base * (2 ** max(0, retry)))
