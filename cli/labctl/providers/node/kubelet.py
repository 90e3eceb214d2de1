"""The kubelet of the local node: its KubeletConfiguration and command line.

Settings that differ from the kubelet's defaults, and why:
- cgroup v1 machines: `failCgroupV1: false` (1.35+ refuses v1 otherwise), `cgroupDriver: cgroupfs`, and no
  QoS cgroups or node-allocatable enforcement (`cgroupsPerQOS: false`, `enforceNodeAllocatable: []`), so the
  kubelet needs no systemd and creates no cgroup hierarchy of its own.
- `failSwapOn: false`: a learner's machine may have swap.
- `makeIPTablesUtilChains: false`: the KUBE-FIREWALL/KUBE-KUBELET-CANARY/KUBE-IPTABLES-HINT chains are for
  other components; kube-proxy makes what it needs.
- `oomScoreAdj: 0`: some machines forbid negative oom_score_adj.
- image GC off and low eviction thresholds: lab images are imported, not pulled, so an image the kubelet
  deleted to free disk could not come back, and a nearly full laptop disk must not taint the only node.
- every path (root dir, pod logs, volume plugins) under the state directory.
- the API is served on the node IP with a certificate from the cluster CA; clients authenticate with
  certificates or tokens (webhook), never anonymously.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# systemd-resolved's list of real upstream servers: its stub (127.0.0.53) in /etc/resolv.conf is unreachable
# from a pod's network namespace.
_RESOLVED_UPSTREAM = Path("/run/systemd/resolve/resolv.conf")


@dataclass(frozen=True)
class KubeletSettings:
    node_ip: str
    port: int
    healthz_port: int
    ca_file: Path
    tls_cert: Path
    tls_key: Path
    runtime_endpoint: str
    cluster_dns: str
    cluster_domain: str
    pod_logs_dir: Path
    volume_plugin_dir: Path
    resolv_conf: Path


def resolv_conf(stub: Path = Path("/etc/resolv.conf"), upstream: Path = _RESOLVED_UPSTREAM) -> Path:
    """The resolv.conf pods with `dnsPolicy: Default` get: the real upstream servers, not a 127.0.0.53 stub."""
    try:
        text = stub.read_text()
    except OSError:
        return stub
    uses_stub = any(line.split()[1:2] and line.split()[1].startswith("127.")
                    for line in text.splitlines() if line.startswith("nameserver"))
    return upstream if uses_stub and upstream.exists() else stub


def config(s: KubeletSettings) -> dict:
    """The KubeletConfiguration (kubelet.config.k8s.io/v1beta1) for the local node."""
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": s.node_ip,
        "port": s.port,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": s.healthz_port,
        "tlsCertFile": str(s.tls_cert),
        "tlsPrivateKeyFile": str(s.tls_key),
        "rotateCertificates": False,
        "serverTLSBootstrap": False,
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True, "cacheTTL": "2m0s"},
            "x509": {"clientCAFile": str(s.ca_file)},
        },
        "authorization": {"mode": "Webhook",
                          "webhook": {"cacheAuthorizedTTL": "5m0s", "cacheUnauthorizedTTL": "30s"}},
        "clusterDomain": s.cluster_domain,
        "clusterDNS": [s.cluster_dns],
        "resolvConf": str(s.resolv_conf),
        "containerRuntimeEndpoint": s.runtime_endpoint,
        "imageServiceEndpoint": s.runtime_endpoint,
        "failCgroupV1": False,
        "cgroupDriver": "cgroupfs",
        "cgroupsPerQOS": False,
        "enforceNodeAllocatable": [],
        "failSwapOn": False,
        "makeIPTablesUtilChains": False,
        "oomScoreAdj": 0,
        "podLogsDir": str(s.pod_logs_dir),
        "volumePluginDir": str(s.volume_plugin_dir),
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%",
                         "nodefs.inodesFree": "1%"},
        "serializeImagePulls": False,
        "maxPods": 110,
        "registerNode": True,
    }


def argv(kubelet: str, config_file: Path, kubeconfig: Path, root_dir: Path, node_name: str,
         node_ip: str) -> list[str]:
    """The kubelet's command line; everything else is in its configuration file."""
    return [kubelet, f"--config={config_file}", f"--kubeconfig={kubeconfig}", f"--root-dir={root_dir}",
            f"--cert-dir={root_dir / 'pki'}", f"--hostname-override={node_name}", f"--node-ip={node_ip}"]
