"""kube-proxy of the local node: Services through iptables.

Its conntrack settings are zero ("leave the kernel's value"), so it does not resize the host's connection
tracking table or change its timeouts; its own oom_score_adj stays 0 (some machines forbid negative values).
"""

from __future__ import annotations

from pathlib import Path


def config(kubeconfig: Path, node_name: str, cluster_cidr: str, healthz_port: int, metrics_port: int) -> dict:
    """The KubeProxyConfiguration (kubeproxy.config.k8s.io/v1alpha1) for the local node."""
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "mode": "iptables",
        "hostnameOverride": node_name,
        "clusterCIDR": cluster_cidr,
        "healthzBindAddress": f"127.0.0.1:{healthz_port}",
        "metricsBindAddress": f"127.0.0.1:{metrics_port}",
        "oomScoreAdj": 0,
        # NodePorts on the node IP only, not on every address of the machine.
        "nodePortAddresses": ["primary"],
        "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
        "iptables": {"masqueradeAll": False, "syncPeriod": "30s", "minSyncPeriod": "1s"},
    }


def argv(kube_proxy: str, config_file: Path) -> list[str]:
    """kube-proxy's command line."""
    return [kube_proxy, f"--config={config_file}"]


def cleanup_argv(kube_proxy: str) -> list[str]:
    """`kube-proxy --cleanup`: removes the chains (and IPVS/nftables state) kube-proxy creates, then exits."""
    return [kube_proxy, "--cleanup"]
