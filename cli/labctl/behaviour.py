"""Behaviour checks that act on the cluster: probes (requests made by a short-lived Pod in the lab namespace)
and scenarios (ordered steps, the cluster put back afterwards). The judging is pure and lives in
`labctl.checks`; this module makes the requests and changes, and cleans up after them."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from labctl.apply import wait_ready
from labctl.checks import HttpResponse, Result, evaluate_http
from labctl.checks.model import key_namespace
from labctl.checks.objects import one_line
from labctl.checks.probe import (
    DEFAULT_TIMEOUT,
    PROBE_IMAGE,
    audiences_of,
    describe_probe,
    evaluate_probe,
    identity,
    parse_results,
    probe_pod,
    request_for,
)
from labctl.checks.scenario import describe_step, inverse_merge_patch, step_kind, step_timeout
from labctl.errors import ClusterUnreachable, LabError
from labctl.kube.client import ApiError, Client

# Why a container cannot start, in words that say what to do.
_STUCK = {
    "ErrImageNeverPull": f"the probe image {PROBE_IMAGE} is not on the node (`labctl start` builds it)",
    "ErrImagePull": f"the probe image {PROBE_IMAGE} is not on the node (`labctl start` builds it)",
    "ImagePullBackOff": f"the probe image {PROBE_IMAGE} is not on the node (`labctl start` builds it)",
    "InvalidImageName": f"the probe image name {PROBE_IMAGE} is not valid here",
    "CreateContainerConfigError": "the probe Pod's container could not be configured",
    "CreateContainerError": "the probe Pod's container could not be created",
}


@dataclass(frozen=True)
class Probe:
    """One request a probe Pod makes, and what its answer must be."""

    action: Mapping[str, Any]
    expect: Mapping[str, Any] | None = None
    timeout: float = DEFAULT_TIMEOUT
    pod: Mapping[str, Any] | None = None

    @classmethod
    def of(cls, spec: Mapping[str, Any], default_timeout: float = DEFAULT_TIMEOUT) -> Probe:
        """From a probe check or a scenario's probe step."""
        return cls(spec["probe"], spec.get("expect"), float(spec.get("timeout_seconds") or default_timeout),
                   spec.get("pod"))


