"""The cluster add-ons of the local provider: CoreDNS and the default StorageClass as manifests, and the
command lines of the add-ons that run as host processes (local-path-provisioner, kube-router, BuildKit).

- CoreDNS runs as a Deployment in kube-system labelled `k8s-app: kube-dns`, behind the Service `kube-dns` at the
  kubelet's clusterDNS address. It runs as a non-root user with a read-only root filesystem and no
  capabilities, so it listens on 1053 and the Service maps port 53 to it.
- The StorageClass `standard` (the default, as on kind) is served by local-path-provisioner, which runs as a
  host process and creates each volume's directory under the state directory through a short-lived helper
  pod running labctl's volume helper image (a static program, so the image needs no shell).
- NetworkPolicy is enforced by kube-router's firewall alone, with the admin kubeconfig; the node's bridge and
  kube-proxy keep routing and Services.
- BuildKit builds on the node's containerd, so an image it builds is at once available to pods.
"""

from __future__ import annotations

import json
from pathlib import Path

MANAGED_BY = {"app.kubernetes.io/managed-by": "labctl"}
DNS_LABELS = {"k8s-app": "kube-dns"}
DNS_PORT = 1053  # unprivileged: CoreDNS needs no capability to bind it
PROVISIONER_NAME = "rancher.io/local-path"
STORAGE_NAMESPACE = "local-path-storage"
STORAGE_SERVICE_ACCOUNT = "local-path-provisioner-service-account"
STORAGE_CLASS = "standard"
VOLUME_HELPER = "/volumehelper"


def corefile(cluster_domain: str) -> str:
    """CoreDNS's configuration: cluster names from the API, everything else from the node's resolvers."""
    return f"""\
.:{DNS_PORT} {{
    errors
    health :8080
    ready :8181
    kubernetes {cluster_domain} in-addr.arpa ip6.arpa {{
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 30
    }}
    prometheus :9153
    forward . /etc/resolv.conf {{
        max_concurrent 1000
    }}
    cache 30
    reload
    loadbalance
}}
"""


def coredns_manifests(image: str, cluster_dns: str, cluster_domain: str) -> list[dict]:
    """ServiceAccount, RBAC, ConfigMap, Deployment and Service of the cluster DNS, in apply order."""
    ns = "kube-system"
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "coredns", "namespace": ns}},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": "system:coredns", "labels": dict(MANAGED_BY)},
            "rules": [
                {"apiGroups": [""], "resources": ["services", "pods", "namespaces"], "verbs": ["list", "watch"]},
                {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]},
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": "system:coredns", "labels": dict(MANAGED_BY)},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:coredns"},
            "subjects": [{"kind": "ServiceAccount", "name": "coredns", "namespace": ns}],
        },
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "coredns", "namespace": ns},
         "data": {"Corefile": corefile(cluster_domain)}},
        {
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "coredns", "namespace": ns, "labels": dict(DNS_LABELS)},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": dict(DNS_LABELS)},
                "template": {
                    "metadata": {"labels": dict(DNS_LABELS)},
                    "spec": {
                        "serviceAccountName": "coredns",
                        "priorityClassName": "system-cluster-critical",
                        "dnsPolicy": "Default",
                        "terminationGracePeriodSeconds": 5,
                        "tolerations": [{"key": "CriticalAddonsOnly", "operator": "Exists"}],
                        "securityContext": {"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532,
                                            "seccompProfile": {"type": "RuntimeDefault"}},
                        "containers": [{
                            "name": "coredns",
                            "image": image,
                            "imagePullPolicy": "IfNotPresent",
                            "args": ["-conf", "/etc/coredns/Corefile"],
                            "ports": [
                                {"name": "dns", "containerPort": DNS_PORT, "protocol": "UDP"},
                                {"name": "dns-tcp", "containerPort": DNS_PORT, "protocol": "TCP"},
                                {"name": "metrics", "containerPort": 9153, "protocol": "TCP"},
                            ],
                            "resources": {"requests": {"cpu": "50m", "memory": "70Mi"},
                                          "limits": {"memory": "170Mi"}},
                            "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                                "capabilities": {"drop": ["ALL"]}},
                            "volumeMounts": [{"name": "config", "mountPath": "/etc/coredns", "readOnly": True}],
                            "livenessProbe": {"httpGet": {"path": "/health", "port": 8080},
                                              "initialDelaySeconds": 10, "periodSeconds": 10,
                                              "timeoutSeconds": 5, "failureThreshold": 5},
                            "readinessProbe": {"httpGet": {"path": "/ready", "port": 8181}, "periodSeconds": 1},
                        }],
                        "volumes": [{"name": "config", "configMap": {
                            "name": "coredns", "items": [{"key": "Corefile", "path": "Corefile"}]}}],
                    },
                },
            },
        },
        {
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "kube-dns", "namespace": ns,
                         "labels": {**DNS_LABELS, "kubernetes.io/name": "CoreDNS"}},
            "spec": {
                "clusterIP": cluster_dns,
                "selector": dict(DNS_LABELS),
                "ports": [
                    {"name": "dns", "port": 53, "targetPort": DNS_PORT, "protocol": "UDP"},
                    {"name": "dns-tcp", "port": 53, "targetPort": DNS_PORT, "protocol": "TCP"},
                    {"name": "metrics", "port": 9153, "targetPort": 9153, "protocol": "TCP"},
                ],
            },
        },
    ]


