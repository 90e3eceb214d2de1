"""`labctl doctor`: what this machine has for each provider, with a fix for what is missing."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass

from labctl.errors import LabError


@dataclass(frozen=True)
class Finding:
    name: str
    level: str          # ok | warn | fail
    detail: str
    fix: str = ""
    enables: tuple[str, ...] = ()   # providers this finding is required for


def _run(argv: list[str], timeout: float = 10) -> tuple[int, str]:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        return 127, str(e)
    return out.returncode, (out.stdout + out.stderr).strip()


def _toolbox(name: str) -> str | None:
    try:
        from labctl.toolbox import binary

        return str(binary(name))
    except LabError:
        return None


def run(state) -> list[Finding]:
    found: list[Finding] = []
    py = sys.version_info
    found.append(Finding("python", "ok" if py >= (3, 11) else "fail", platform.python_version(),
                         "install Python 3.11 or newer"))
    kubectl = _toolbox("kubectl")
    if kubectl:
        found.append(Finding("kubectl", "ok", f"toolbox {kubectl} (use `labctl kubectl`)"))
    else:
        system = shutil.which("kubectl")
        found.append(Finding("kubectl", "warn", f"no toolbox kubectl{'; ' + system + ' may be out of skew' if system else ''}",
                             "labctl toolbox install kubectl"))
    docker = shutil.which("docker")
    if not docker:
        found.append(Finding("docker", "warn", "not installed", "install Docker to use the kind provider",
                             ("kind",)))
    else:
        rc, out = _run(["docker", "info", "--format", "{{.ServerVersion}}"])
        found.append(Finding("docker", "ok" if rc == 0 else "warn",
                             f"engine {out}" if rc == 0 else "client present, no engine running",
                             "start the Docker engine (or Docker Desktop) to use the kind provider", ("kind",)))
    kind = _toolbox("kind") or shutil.which("kind")
    found.append(Finding("kind", "ok" if kind else "warn", kind or "not installed", "labctl toolbox install kind",
                         ("kind",)))
    go = shutil.which("go")
    if go:
        rc, out = _run([go, "version"])
        found.append(Finding("go", "ok", out.replace("go version ", "")))
    else:
        found.append(Finding("go", "warn", "not installed: the toolbox downloads release binaries instead",
                             "install Go 1.26+ to build the toolbox offline from the module proxy"))
    missing = [n for n in ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "etcd", "kwok")
               if not _toolbox(n)]
    found.append(Finding("sim toolbox", "fail" if missing else "ok",
                         ("missing " + ", ".join(missing)) if missing else "control plane and kwok installed",
                         "labctl toolbox install sim", ("sim", "local")))
    found.extend(_local_findings())
    found.append(_cluster(state))
    return found


def _local_findings() -> list[Finding]:
    if platform.system() != "Linux":
        return [Finding("local", "warn", f"needs Linux (this is {platform.system()})",
                        "use `--provider kind` (Docker Desktop) or `--provider sim`", ("local",))]
    out = []
    root = os.geteuid() == 0
    out.append(Finding("root", "ok" if root else "warn", "running as root" if root else "not root",
                       "the local provider needs root: sudo labctl up --provider local", ("local",)))
    for name, cmd, pkg in (("runc", "runc", "runc"), ("iptables", "iptables", "iptables"),
                           ("ipset", "ipset", "ipset"), ("conntrack", "conntrack", "conntrack"),
                           ("debootstrap", "debootstrap", "debootstrap")):
        path = shutil.which(cmd)
        out.append(Finding(name, "ok" if path else "warn", path or "not installed",
                           f"apt-get install {pkg}", ("local",)))
    cni = os.path.exists("/usr/lib/cni/bridge")
    out.append(Finding("cni plugins", "ok" if cni else "warn", "/usr/lib/cni" if cni else "not installed",
                       "apt-get install containernetworking-plugins", ("local",)))
    missing = [n for n in ("kubelet", "kube-proxy", "containerd", "coredns", "buildkitd") if not _toolbox(n)]
    out.append(Finding("local toolbox", "warn" if missing else "ok",
                       ("missing " + ", ".join(missing)) if missing else "node components installed",
                       "labctl toolbox install local", ("local",)))
    return out


def _cluster(state) -> Finding:
    from labctl import session

    if not state.cluster:
        return Finding("cluster", "warn", "none is up", "labctl up")
    try:
        target = session.resolve(state)
        client = session.connect(target)
        ok = client.readyz()
    except LabError as e:
        return Finding("cluster", "fail", f"{state.cluster.get('context')}: {e}", "labctl up")
    return Finding("cluster", "ok" if ok else "fail",
                   f"{target.context} ({target.provider}) {'ready' if ok else 'not ready'}",
                   "labctl down && labctl up")


def best_provider(findings: list[Finding]) -> str | None:
    """kind, else local, else sim: the first whose requirements all hold."""
    for provider in ("kind", "local", "sim"):
        needed = [f for f in findings if provider in f.enables]
        if needed and all(f.level == "ok" for f in needed):
            return provider
    return None
