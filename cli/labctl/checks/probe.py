"""Probe checks, pure half: the Pod that makes a request from inside the lab namespace, and judging its result.

A probe Pod runs labctl's probe image (`manifests/probe/`): it reads the requests from the environment
variable PROBES (a JSON list), makes them one after another, and prints one line
`LABCTL-PROBE-RESULTS <json>` holding a result per request. Pods of one identity (labels, ServiceAccount)
serve every probe of a run that asks for that identity.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from labctl.checks.http import evaluate_http
from labctl.checks.matching import show
from labctl.checks.model import HttpResponse, Result
from labctl.checks.objects import one_line

PROBE_IMAGE = "labctl.local/probe:1.0"
RESULT_MARKER = "LABCTL-PROBE-RESULTS "
PROBE_LABEL = "labctl.dev/probe"
# A condition nobody sets: the probe Pod is never Ready, so a probe wearing a Service's labels (to pass a
# NetworkPolicy) is never among that Service's ready endpoints.
NEVER_READY = "labctl.dev/probe-never-ready"
DEFAULT_TIMEOUT = 10.0
# A new pod's address reaches the NetworkPolicy enforcer's sets a moment after it starts: a connection that
# must be refused is tried only after this long, so an early, not yet enforced one does not pass for "allowed".
DENY_SETTLE_SECONDS = 2.0


def action_kind(action: Mapping[str, Any]) -> str:
    """dns, http, tcp or grpc_health."""
    return next(iter(action))


def describe_probe(action: Mapping[str, Any]) -> str:
    """What a probe does, as reasons name it: `DNS lookup of orders from a pod`."""
    kind = action_kind(action)
    body = action[kind]
    if kind == "dns":
        return f"DNS lookup of {body} from a pod"
    if kind == "http":
        return f"{body.get('method') or 'GET'} {body.get('url')} from a pod"
    if kind == "tcp":
        return f"TCP connection to {body.get('host')}:{body.get('port')} from a pod"
    return f"gRPC health of {body.get('host')}:{body.get('port')}" + (
        f" (service {body['service']!r})" if body.get("service") else "") + " from a pod"


def identity(pod: Mapping[str, Any] | None) -> tuple[tuple[tuple[str, str], ...], str]:
    """The key probes share a Pod by: its labels and ServiceAccount."""
    pod = pod or {}
    labels = tuple(sorted((str(k), str(v)) for k, v in (pod.get("labels") or {}).items()))
    return labels, str(pod.get("service_account") or "")


def request_for(action: Mapping[str, Any], expect: Mapping[str, Any] | None, timeout: float,
                audiences: Sequence[str]) -> dict:
    """The JSON request the probe program makes for one action.

    `retry`: connection failures are tried again until `timeout` (a Service whose pods are still starting, a
    NetworkPolicy not yet synced) — except where the probe wants the connection refused (`settle` first).
    """
    kind = action_kind(action)
    body = dict(action[kind]) if isinstance(action[kind], Mapping) else {"name": action[kind]}
    expect = expect or {}
    request: dict[str, Any] = {"kind": kind, "timeout": float(timeout), **body}
    if kind == "http" and body.get("token_audience"):
        request["token_file"] = token_path(audiences.index(body["token_audience"]))
        request.pop("token_audience")
    wants_refusal = (kind == "tcp" and expect.get("connects") is False) or (
        kind == "dns" and expect.get("resolves") is False)
    request["retry"] = not wants_refusal
    if wants_refusal and kind == "tcp":
        request["settle"] = DENY_SETTLE_SECONDS
    return request


def token_path(index: int) -> str:
    return f"/var/run/labctl/tokens/token-{index}"


def audiences_of(actions: Sequence[Mapping[str, Any]]) -> list[str]:
    """The token audiences a pod's probes ask for, in first-seen order."""
    seen: list[str] = []
    for action in actions:
        body = action.get("http")
        if isinstance(body, Mapping) and body.get("token_audience") and body["token_audience"] not in seen:
            seen.append(body["token_audience"])
    return seen


