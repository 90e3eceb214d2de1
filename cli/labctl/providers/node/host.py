"""Facts about the machine a local node runs on, and the record of what the node changes on it.

The host record (`/run/labctl/local.json`) is written before the node starts: which labctl state directory
owns the node, and what existed before (iptables chains, ipsets, host folders, kernel settings). `down` uses it
to remove exactly what the node added and to put kernel settings back. It lives under /run because what it
describes (chains, links, namespaces, mounts) does not survive a reboot either.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

RECORD = Path("/run/labctl/local.json")


def lock_path() -> Path:
    """The machine-wide lock every `up` and `down` of a local node holds: one node per machine at a time.

    It stays in /run/lock (like other programs' lock files), since deleting a lock file others may be waiting
    on would let two of them hold it at once.
    """
    base = Path("/run/lock")
    return (base if base.is_dir() else Path("/run")) / "labctl-local.lock"

# Kernel settings the kubelet, kube-proxy, kube-router and the CNI bridge plugin change; restored by `down`.
SYSCTLS = (
    "vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes",
    "net/ipv4/ip_forward", "net/ipv4/conf/all/route_localnet", "net/ipv6/conf/all/forwarding",
    "net/bridge/bridge-nf-call-iptables", "net/bridge/bridge-nf-call-ip6tables",
)

# Folders outside the state directory that the node's components create when missing; `down` removes the
# ones that did not exist before, once they are empty.
HOST_DIRS = (
    "/run/containerd/s", "/run/containerd/fifo", "/run/containerd/runc", "/run/containerd",
    "/var/lib/cni/results", "/var/lib/cni", "/var/log/containers",
)
# cgroup folders (under each controller) that containerd's CRI and BuildKit create for their containers.
CGROUP_PARENTS = ("k8s.io", "buildkit")


def cgroup_parents() -> list[str]:
    """The CRI's and BuildKit's cgroup folders that exist now, under every controller."""
    return sorted(str(p) for name in CGROUP_PARENTS for p in Path("/sys/fs/cgroup").glob(f"*/{name}"))

# Programs that mean another Kubernetes node runs on this machine.
_NODE_PROGRAMS = {"kubelet", "kube-proxy", "k3s", "k3s-server", "k3s-agent", "k0s", "rke2", "kube-router",
                  "microk8s", "kubelite"}
# Files that mean a cluster is installed on this machine (it may start at boot).
CLUSTER_PATHS = (
    "/etc/kubernetes/kubelet.conf", "/etc/kubernetes/admin.conf", "/etc/kubernetes/manifests/kube-apiserver.yaml",
    "/var/lib/kubelet/config.yaml", "/etc/rancher/k3s", "/var/lib/rancher/k3s", "/etc/rancher/rke2",
    "/var/lib/rancher/rke2", "/var/lib/k0s", "/var/snap/microk8s",
)

# What the node needs from the machine beyond the toolbox: Debian packages runc, containernetworking-plugins,
# iptables, ipset, conntrack and iproute2.
CNI_BIN_DIR = Path("/usr/lib/cni")
CNI_PLUGINS = ("bridge", "host-local", "loopback", "portmap")
HOST_COMMANDS = {"runc": "runc", "iptables": "iptables", "ip6tables": "iptables", "iptables-save": "iptables",
                 "iptables-restore": "iptables", "ipset": "ipset", "conntrack": "conntrack", "ip": "iproute2",
                 "umount": "mount"}


# -- the node's address -----------------------------------------------------------------------------------------

def pick_node_ip(route_source: str | None, addresses: Iterable[str]) -> str | None:
    """The node IP: the source address of the default route, else the first global address; never loopback."""
    candidates = ([route_source] if route_source else []) + list(addresses)
    for candidate in candidates:
        try:
            ip = ipaddress.ip_address(candidate)
        except ValueError:
            continue
        if ip.version == 4 and not (ip.is_loopback or ip.is_link_local or ip.is_unspecified or ip.is_multicast):
            return str(ip)
    return None


def _route_source() -> str | None:
    # connect() on a UDP socket only asks the routing table which source it would use; nothing is sent.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("203.0.113.1", 9))
            return s.getsockname()[0]
        except OSError:
            return None


def _global_addresses() -> list[str]:
    try:
        return [info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)]
    except OSError:
        return []


def primary_ipv4() -> str | None:
    """This machine's primary IPv4 address (what its default route leaves from), or None."""
    return pick_node_ip(_route_source(), _global_addresses())


# -- other clusters ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class HostProcess:
    pid: int
    argv: list[str]


def processes() -> list[HostProcess]:
    """Every process with a readable command line."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        argv = [part.decode(errors="replace") for part in raw.split(b"\0") if part]
        if argv:
            found.append(HostProcess(int(entry.name), argv))
    return found


def find_conflicts(procs: Iterable[HostProcess], existing_paths: Iterable[str], own_pids: Iterable[int],
                   own_dir: str) -> list[str]:
    """Why another cluster seems to run here: its processes (not ours) and its installed files."""
    own = set(own_pids)
    found = []
    for proc in procs:
        program = os.path.basename(proc.argv[0])
        if program not in _NODE_PROGRAMS or proc.pid in own:
            continue
        if own_dir and any(own_dir in arg for arg in proc.argv):
            continue  # ours, from a run whose pid file was lost
        found.append(f"{program} (pid {proc.pid}) is running")
    found += [f"{p} exists" for p in existing_paths]
    return found


def existing_cluster_paths() -> list[str]:
    return [p for p in CLUSTER_PATHS if Path(p).exists()]


def with_descendants(roots: Iterable[int]) -> set[int]:
    """The pids in `roots` and every process below them (a shim's pause and container processes)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found: set[int] = set()
    todo = list(roots)
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo += children.get(pid, [])
    return found


def pids_mentioning(procs: Iterable[HostProcess], text: str) -> list[int]:
    """Processes whose command line mentions `text` (a state directory, a socket path)."""
    return [p.pid for p in procs if any(text in arg for arg in p.argv)]


# -- requirements -----------------------------------------------------------------------------------------------

def missing_requirements(which=shutil.which, exists=os.path.exists) -> list[str]:
    """What the machine lacks for a real node (commands and CNI plugins), each with its Debian package."""
    missing = []
    for command, package in HOST_COMMANDS.items():
        if which(command) is None:
            missing.append(f"{command} (package {package})")
    for plugin in CNI_PLUGINS:
        if not exists(str(CNI_BIN_DIR / plugin)):
            missing.append(f"{CNI_BIN_DIR / plugin} (package containernetworking-plugins)")
    return missing


def platform_problem(platform: str = sys.platform, euid: int | None = None) -> str | None:
    """Why the local provider cannot run in this process at all (not Linux, not root), or None."""
    if not platform.startswith("linux"):
        return f"the local provider runs a real node on Linux only (this is {platform})"
    euid = os.geteuid() if euid is None else euid
    if euid != 0:
        return "the local provider needs root (containerd, iptables and network namespaces)"
    return None


# -- kernel settings --------------------------------------------------------------------------------------------

def read_sysctls(names: Iterable[str] = SYSCTLS) -> dict[str, str]:
    """Current values of kernel settings that exist here."""
    values = {}
    for name in names:
        try:
            values[name] = Path("/proc/sys", name).read_text().strip()
        except OSError:
            continue
    return values


def sysctls_to_restore(before: Mapping[str, str], now: Mapping[str, str]) -> dict[str, str]:
    """The settings whose value changed since `before`, mapped to the value to put back."""
    return {name: value for name, value in before.items() if name in now and now[name] != value}


def write_sysctls(values: Mapping[str, str]) -> list[str]:
    """Write kernel settings; returns the names that could not be written."""
    failed = []
    for name, value in values.items():
        try:
            Path("/proc/sys", name).write_text(value + "\n")
        except OSError:
            failed.append(name)
    return failed


# -- the host record --------------------------------------------------------------------------------------------

def read_record(path: Path = RECORD) -> dict | None:
    """The host record, or None when there is none (or it is unreadable)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_record(data: Mapping, path: Path = RECORD) -> None:
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(dict(data), indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def remove_record(path: Path = RECORD) -> None:
    path.unlink(missing_ok=True)
    try:
        path.parent.rmdir()
    except OSError:
        pass
