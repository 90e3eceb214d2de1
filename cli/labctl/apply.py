"""Putting a lab into the cluster: namespace, server-side apply, waiting, emptying, and backups."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import yaml

from labctl.errors import LabDefinitionError, LabError, NotReady
from labctl.kube.client import ApiError, Client

MANAGED_BY = {"app.kubernetes.io/managed-by": "labctl"}

# What `reset` empties and `backup` saves: the namespaced kinds labs create. Kinds a lab's files name are added.
NAMESPACED_KINDS: tuple[tuple[str, str], ...] = (
    ("apps/v1", "Deployment"), ("apps/v1", "StatefulSet"), ("apps/v1", "DaemonSet"), ("batch/v1", "Job"),
    ("batch/v1", "CronJob"), ("v1", "Service"), ("v1", "ConfigMap"), ("v1", "Secret"), ("v1", "ServiceAccount"),
    ("v1", "PersistentVolumeClaim"), ("networking.k8s.io/v1", "NetworkPolicy"), ("policy/v1", "PodDisruptionBudget"),
    ("rbac.authorization.k8s.io/v1", "Role"), ("rbac.authorization.k8s.io/v1", "RoleBinding"),
    ("autoscaling/v2", "HorizontalPodAutoscaler"), ("networking.k8s.io/v1", "Ingress"),
    ("apps/v1", "ReplicaSet"), ("v1", "Pod"),
)
# Objects Kubernetes itself puts in every namespace: never saved, never deleted.
_BUILTIN_NAMES = {("ServiceAccount", "default"), ("ConfigMap", "kube-root-ca.crt")}


def ensure_namespace(client: Client, namespace: str, *, slug: str, pod_security: str = "restricted") -> None:
    labels = {
        **MANAGED_BY,
        "labctl.dev/lab": slug,
        "pod-security.kubernetes.io/enforce": pod_security,
        "pod-security.kubernetes.io/warn": "restricted",
        "pod-security.kubernetes.io/audit": "restricted",
    }
    client.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace, "labels": labels}})


def apply_objects(client: Client, objects: list[dict], *, origin: str) -> list[dict]:
    """Server-side apply in order; a refused object is reported with its file and the server's reason."""
    applied = []
    for obj in objects:
        meta = obj["metadata"]
        if not client.namespaced(obj["apiVersion"], obj["kind"]):
            meta.pop("namespace", None)
            meta.setdefault("labels", {}).update(MANAGED_BY)
        try:
            applied.append(client.apply(obj))
        except ApiError as e:
            raise LabDefinitionError(f"{origin}: {obj['kind']} {meta['name']} was refused: {e.message}") from e
    return applied


def _workload_ready(obj: dict) -> tuple[bool, str]:
    from labctl.checks import workload_ready

    result = workload_ready(obj)
    return bool(result.passed), result.reason


WAITABLE = ("Deployment", "StatefulSet", "DaemonSet", "Job")


def wait_ready(client: Client, objects: list[dict], *, timeout: float = 120) -> None:
    """Wait, by watching, until every workload among `objects` is ready; on timeout name what is not."""
    pending: dict[tuple[str, str, str], str] = {}
    for obj in objects:
        if obj.get("kind") in WAITABLE:
            pending[(obj["apiVersion"], obj["kind"], obj["metadata"]["name"])] = obj["metadata"].get("namespace", "")
    if not pending:
        return
    deadline = time.monotonic() + timeout
    by_kind: dict[tuple[str, str, str], set[str]] = {}
    for (api, kind, name), ns in pending.items():
        by_kind.setdefault((api, kind, ns), set()).add(name)
    waiting: dict[str, str] = {}
    lock = threading.Lock()
    done = threading.Event()
    errors: list[BaseException] = []

    def note(kind: str, obj: dict) -> None:
        ok, why = _workload_ready(obj)
        with lock:
            key = f"{kind}/{obj['metadata']['name']}"
            if ok:
                waiting.pop(key, None)
            else:
                waiting[key] = why
            if not waiting:
                done.set()

    def follow(api: str, kind: str, ns: str, names: set[str]) -> None:
        try:
            while not done.is_set() and time.monotonic() < deadline:
                items, rv = client.list(api, kind, ns)
                for item in items:
                    if item["metadata"]["name"] in names:
                        note(kind, item)
                if done.is_set():
                    return
                remaining = int(max(1, deadline - time.monotonic()))
                for event in client.watch(api, kind, ns, resource_version=rv, timeout_seconds=remaining):
                    obj = event.get("object") or {}
                    if event.get("type") in ("ADDED", "MODIFIED") and (obj.get("metadata") or {}).get("name") in names:
                        note(kind, obj)
                    if done.is_set() or time.monotonic() >= deadline:
                        return
        except BaseException as e:  # surfaced in the caller's thread
            errors.append(e)
            done.set()

    for (api, kind, ns), names in by_kind.items():
        for name in names:
            waiting[f"{kind}/{name}"] = f"{kind} {name}: not observed yet"
    threads = [threading.Thread(target=follow, args=(a, k, n, s), daemon=True) for (a, k, n), s in by_kind.items()]
    for t in threads:
        t.start()
    done.wait(timeout)
    if errors:
        raise errors[0]
    if waiting:
        raise NotReady(
            f"not ready after {timeout:.0f}s: " + "; ".join(sorted(waiting.values())),
            hint="`labctl kubectl get events -n <namespace>` shows why",
        )


