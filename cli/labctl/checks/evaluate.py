"""Evaluating checks on objects already read from the API: pure functions, plain dicts in, a Result out."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import jmespath
import jmespath.exceptions

from labctl.checks import workloads
from labctl.checks.matching import match_subset, show, values_equal
from labctl.checks.model import (
    CHECK_TYPES,
    NOT_ON_PROVIDER,
    FetchKey,
    Result,
    key_namespace,
    needs_running,
    spec_of,
)
from labctl.checks.objects import (
    as_int,
    as_list,
    condition,
    deleting,
    find,
    get,
    items,
    labels_of,
    one_line,
    plural,
)

if TYPE_CHECKING:
    from labctl.labs import Check

Objects = Mapping[FetchKey, list[dict]]

ENDPOINT_SLICE = ("discovery.k8s.io/v1", "EndpointSlice")
SERVICE_NAME_LABEL = "kubernetes.io/service-name"


def fetch_keys(check: Check | Mapping[str, Any], namespace: str) -> set[FetchKey]:
    """The lists `evaluate` reads for this check, so a run can fetch each of them once.

    `namespace` is the lab namespace. `http`, `probe` and `scenario` checks read no list (they send requests).
    """
    spec = spec_of(check)
    kind = spec.get("type")
    if kind in ("http", "probe", "scenario"):
        return set()
    if kind == "count":
        return {_key(spec, namespace)}
    target = _target(spec)
    key = _key(target, namespace)
    if kind == "endpoints":
        return {key, FetchKey(*ENDPOINT_SLICE, key.namespace)}
    return {key}


def evaluate(
    check: Check | Mapping[str, Any],
    objects: Objects,
    namespace: str,
    *,
    pods_run: bool = True,
) -> Result:
    """Evaluate one check on the objects read for it (see `fetch_keys`).

    `objects` maps each FetchKey to every object of that kind in that namespace, as the API lists them.
    A key missing from `objects` means the kind could not be read (its API is not served here, say):
    the check is then not verifiable. Objects with missing fields or wrong types give a failing Result,
    never an exception. `pods_run=False` (a provider whose pods never run) makes `needs: running`
    checks not verifiable. `http`, `probe` and `scenario` checks act on the cluster (see `labctl.runner`); an unknown type is a
    ValueError.
    """
    spec = spec_of(check)
    kind = spec.get("type")
    if kind not in CHECK_TYPES:
        raise ValueError(f"unknown check type {kind!r}")
    if needs_running(spec) and not pods_run:
        return Result(None, NOT_ON_PROVIDER)
    if kind in ("http", "probe", "scenario"):
        raise ValueError(f"{kind} checks act on the cluster: labctl.runner runs them")
    return _EVALUATORS[kind](spec, objects, namespace)


# -- reading the target -------------------------------------------------------------------------------


def _target(spec: Mapping[str, Any]) -> Mapping[str, Any]:
    target = spec.get("target")
    if not isinstance(target, Mapping):
        raise ValueError(f"check {spec.get('id')!r} has no target")
    return target


def _key(ref: Mapping[str, Any], namespace: str) -> FetchKey:
    return FetchKey(str(ref.get("apiVersion")), str(ref.get("kind")), key_namespace(ref, namespace))


class _Missing(Exception):
    """The target cannot be evaluated: carries the Result to report instead."""

    def __init__(self, result: Result) -> None:
        super().__init__(result.reason)
        self.result = result


def _label(ref: Mapping[str, Any]) -> str:
    return f"{ref.get('kind')} {ref.get('name')}"


def _not_read(key: FetchKey) -> Result:
    where = f" in namespace {key.namespace}" if key.namespace else ""
    return Result(None, f"not verifiable: {key.kind} objects ({key.api_version}){where} could not be read")


def _not_found(ref: Mapping[str, Any], key: FetchKey) -> Result:
    where = f" in namespace {key.namespace}" if key.namespace else ""
    return Result(False, f"{_label(ref)} not found{where}")


def _list(objects: Objects, key: FetchKey) -> list:
    if key not in objects:
        raise _Missing(_not_read(key))
    return as_list(objects[key])


def _object(spec: Mapping[str, Any], objects: Objects, namespace: str) -> Mapping[str, Any]:
    target = _target(spec)
    key = _key(target, namespace)
    obj = find(_list(objects, key), target.get("name"))
    if obj is None:
        raise _Missing(_not_found(target, key))
    return obj


def _guarded(
    fn: Callable[[Mapping[str, Any], Objects, str], Result],
) -> Callable[[Mapping[str, Any], Objects, str], Result]:
    def run(spec: Mapping[str, Any], objects: Objects, namespace: str) -> Result:
        try:
            return fn(spec, objects, namespace)
        except _Missing as missing:
            return missing.result

    run.__doc__ = fn.__doc__
    return run


# -- check types ----------------------------------------------------------------------------------------


@_guarded
def _exists(spec: Mapping[str, Any], objects: Objects, namespace: str) -> Result:
    obj = _object(spec, objects, namespace)
    if deleting(obj):
        return Result(True, f"{_label(spec['target'])} exists (it is being deleted)")
    return Result(True, f"{_label(spec['target'])} exists")


@_guarded
def _absent(spec: Mapping[str, Any], objects: Objects, namespace: str) -> Result:
    target = _target(spec)
    obj = find(_list(objects, _key(target, namespace)), target.get("name"))
    if obj is None:
        return Result(True, f"{_label(target)} is gone")
    if deleting(obj):
        return Result(False, f"{_label(target)} is being deleted (wanted it gone)")
    return Result(False, f"{_label(target)} still exists (wanted it gone)")


@_guarded
def _matches(spec: Mapping[str, Any], objects: Objects, namespace: str) -> Result:
    obj = _object(spec, objects, namespace)
    label = _label(spec["target"])
    ok, reason = match_subset(spec.get("subset"), obj)
    if ok:
        return Result(True, f"{label} has the expected fields")
    return Result(False, f"{label}: {reason}")


def _jmespath_truthy(value: Any) -> bool:
    # JMESPath's own notion of truth: only false, null and empty strings/lists/objects are false; 0 is true.
    if value is None or value is False:
        return False
    if isinstance(value, (str, list, dict)):
        return len(value) > 0
    return True


def search(expr: str, data: Any) -> tuple[bool, Any]:
    """Evaluate a JMESPath expression: (True, value), or (False, why it could not be evaluated)."""
    try:
        return True, jmespath.search(expr, data)
    except (jmespath.exceptions.JMESPathError, TypeError, ValueError, RecursionError) as e:
        return False, one_line(e)


@_guarded
def _expression(spec: Mapping[str, Any], objects: Objects, namespace: str) -> Result:
    obj = _object(spec, objects, namespace)
    label = _label(spec["target"])
    expr = str(spec.get("expr"))
    ok, value = search(expr, obj)
    if not ok:
        return Result(False, f"{label}: {expr} could not be evaluated ({value})")
    if "equals" in spec:
        want = spec["equals"]
        passed = values_equal(value, want)
        wanted = show(want)
    else:
        passed = _jmespath_truthy(value)
        wanted = "a value that is not empty, false or null"
    if passed:
        return Result(True, f"{label}: {expr} is {show(value)}")
    message = spec.get("message")
    if isinstance(message, str) and message:
        return Result(False, f"{label}: {message} ({expr} is {show(value)}, wanted {wanted})")
    return Result(False, f"{label}: {expr} is {show(value)} (wanted {wanted})")


@_guarded
def _condition(spec: Mapping[str, Any], objects: Objects, namespace: str) -> Result:
    obj = _object(spec, objects, namespace)
    label = _label(spec["target"])
    type_ = spec.get("condition")
    want = spec.get("status", "True")
    entry = condition(obj, type_)
    if entry is None:
        return Result(False, f"{label} has no {type_} condition (wanted {type_}={want})")
    seen = entry.get("status")
    if seen == want:
        return Result(True, f"{label}: {type_} is {want}")
    shown = seen if isinstance(seen, str) else show(seen)
    why = ": ".join(one_line(entry[k]) for k in ("reason", "message") if entry.get(k))
    return Result(False, f"{label}: {type_} is {shown} (wanted {want})" + (f": {why}" if why else ""))


@_guarded
def _ready(spec: Mapping[str, Any], objects: Objects, namespace: str) -> Result:
    obj = _object(spec, objects, namespace)
    target = spec["target"]
    label = _label(target)
    replicas = as_int(spec.get("replicas"), None)
    kind = target.get("kind")
    if kind == "Job":
        return _job_done(obj, label, replicas)
    stale = _stale(obj, label)
    if stale:
        return stale
    if kind == "Deployment":
        return _deployment_ready(obj, label, replicas)
    if kind == "StatefulSet":
        return _statefulset_ready(obj, label, replicas)
    if kind == "DaemonSet":
        return _daemonset_ready(obj, label, replicas)
    return Result(False, f"{label}: a ready check reads a Deployment, StatefulSet, DaemonSet or Job")


def workload_ready(obj: Mapping[str, Any]) -> Result:
    """Readiness of one Deployment, StatefulSet, DaemonSet or Job, judged as the `ready` check judges it."""
    kind = obj.get("kind")
    label = f"{kind} {get(obj, 'metadata', 'name')}"
    if kind == "Job":
        return _job_done(obj, label, None)
    stale = _stale(obj, label)
    if stale:
        return stale
    judge = {"Deployment": _deployment_ready, "StatefulSet": _statefulset_ready, "DaemonSet": _daemonset_ready}
    if kind not in judge:
        return Result(True, f"{label}: nothing to wait for")
    return judge[kind](obj, label, None)


def _stale(obj: Mapping[str, Any], label: str) -> Result | None:
    # Until the controller has observed the latest generation, its status describes an older spec.
    generation = as_int(get(obj, "metadata", "generation"), None)
    observed = as_int(get(obj, "status", "observedGeneration"), 0)
    if generation is not None and observed < generation:
        return Result(
            False,
            f"{label}: the controller has not caught up with the latest change yet "
            f"(generation {generation}, observed {observed})",
        )
    return None


def _replicas_wanted(obj: Mapping[str, Any], replicas: int | None) -> tuple[int, int]:
    own = as_int(get(obj, "spec", "replicas"), None)
    own = 1 if own is None else own
    return own, own if replicas is None else replicas


def _deployment_ready(obj: Mapping[str, Any], label: str, replicas: int | None) -> Result:
    own, wanted = _replicas_wanted(obj, replicas)
    status = get(obj, "status")
    available = as_int(get(status, "availableReplicas")) or 0
    updated = as_int(get(status, "updatedReplicas")) or 0
    total = as_int(get(status, "replicas")) or 0
    if available < wanted:
        return Result(False, f"{label}: {available}/{own} replicas available (wanted {wanted})")
    if updated < own:
        return Result(False, f"{label}: rollout in progress: {updated}/{own} replicas run the latest pod template")
    if total > updated:
        old = total - updated
        return Result(
            False,
            f"{label}: rollout in progress: {plural(old, 'old replica')} still running "
            "(the new ones are not available yet)",
        )
    return Result(True, f"{label}: {available}/{own} replicas available")


def _statefulset_ready(obj: Mapping[str, Any], label: str, replicas: int | None) -> Result:
    own, wanted = _replicas_wanted(obj, replicas)
    status = get(obj, "status")
    ready = as_int(get(status, "readyReplicas")) or 0
    if ready < wanted:
        return Result(False, f"{label}: {ready}/{own} replicas ready (wanted {wanted})")
    current, update = get(status, "currentRevision"), get(status, "updateRevision")
    updated = as_int(get(status, "updatedReplicas")) or 0
    if update and current != update and updated < own:
        return Result(False, f"{label}: rollout in progress: {updated}/{own} replicas run the latest pod template")
    return Result(True, f"{label}: {ready}/{own} replicas ready")


def _daemonset_ready(obj: Mapping[str, Any], label: str, replicas: int | None) -> Result:
    status = get(obj, "status")
    desired = as_int(get(status, "desiredNumberScheduled")) or 0
    ready = as_int(get(status, "numberReady")) or 0
    updated = as_int(get(status, "updatedNumberScheduled")) or 0
    wanted = desired if replicas is None else replicas
    if ready < wanted:
        return Result(False, f"{label}: {ready}/{desired} pods ready (wanted {wanted})")
    if updated < desired:
        return Result(False, f"{label}: rollout in progress: {updated}/{desired} pods run the latest pod template")
    return Result(True, f"{label}: {ready}/{desired} pods ready")


def _job_done(obj: Mapping[str, Any], label: str, replicas: int | None) -> Result:
    failed = condition(obj, "Failed")
    if failed is not None and failed.get("status") == "True":
        why = ": ".join(one_line(failed[k]) for k in ("reason", "message") if failed.get(k))
        return Result(False, f"{label} failed" + (f": {why}" if why else ""))
    succeeded = as_int(get(obj, "status", "succeeded")) or 0
    completions = as_int(get(obj, "spec", "completions"), None)
    wanted = replicas if replicas is not None else (1 if completions is None else completions)
    complete = condition(obj, "Complete")
    if succeeded < wanted:
        of = f"/{completions}" if completions is not None else ""
        return Result(False, f"{label}: {succeeded}{of} pods succeeded (wanted {wanted})")
    if complete is None or complete.get("status") != "True":
        return Result(False, f"{label}: {succeeded} pods succeeded, but the Job is not marked Complete yet")
    return Result(True, f"{label} completed ({succeeded} pods succeeded)")


@_guarded
def _endpoints(spec: Mapping[str, Any], objects: Objects, namespace: str) -> Result:
    _object(spec, objects, namespace)
    target = spec["target"]
    label = _label(target)
    want = as_int(spec.get("count"), 0)
    slices = _list(objects, FetchKey(*ENDPOINT_SLICE, key_namespace(target, namespace)))
    ready: set = set()
    unready: set = set()
    for piece in items(slices):
        if labels_of(piece).get(SERVICE_NAME_LABEL) != target.get("name"):
            continue
        for endpoint in items(piece.get("endpoints")):
            if not as_list(endpoint.get("addresses")):
                continue  # the API requires an address: without one this is no endpoint
            identity = _endpoint_identity(piece, endpoint)
            # The API says an unset `ready` should be read as ready.
            (unready if get(endpoint, "conditions", "ready") is False else ready).add(identity)
    unready -= ready
    seen = f"{plural(len(ready), 'ready endpoint')}" + (f", {len(unready)} not ready" if unready else "")
    if len(ready) == want:
        return Result(True, f"{label}: {seen}")
    return Result(False, f"{label}: {seen} (wanted {want})")


def _endpoint_identity(piece: Mapping[str, Any], endpoint: Mapping[str, Any]) -> tuple:
    # A dual-stack Service lists each pod once per address family: count the pod, not its addresses.
    ref = endpoint.get("targetRef")
    if isinstance(ref, Mapping) and ref.get("name"):
        return ("ref", str(ref.get("kind")), str(ref.get("namespace")), str(ref.get("name")))
    addresses = tuple(str(a) for a in as_list(endpoint.get("addresses")))
    return ("addresses", str(piece.get("addressType")), addresses)


@_guarded
def _count(spec: Mapping[str, Any], objects: Objects, namespace: str) -> Result:
    key = _key(spec, namespace)
    selector = spec.get("selector")
    selector = selector if isinstance(selector, Mapping) else {}
    n = 0
    for obj in items(_list(objects, key)):
        labels = labels_of(obj)
        # Objects on their way out are not counted: they are already leaving.
        if not deleting(obj) and all(labels.get(k) == v for k, v in selector.items()):
            n += 1
    subject = plural(n, key.kind)
    if selector:
        subject += " labelled " + ",".join(f"{k}={v}" for k, v in selector.items())
    exact, low, high = (as_int(spec.get(k), None) for k in ("equals", "min", "max"))
    if exact is not None:
        passed, wanted = n == exact, f"exactly {exact}"
    else:
        passed = (low is None or n >= low) and (high is None or n <= high)
        if low is not None and high is not None:
            wanted = f"between {low} and {high}"
        elif low is not None:
            wanted = f"at least {low}"
        elif high is not None:
            wanted = f"at most {high}"
        else:
            wanted = "any number"
    if passed:
        return Result(True, subject)
    return Result(False, f"{subject} (wanted {wanted})")


def _workload(
    fn: Callable[[Mapping[str, Any], Mapping[str, Any], str], Result],
) -> Callable[[Mapping[str, Any], Objects, str], Result]:
    @_guarded
    def run(spec: Mapping[str, Any], objects: Objects, namespace: str) -> Result:
        obj = _object(spec, objects, namespace)
        return fn(spec, obj, _label(spec["target"]))

    return run


_EVALUATORS: Mapping[str, Callable[[Mapping[str, Any], Objects, str], Result]] = {
    "exists": _exists,
    "absent": _absent,
    "matches": _matches,
    "expression": _expression,
    "condition": _condition,
    "ready": _ready,
    "endpoints": _endpoints,
    "count": _count,
    "probes": _workload(workloads.probes),
    "resources": _workload(workloads.resources),
    "security": _workload(workloads.security),
    "image-pinned": _workload(workloads.image_pinned),
}
