"""The values the check engine passes around, and what it knows about Kubernetes kinds."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from labctl.labs import Check

NOT_ON_PROVIDER = "not verifiable on this provider: pods do not run"

CHECK_TYPES = (
    "exists",
    "absent",
    "matches",
    "expression",
    "condition",
    "ready",
    "endpoints",
    "count",
    "probes",
    "resources",
    "security",
    "image-pinned",
    "http",
    "probe",
    "scenario",
)

WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob", "Pod")

# Built-in kinds that live outside namespaces. A lab naming another cluster-scoped kind (a custom
# resource) says `scope: Cluster`.
CLUSTER_SCOPED_KINDS = frozenset(
    {
        "APIService",
        "CertificateSigningRequest",
        "ClusterRole",
        "ClusterRoleBinding",
        "CSIDriver",
        "CSINode",
        "CustomResourceDefinition",
        "GatewayClass",
        "IngressClass",
        "MutatingWebhookConfiguration",
        "Namespace",
        "Node",
        "PersistentVolume",
        "PriorityClass",
        "RuntimeClass",
        "StorageClass",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
        "ValidatingWebhookConfiguration",
        "VolumeAttachment",
    }
)

# apiVersions the API server serves for built-in kinds, so a lab that writes `apiVersion: v1, kind:
# Deployment` is refused on load instead of reporting "not found" forever.
KNOWN_API_VERSIONS: Mapping[str, frozenset[str]] = {
    kind: frozenset(versions)
    for kind, versions in {
        "ConfigMap": ["v1"],
        "Endpoints": ["v1"],
        "Event": ["v1", "events.k8s.io/v1"],
        "LimitRange": ["v1"],
        "Namespace": ["v1"],
        "Node": ["v1"],
        "PersistentVolume": ["v1"],
        "PersistentVolumeClaim": ["v1"],
        "Pod": ["v1"],
        "ResourceQuota": ["v1"],
        "Secret": ["v1"],
        "Service": ["v1"],
        "ServiceAccount": ["v1"],
        "DaemonSet": ["apps/v1"],
        "Deployment": ["apps/v1"],
        "ReplicaSet": ["apps/v1"],
        "StatefulSet": ["apps/v1"],
        "CronJob": ["batch/v1"],
        "Job": ["batch/v1"],
        "HorizontalPodAutoscaler": ["autoscaling/v2", "autoscaling/v1"],
        "PodDisruptionBudget": ["policy/v1"],
        "Ingress": ["networking.k8s.io/v1"],
        "IngressClass": ["networking.k8s.io/v1"],
        "NetworkPolicy": ["networking.k8s.io/v1"],
        "EndpointSlice": ["discovery.k8s.io/v1"],
        "Role": ["rbac.authorization.k8s.io/v1"],
        "RoleBinding": ["rbac.authorization.k8s.io/v1"],
        "ClusterRole": ["rbac.authorization.k8s.io/v1"],
        "ClusterRoleBinding": ["rbac.authorization.k8s.io/v1"],
        "StorageClass": ["storage.k8s.io/v1"],
        "CustomResourceDefinition": ["apiextensions.k8s.io/v1"],
        "PriorityClass": ["scheduling.k8s.io/v1"],
        "Lease": ["coordination.k8s.io/v1"],
    }.items()
}


@dataclass(frozen=True)
class Result:
    """The outcome of one check: passed True/False, or None when this provider cannot verify it."""

    passed: bool | None
    reason: str


@dataclass(frozen=True)
class FetchKey:
    """One list a run reads from the API: every object of a kind in a namespace (None: cluster-scoped)."""

    api_version: str
    kind: str
    namespace: str | None


@dataclass(frozen=True)
class HttpResponse:
    """What an `http` check's request got back through the service proxy."""

    status: int
    body: bytes
    elapsed_ms: float
    headers: Mapping[str, str] = field(default_factory=dict)


def spec_of(check: Check | Mapping[str, Any]) -> Mapping[str, Any]:
    """The check's mapping as written in lab.yaml, from a Check or from the mapping itself."""
    if isinstance(check, Mapping):
        return check
    return check.spec


def needs_running(spec: Mapping[str, Any]) -> bool:
    """Whether only real pods can verify the check (`needs: running`, implied by `http`, `probe`, `scenario`)."""
    return spec.get("needs") == "running" or spec.get("type") in ("http", "probe", "scenario")


def key_namespace(ref: Mapping[str, Any], namespace: str) -> str | None:
    """The namespace an object reference is read in: its own, the lab's, or None when cluster-scoped."""
    scope = ref.get("scope")
    kind = ref.get("kind")
    if scope == "Cluster" or (scope is None and isinstance(kind, str) and kind in CLUSTER_SCOPED_KINDS):
        return None
    own = ref.get("namespace")
    return own if isinstance(own, str) and own else namespace