def lab_kinds(objects: list[dict]) -> list[tuple[str, str]]:
    kinds = list(NAMESPACED_KINDS)
    for obj in objects:
        key = (obj["apiVersion"], obj["kind"])
        if key not in kinds and obj["kind"] != "Namespace":
            kinds.insert(0, key)
    return kinds


def backup(client: Client, namespace: str, kinds: list[tuple[str, str]], *, reason: str) -> Path | None:
    """Save the namespace's objects as YAML under the state dir before they are overwritten; None if empty."""
    saved = []
    for api, kind in kinds:
        if kind in ("Pod", "ReplicaSet"):
            continue  # owned by workloads; restoring them by hand would fight their controllers
        try:
            if not client.namespaced(api, kind):
                continue
            items, _ = client.list(api, kind, namespace)
        except ApiError:
            continue
        for item in items:
            meta = item["metadata"]
            if (kind, meta["name"]) in _BUILTIN_NAMES or meta.get("ownerReferences"):
                continue
            for noisy in ("managedFields", "resourceVersion", "uid", "creationTimestamp", "generation"):
                meta.pop(noisy, None)
            item.pop("status", None)
            saved.append(item)
    if not saved:
        return None
    from labctl.providers.users import give, make_dirs, state_root

    folder = make_dirs(state_root() / "backups")
    target = folder / f"{namespace}-{time.strftime('%Y%m%dT%H%M%S')}-{reason}.yaml"
    target.write_text(yaml.safe_dump_all(saved, sort_keys=False))
    give(target)
    return target


def empty_namespace(client: Client, namespace: str, kinds: list[tuple[str, str]], *, timeout: float = 60) -> None:
    """Delete every object of `kinds` in the namespace (keeping what Kubernetes puts there) and wait until gone."""
    for api, kind in kinds:
        try:
            if not client.namespaced(api, kind):
                continue
            items, _ = client.list(api, kind, namespace)
        except ApiError:
            continue
        for item in items:
            if (kind, item["metadata"]["name"]) not in _BUILTIN_NAMES:
                client.delete(api, kind, item["metadata"]["name"], namespace)
    deadline = time.monotonic() + timeout
    for api, kind in kinds:
        if kind in ("Pod", "ReplicaSet"):
            continue  # terminating pods do not stand in the way of re-applying the start state
        try:
            if not client.namespaced(api, kind):
                continue  # listing it would read the whole cluster's objects of that kind
        except ApiError:
            continue
        while True:
            try:
                items, _ = client.list(api, kind, namespace)
            except ApiError:
                break
            left = [i for i in items if (kind, i["metadata"]["name"]) not in _BUILTIN_NAMES]
            if not left:
                break
            if time.monotonic() > deadline:
                raise LabError(f"{kind} {left[0]['metadata']['name']} in {namespace} is still being deleted after {timeout:.0f}s")
            time.sleep(0.2)


# Cluster-wide infrastructure several labs share (DECISIONS: removed only when no started lab uses it): never
# deleted by one lab's reset.
SHARED_CLUSTER_KINDS = frozenset({"CustomResourceDefinition", "StorageClass", "GatewayClass", "Namespace"})


def delete_namespace(client: Client, namespace: str, *, timeout: float = 180) -> None:
    """Delete a namespace and wait until it is gone (its pods stopped, its volumes released)."""
    if not client.delete("v1", "Namespace", namespace):
        return
    deadline = time.monotonic() + timeout
    while client.get("v1", "Namespace", namespace) is not None:
        if time.monotonic() > deadline:
            raise NotReady(f"namespace {namespace} is still being deleted after {timeout:.0f}s",
                           hint=f"`labctl kubectl get all -n {namespace}` shows what holds it")
        time.sleep(0.5)


def delete_cluster_scoped(client: Client, objects: list[dict]) -> list[str]:
    """Delete the cluster-scoped objects among a lab's own files (a ClusterRoleBinding, say), not shared ones."""
    deleted = []
    for obj in objects:
        kind, name = obj["kind"], obj["metadata"]["name"]
        if kind in SHARED_CLUSTER_KINDS or client.namespaced(obj["apiVersion"], kind):
            continue
        current = client.get(obj["apiVersion"], kind, name)
        labels = ((current or {}).get("metadata") or {}).get("labels") or {}
        if current and labels.get("app.kubernetes.io/managed-by") == "labctl":
            client.delete(obj["apiVersion"], kind, name)
            deleted.append(f"{kind} {name}")
    return deleted


def wait_endpoints(client: Client, objects: list[dict], *, timeout: float = 15) -> None:
    """Let each Service's EndpointSlices catch up with its ready pods (they trail pod readiness slightly)."""
    deadline = time.monotonic() + timeout
    for svc in objects:
        selector = (svc.get("spec") or {}).get("selector")
        if svc.get("kind") != "Service" or not selector:
            continue
        ns, name = svc["metadata"].get("namespace"), svc["metadata"]["name"]
        label_selector = ",".join(f"{k}={v}" for k, v in selector.items())
        while time.monotonic() < deadline:
            pods, _ = client.list("v1", "Pod", ns, label_selector=label_selector)
            ready_ips = {p.get("status", {}).get("podIP") for p in pods
                         if any(c.get("type") == "Ready" and c.get("status") == "True"
                                for c in p.get("status", {}).get("conditions") or [])}
            slices, _ = client.list("discovery.k8s.io/v1", "EndpointSlice", ns,
                                    label_selector=f"kubernetes.io/service-name={name}")
            listed = {addr for s in slices for e in s.get("endpoints") or []
                      if (e.get("conditions") or {}).get("ready") for addr in e.get("addresses") or []}
            if ready_ips <= listed:
                break
            time.sleep(0.2)
