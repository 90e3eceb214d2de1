"""containerd for the local node: its configuration (version 3) and the `ctr` commands labctl runs.

The node's containerd is private: its own root, state and socket under the cluster's state directory, so it
never meets a containerd that Docker or another runtime runs on the same machine.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

from labctl.errors import ProviderError

NAMESPACE = "k8s.io"  # the namespace the CRI plugin (and so the kubelet) uses
SNAPSHOTTER = "overlayfs"
# Plugins that act outside the state directory (NRI's socket under /var/run/nri, image verifiers under /opt)
# and storage back ends a lab never uses.
DISABLED_PLUGINS = (
    "io.containerd.nri.v1.nri",
    "io.containerd.image-verifier.v1.bindir",
    "io.containerd.snapshotter.v1.zfs",
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.snapshotter.v1.blockfile",
    "io.containerd.snapshotter.v1.erofs",
    "io.containerd.tracing.processor.v1.otlp",
    "io.containerd.internal.v1.tracing",
)


@dataclass(frozen=True)
class ContainerdLayout:
    """Where the node's containerd keeps everything, and what it runs containers with."""

    root: Path
    state: Path
    address: Path
    opt: Path
    runc_root: Path
    cni_conf_dir: Path
    cni_bin_dir: Path
    sandbox_image: str
    runc: str


def _s(value: str | Path) -> str:
    # TOML basic strings accept JSON's escapes.
    return json.dumps(str(value))


def config_toml(layout: ContainerdLayout) -> str:
    """containerd's config.toml (version 3) for the node.

    `restrict_oom_score_adj` is required on machines that forbid negative oom_score_adj: without it every pod
    sandbox dies with "runc create failed: ... can't get final child's PID from pipe: EOF".
    `netns_mounts_under_state_dir` keeps the pods' network namespaces out of /run/netns.
    """
    cri_runtime = "plugins.'io.containerd.cri.v1.runtime'"
    runc = f"{cri_runtime}.containerd.runtimes.runc"
    disabled = ", ".join(_s(p) for p in DISABLED_PLUGINS)
    return f"""\
version = 3
root = {_s(layout.root)}
state = {_s(layout.state)}
disabled_plugins = [{disabled}]

[grpc]
  address = {_s(layout.address)}

[ttrpc]
  address = {_s(str(layout.address) + ".ttrpc")}

[debug]
  level = "warn"

[metrics]
  address = ""

[plugins.'io.containerd.internal.v1.opt']
  path = {_s(layout.opt)}

[{cri_runtime}]
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  enable_selinux = false

[{cri_runtime}.containerd]
  default_runtime_name = "runc"

[{runc}]
  runtime_type = "io.containerd.runc.v2"

[{runc}.options]
  SystemdCgroup = false
  BinaryName = {_s(layout.runc)}
  Root = {_s(layout.runc_root)}

[{cri_runtime}.cni]
  bin_dirs = [{_s(layout.cni_bin_dir)}]
  conf_dir = {_s(layout.cni_conf_dir)}
  max_conf_num = 1

[plugins.'io.containerd.cri.v1.images']
  snapshotter = "{SNAPSHOTTER}"

[plugins.'io.containerd.cri.v1.images'.pinned_images]
  sandbox = {_s(layout.sandbox_image)}
"""


class Ctr:
    """`ctr` against the node's containerd, in the CRI's namespace."""

    def __init__(self, ctr: str | Path, address: Path, namespace: str = NAMESPACE) -> None:
        self.ctr = str(ctr)
        self.address = str(address)
        self.namespace = namespace

    def argv(self, *args: str) -> list[str]:
        return [self.ctr, "--address", self.address, "--namespace", self.namespace, *args]

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        try:
            return subprocess.run(self.argv(*args), capture_output=True, text=True, timeout=timeout, check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            return subprocess.CompletedProcess(self.argv(*args), 127, "", str(e))

    def answers(self) -> bool:
        """True when containerd serves its API on the socket."""
        return self.run("version", timeout=5).returncode == 0

    def image_names(self) -> set[str]:
        done = self.run("images", "list", "--quiet", timeout=15)
        return set(done.stdout.split()) if done.returncode == 0 else set()

    def import_tar(self, tar: Path) -> None:
        """Import a docker-archive or OCI tar, unpacked for the CRI's snapshotter."""
        done = self.run("images", "import", "--snapshotter", SNAPSHOTTER, "--local", str(tar), timeout=300)
        if done.returncode != 0:
            detail = [line for line in (done.stderr + done.stdout).strip().splitlines()
                      if "level=warning" not in line]
            raise ProviderError(f"containerd could not import {tar}: {detail[-1] if detail else 'no output'}",
                                hint="is it an image tar (docker-archive or OCI)? see containerd.log in the state dir")

    def remove_all_containers(self) -> list[str]:
        """Kill every task and delete every container of the namespace; returns the containers left."""
        tasks = self.run("tasks", "list", "--quiet", timeout=15)
        for task in tasks.stdout.split() if tasks.returncode == 0 else []:
            self.run("tasks", "kill", "--signal", "SIGKILL", task, timeout=15)
        for task in tasks.stdout.split() if tasks.returncode == 0 else []:
            self.run("tasks", "delete", "--force", task, timeout=30)
        containers = self.run("containers", "list", "--quiet", timeout=15)
        for container in containers.stdout.split() if containers.returncode == 0 else []:
            self.run("containers", "delete", container, timeout=30)
        left = self.run("containers", "list", "--quiet", timeout=15)
        return left.stdout.split() if left.returncode == 0 else []