def probe_pod(namespace: str, requests: Sequence[Mapping[str, Any]], *, labels: Mapping[str, str],
              service_account: str, audiences: Sequence[str], image: str = PROBE_IMAGE) -> dict:
    """The manifest of a probe Pod (PodSecurity restricted, never Ready, gone after its deadline)."""
    budget = sum(float(r.get("timeout", DEFAULT_TIMEOUT)) + float(r.get("settle", 0)) for r in requests)
    pod: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "labctl-probe-",
            "namespace": namespace,
            "labels": {**dict(labels), "app.kubernetes.io/managed-by": "labctl", PROBE_LABEL: "true"},
        },
        "spec": {
            "restartPolicy": "Never",
            "activeDeadlineSeconds": int(budget) + 60,
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "terminationGracePeriodSeconds": 0,
            "readinessGates": [{"conditionType": NEVER_READY}],
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": 65532,
                "runAsGroup": 65532,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [{
                "name": "probe",
                "image": image,
                "imagePullPolicy": "IfNotPresent",
                "env": [{"name": "PROBES", "value": json.dumps(list(requests), separators=(",", ":"))}],
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "readOnlyRootFilesystem": True,
                    "capabilities": {"drop": ["ALL"]},
                },
                "resources": {
                    "requests": {"cpu": "10m", "memory": "32Mi"},
                    "limits": {"cpu": "500m", "memory": "128Mi"},
                },
            }],
        },
    }
    if service_account:
        pod["spec"]["serviceAccountName"] = service_account
    if audiences:
        pod["spec"]["volumes"] = [{
            "name": "tokens",
            "projected": {"sources": [
                {"serviceAccountToken": {"audience": a, "path": f"token-{i}", "expirationSeconds": 600}}
                for i, a in enumerate(audiences)
            ]},
        }]
        pod["spec"]["containers"][0]["volumeMounts"] = [
            {"name": "tokens", "mountPath": "/var/run/labctl/tokens", "readOnly": True}]
    return pod


def parse_results(log: str, count: int) -> list[dict] | str:
    """The probe program's results from its log, or why they cannot be read."""
    for line in reversed(log.splitlines()):
        if line.startswith(RESULT_MARKER):
            try:
                results = json.loads(line[len(RESULT_MARKER):])
            except ValueError:
                return "the probe's result line is not JSON"
            if not isinstance(results, list) or len(results) != count or not all(
                    isinstance(r, dict) for r in results):
                return f"the probe answered {show(results, 60)} (wanted {count} results)"
            return results
    tail = one_line(log.strip()[-300:]) if log.strip() else "nothing"
    return f"the probe printed no result (its log: {tail})"


def evaluate_probe(action: Mapping[str, Any], expect: Mapping[str, Any] | None, result: Mapping[str, Any]) -> Result:
    """Judge one probe by the result the probe program reported for it."""
    expect = expect or {}
    kind = action_kind(action)
    what = describe_probe(action)
    error = result.get("error")
    if kind == "dns":
        addresses = result.get("addresses") or []
        want = expect.get("resolves", True)
        if not want:
            if addresses:
                return Result(False, f"{what}: resolves to {', '.join(addresses[:4])} (wanted no answer)")
            return Result(True, f"{what}: does not resolve ({one_line(error or 'no address')})")
        if not addresses:
            return Result(False, f"{what}: does not resolve ({one_line(error or 'no address')})")
        least = int(expect.get("min_addresses", 1))
        if len(addresses) < least:
            return Result(False, f"{what}: {len(addresses)} address{'es' if len(addresses) != 1 else ''} "
                                 f"({', '.join(addresses[:4])}; wanted at least {least})")
        return Result(True, f"{what}: {', '.join(addresses[:4])}" + (" …" if len(addresses) > 4 else ""))
    if kind == "tcp":
        connected = bool(result.get("connected"))
        want = expect.get("connects", True)
        if connected and want:
            return Result(True, f"{what}: connected in {result.get('elapsed_ms', 0):.0f} ms")
        if connected:
            return Result(False, f"{what}: connected (wanted the connection refused or dropped)")
        if want:
            return Result(False, f"{what}: {one_line(error or 'no connection')}")
        return Result(True, f"{what}: no connection ({one_line(error or 'refused')})")
    if kind == "grpc_health":
        if error:
            return Result(False, f"{what}: {one_line(error)}")
        status = result.get("status")
        want = expect.get("status", "SERVING")
        if status != want:
            return Result(False, f"{what}: {status} (wanted {want})")
        return Result(True, f"{what}: {status}")
    # http: judged as an http check is, naming the URL instead of a Service
    if error:
        return Result(False, f"{what}: {one_line(error)}")
    response = HttpResponse(int(result.get("status", 0)), str(result.get("body", "")).encode(),
                            float(result.get("elapsed_ms", 0)), result.get("headers") or {})
    return evaluate_http({"expect": expect}, response, None, request=what)