def storage_manifests() -> list[dict]:
    """The provisioner's namespace and helper ServiceAccount, and the default StorageClass `standard`."""
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": STORAGE_NAMESPACE, "labels": dict(MANAGED_BY)}},
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": {"name": STORAGE_SERVICE_ACCOUNT, "namespace": STORAGE_NAMESPACE}},
        {
            "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": STORAGE_CLASS, "labels": dict(MANAGED_BY),
                         "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
            "provisioner": PROVISIONER_NAME,
            "reclaimPolicy": "Delete",
            # The volume is made on the node the pod is scheduled to, as on kind.
            "volumeBindingMode": "WaitForFirstConsumer",
        },
    ]


def provisioner_config(volumes_dir: Path) -> str:
    """local-path-provisioner's config.json: every node's volumes under `volumes_dir`, made by the helper."""
    return json.dumps({
        "nodePathMap": [{"node": "DEFAULT_PATH_FOR_NON_LISTED_NODES", "paths": [str(volumes_dir)]}],
        "setupCommand": VOLUME_HELPER,
        "teardownCommand": VOLUME_HELPER,
    }, indent=2) + "\n"


def helper_pod(image: str) -> dict:
    """The template of the provisioner's helper pods (it adds the command, volumes, node and namespace)."""
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "helper-pod"},
        "spec": {"containers": [{"name": "helper-pod", "image": image, "imagePullPolicy": "IfNotPresent"}]},
    }


def provisioner_argv(binary: str, kubeconfig: Path, config_file: Path, helper_pod_file: Path,
                     helper_image: str) -> list[str]:
    """local-path-provisioner's command line, as a host process with the admin kubeconfig."""
    return [binary, "start", f"--kubeconfig={kubeconfig}", f"--config={config_file}",
            f"--helper-pod-file={helper_pod_file}", f"--helper-image={helper_image}",
            f"--namespace={STORAGE_NAMESPACE}", f"--provisioner-name={PROVISIONER_NAME}",
            f"--service-account-name={STORAGE_SERVICE_ACCOUNT}"]


def kube_router_argv(binary: str, kubeconfig: Path, node_name: str, service_cidr: str, health_port: int) -> list[str]:
    """kube-router with only its NetworkPolicy firewall: routing, service proxy and CNI are the node's own."""
    return [binary, f"--kubeconfig={kubeconfig}", f"--hostname-override={node_name}",
            "--run-firewall=true", "--run-router=false", "--run-service-proxy=false", "--enable-cni=false",
            f"--service-cluster-ip-range={service_cidr}", f"--health-port={health_port}", "--metrics-port=0"]


def buildkitd_argv(binary: str, containerd_address: Path, root: Path, address: Path) -> list[str]:
    """BuildKit on the node's containerd: what it builds lands in the CRI's namespace, ready for pods.

    RUN steps use the host's network (no bridge or CNI of BuildKit's own), and its trace socket stays in the
    state directory instead of /run/buildkit.
    """
    return [binary, "--oci-worker=false", "--containerd-worker=true",
            f"--containerd-worker-addr={containerd_address}", "--containerd-worker-namespace=k8s.io",
            "--containerd-worker-net=host", f"--root={root}", f"--addr=unix://{address}",
            f"--otel-socket-path={root / 'otel-grpc.sock'}", "--cdi-disabled"]