def run_probes(client: Client, namespace: str, probes: Sequence[Probe]) -> list[Result]:
    """Run probes, one Pod per identity (labels, ServiceAccount), the Pods side by side; a result per probe."""
    groups: dict[Any, list[int]] = {}
    for i, probe in enumerate(probes):
        groups.setdefault(identity(probe.pod), []).append(i)
    results: list[Result | None] = [None] * len(probes)
    errors: list[BaseException] = []

    def one(indexes: list[int]) -> None:
        try:
            for i, result in zip(indexes, _run_pod(client, namespace, [probes[i] for i in indexes]), strict=True):
                results[i] = result
        except BaseException as e:  # surfaced in the caller's thread
            errors.append(e)

    threads = [threading.Thread(target=one, args=(idx,), daemon=True) for idx in groups.values()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return [r if r is not None else Result(False, "the probe gave no result") for r in results]


def _run_pod(client: Client, namespace: str, probes: Sequence[Probe]) -> list[Result]:
    audiences = audiences_of([p.action for p in probes])
    requests = [request_for(p.action, p.expect, p.timeout, audiences) for p in probes]
    pod = probes[0].pod or {}
    manifest = probe_pod(namespace, requests, labels=pod.get("labels") or {},
                         service_account=str(pod.get("service_account") or ""), audiences=audiences)

    def all_fail(why: str) -> list[Result]:
        return [Result(False, f"{describe_probe(p.action)}: {why}") for p in probes]

    try:
        created = client.create(manifest)
    except ApiError as e:
        return all_fail(f"cannot create the probe Pod: {one_line(e)}")
    name = created["metadata"]["name"]
    budget = float(manifest["spec"]["activeDeadlineSeconds"])
    try:
        stuck = _wait_finished(client, namespace, name, created["metadata"].get("resourceVersion", ""), budget)
        if stuck:
            return all_fail(stuck)
        parsed = parse_results(client.pod_log(namespace, name, "probe"), len(probes))
        if isinstance(parsed, str):
            return all_fail(parsed)
        return [evaluate_probe(p.action, p.expect, r) for p, r in zip(probes, parsed, strict=True)]
    finally:
        try:
            client.delete("v1", "Pod", name, namespace)
        except (ApiError, ClusterUnreachable):
            pass  # it carries activeDeadlineSeconds and labctl's labels; `reset` removes it too


def _wait_finished(client: Client, namespace: str, name: str, resource_version: str, budget: float) -> str | None:
    """Watch the probe Pod until it has finished; None, or why it never will."""
    deadline = time.monotonic() + budget
    rv = resource_version
    while time.monotonic() < deadline:
        remaining = max(1, int(deadline - time.monotonic()))
        try:
            for event in client.watch("v1", "Pod", namespace, resource_version=rv, timeout_seconds=remaining):
                pod = event.get("object") or {}
                if event.get("type") == "ERROR":
                    rv = ""
                    break
                if (pod.get("metadata") or {}).get("name") != name:
                    continue
                if event.get("type") == "DELETED":
                    return "the probe Pod was deleted before it finished"
                verdict = _pod_verdict(pod)
                if verdict is not None:
                    return verdict or None
        except ApiError as e:
            if e.status != 410:
                raise
            rv = ""
        if not rv:
            current = client.get("v1", "Pod", name, namespace)
            if current is None:
                return "the probe Pod disappeared before it finished"
            verdict = _pod_verdict(current)
            if verdict is not None:
                return verdict or None
            rv = current["metadata"].get("resourceVersion", "")
    return f"the probe Pod did not finish within {budget:.0f} s"


def _pod_verdict(pod: Mapping[str, Any]) -> str | None:
    """'' when the pod finished with a log to read, a reason when it cannot run, None while it runs."""
    status = pod.get("status") or {}
    phase = status.get("phase")
    if phase == "Succeeded":
        return ""
    if phase == "Failed":
        if status.get("reason") == "DeadlineExceeded":
            return "the probe Pod ran out of time"
        return ""  # the program's log says what went wrong
    for cs in status.get("containerStatuses") or []:
        waiting = (cs.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in _STUCK:
            return f"{_STUCK[waiting['reason']]} ({one_line(waiting.get('message') or waiting['reason'], 120)})"
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False" and \
                cond.get("reason") == "Unschedulable":
            return f"the probe Pod cannot be scheduled: {one_line(cond.get('message') or '', 120)}"
    return None


# -- scenarios ---------------------------------------------------------------------------------------------------

ProbeRunner = Callable[[Client, str, Sequence[Probe]], list[Result]]


class _Failed(Exception):
    """A step's expectation did not hold (the reason is in the learner's words)."""


def run_scenario(client: Client, spec: Mapping[str, Any], namespace: str, *,
                 probes: ProbeRunner = run_probes) -> Result:
    """Run a scenario's steps in order; whatever happens, undo its patches and restart what it restarted."""
    steps = spec["steps"]
    undo: list[tuple[Mapping[str, Any], dict]] = []
    restarted: list[Mapping[str, Any]] = []
    failure: str | None = None
    last = ""
    try:
        for number, step in enumerate(steps, 1):
            try:
                last = _step(client, step, namespace, undo, restarted, probes)
            except _Failed as e:
                failure = f"step {number} ({describe_step(step)}): {e}"
                break
            except (ApiError, LabError) as e:
                if isinstance(e, ClusterUnreachable) and "timed out" not in str(e):
                    raise
                failure = f"step {number} ({describe_step(step)}): {one_line(e)}"
                break
    finally:
        problems = _put_back(client, namespace, undo, restarted)
    if failure:
        return Result(False, failure + (f"; putting the cluster back: {problems}" if problems else ""))
    if problems:
        return Result(False, f"every step passed, but the cluster could not be put back: {problems}")
    return Result(True, f"{len(steps)} step{'s' if len(steps) != 1 else ''} passed (last: {last})")


def _ref(target: Mapping[str, Any], namespace: str) -> tuple[str, str, str, str | None]:
    return target["apiVersion"], target["kind"], target["name"], key_namespace(target, namespace)


def _step(client: Client, step: Mapping[str, Any], namespace: str, undo: list, restarted: list,
          probes: ProbeRunner) -> str:
    kind = step_kind(step)
    timeout = step_timeout(step)
    if kind == "sleep":
        time.sleep(timeout)
        return f"waited {timeout:g} s"
    if kind == "patch":
        target, merge = step["patch"]["target"], step["patch"]["merge"]
        api, k, name, ns = _ref(target, namespace)
        current = client.get(api, k, name, ns)
        if current is None:
            raise _Failed(f"{k} {name} does not exist")
        client.merge_patch(api, k, name, ns, dict(merge))
        undo.append((target, inverse_merge_patch(current, merge)))
        return f"patched {k} {name}"
    if kind == "restart":
        target = step["restart"]
        _restart(client, target, namespace, timeout)
        restarted.append(target)
        return f"{target['kind']} {target['name']} restarted and ready"
    if kind == "http":
        return _until(step, timeout, lambda: _http_step(client, step, namespace, timeout))
    probe = Probe.of(step, default_timeout=min(timeout, DEFAULT_TIMEOUT))

    def once() -> str:
        result = probes(client, namespace, [probe])[0]
        if not result.passed:
            raise _Failed(result.reason)
        return result.reason
    return _until(step, timeout, once)


def _until(step: Mapping[str, Any], timeout: float, attempt: Callable[[], str]) -> str:
    """One attempt, or with `until: true` attempts until one passes or `timeout` has gone by."""
    if not step.get("until"):
        return attempt()
    deadline = time.monotonic() + timeout
    while True:
        try:
            return attempt()
        except _Failed as e:
            if time.monotonic() + 0.5 >= deadline:
                raise _Failed(f"{e} (still, after {timeout:g} s)") from e
        time.sleep(0.5)


def http_request(client: Client, spec: Mapping[str, Any], namespace: str, timeout: float) -> Result:
    """One request through the API server's service proxy, judged by `spec` (an http check or a scenario's http
    step with its expect). A request that times out or fails is a failing result; an unreachable API server is not."""
    try:
        resp = client.service_proxy(spec.get("namespace", namespace), spec["service"], spec["port"],
                                    spec.get("path", "/"), method=spec.get("method", "GET"), timeout=timeout,
                                    body=spec.get("body"))
    except Exception as e:  # the reason is reported in the check's words; the run goes on
        if isinstance(e, ClusterUnreachable) and "timed out" not in str(e):
            raise
        return evaluate_http(spec, None, str(e))
    return evaluate_http(spec, HttpResponse(resp.status, resp.body, resp.elapsed_ms, resp.headers), None)


def _http_step(client: Client, step: Mapping[str, Any], namespace: str, timeout: float) -> str:
    h = step["http"]
    judged_as = {**h, "expect": step.get("expect") or {}}
    count = int(h.get("count", 1))
    result = Result(False, "no request sent")
    for i in range(1, count + 1):
        result = http_request(client, judged_as, namespace, timeout)
        if not result.passed:
            raise _Failed(f"request {i} of {count}: {result.reason}" if count > 1 else result.reason)
    return result.reason + (f" ({count} times)" if count > 1 else "")


def _restart(client: Client, target: Mapping[str, Any], namespace: str, timeout: float) -> None:
    """As `kubectl rollout restart`: a new pod template annotation, then wait until the rollout is done and the
    old pods have exited."""
    api, kind, name, ns = _ref(target, namespace)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    try:
        patched = client.merge_patch(api, kind, name, ns, {"spec": {"template": {"metadata": {"annotations": {
            "kubectl.kubernetes.io/restartedAt": stamp}}}}})
    except ApiError as e:
        if e.status == 404:
            raise _Failed(f"{kind} {name} does not exist") from e
        raise
    deadline = time.monotonic() + timeout
    try:
        wait_ready(client, [patched], timeout=timeout)
    except LabError as e:
        raise _Failed(one_line(e.message)) from e
    _wait_old_pods_gone(client, patched, ns, deadline)


def _wait_old_pods_gone(client: Client, workload: Mapping[str, Any], namespace: str | None, deadline: float) -> None:
    """A rollout is done before its old pods have exited; while they drain, callers holding keep-alive connections
    still reach them. A scenario's next step must meet only the new pods."""
    labels = ((workload.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
    if not labels:
        return
    selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
    while True:
        pods, _ = client.list("v1", "Pod", namespace, label_selector=selector)
        leaving = [p["metadata"]["name"] for p in pods if (p.get("metadata") or {}).get("deletionTimestamp")]
        if not leaving:
            return
        if time.monotonic() > deadline:
            raise _Failed(f"old pods still terminating: {', '.join(sorted(leaving)[:3])}")
        time.sleep(0.5)


def _put_back(client: Client, namespace: str, undo: list, restarted: list) -> str:
    """Undo the patches (last first) and wait for the workloads among them, then restart each restarted workload
    once more; what went wrong, if anything."""
    problems = []
    for target, inverse in reversed(undo):
        if not inverse:
            continue
        api, kind, name, ns = _ref(target, namespace)
        try:
            client.merge_patch(api, kind, name, ns, inverse)
        except (ApiError, LabError) as e:
            problems.append(f"{kind} {name}: {one_line(e)}")
    # A workload the scenario scaled or changed is waited for once it is put back (unless restarted below anyway).
    restarted_keys = {_ref(t, namespace) for t in restarted}
    for target, inverse in undo:
        if not inverse or target["kind"] not in ("Deployment", "StatefulSet", "DaemonSet") or \
                _ref(target, namespace) in restarted_keys:
            continue
        api, kind, name, ns = _ref(target, namespace)
        try:
            current = client.get(api, kind, name, ns)
            if current is not None:
                wait_ready(client, [current], timeout=180)
        except (ApiError, LabError) as e:
            problems.append(f"{kind} {name}: {one_line(e)}")
    seen = set()
    for target in restarted:
        key = _ref(target, namespace)
        if key in seen:
            continue
        seen.add(key)
        try:
            _restart(client, target, namespace, 180)
        except (_Failed, ApiError, LabError) as e:
            problems.append(f"{target['kind']} {target['name']}: {one_line(e)}")
    return "; ".join(problems)
