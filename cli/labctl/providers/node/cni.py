"""The node's pod network: one Linux bridge, host-local addresses, port mappings and loopback.

The bridge is the pods' gateway; traffic between pods on the bridge passes through iptables (br_netfilter), so
kube-proxy's Service rules and kube-router's NetworkPolicy rules apply to it. The address leases live under the
state directory, not in /var/lib/cni.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

CNI_VERSION = "1.0.0"


def gateway(subnet: str) -> str:
    """The bridge's address: the first host address of the pod subnet."""
    return str(next(ipaddress.ip_network(subnet).hosts()))


def conflist(name: str, bridge: str, subnet: str, lease_dir: Path) -> dict:
    """The CNI network configuration list for the node's pods."""
    return {
        "cniVersion": CNI_VERSION,
        "name": name,
        "plugins": [
            {
                "type": "bridge",
                "bridge": bridge,
                "isGateway": True,
                # Lets a pod reach itself through its own Service (kube-proxy masquerades that hairpin).
                "hairpinMode": True,
                # Pods reach only this machine; Service traffic is masqueraded by kube-proxy where needed.
                "ipMasq": False,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": subnet, "gateway": gateway(subnet)}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(lease_dir),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
            {"type": "loopback"},
        ],
    }
