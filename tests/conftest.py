"""Shared fixtures: one sim cluster per test session, a fresh namespace per test, the official API client.

- `cluster`: brings a sim cluster up once, in a private state dir with a private KUBECONFIG (the user's own
  kubeconfig is never touched), and deletes it at the end of the session. With $LABCTL_TEST_KUBECONFIG set, the
  cluster of that file's current-context (or $LABCTL_TEST_CONTEXT) is used instead and left running.
  When no cluster can be started the test is skipped, unless $LABCTL_REQUIRE_CLUSTER=1 (then it fails).
- `namespace`: a namespace `t-<test name>-<6 hex>` created for one test and deleted after it.
- `kube_api`: a `kubernetes.client.ApiClient` for the cluster.
Tests that use `cluster` (directly or through the others) get the `cluster` marker.
"""

from __future__ import annotations

import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml


@dataclass(frozen=True)
class TestCluster:
    kubeconfig: Path
    context: str
    provider: str
    pods_run: bool
    sim: object | None = None  # the SimProvider this session started (None when reusing a cluster)
    user_kubeconfig: Path | None = None

    __test__ = False  # not a test class, despite its name


def _require() -> bool:
    return os.environ.get("LABCTL_REQUIRE_CLUSTER") == "1"


def _unavailable(reason: str):
    if _require():
        pytest.fail(f"LABCTL_REQUIRE_CLUSTER=1 but no cluster: {reason}", pytrace=False)
    pytest.skip(f"no cluster: {reason}")


@pytest.fixture(scope="session")
def unavailable():
    """Call with a reason when a test cannot get a cluster: skips, or fails under LABCTL_REQUIRE_CLUSTER=1."""
    return _unavailable


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    """The session's Kubernetes cluster."""
    reuse = os.environ.get("LABCTL_TEST_KUBECONFIG")
    if reuse:
        path = Path(reuse)
        if not path.exists():
            _unavailable(f"LABCTL_TEST_KUBECONFIG={reuse} does not exist")
        config = yaml.safe_load(path.read_text()) or {}
        context = os.environ.get("LABCTL_TEST_CONTEXT") or config.get("current-context")
        if not context:
            _unavailable(f"{reuse} has no current-context (set LABCTL_TEST_CONTEXT)")
        yield TestCluster(path, context, "existing", pods_run=os.environ.get("LABCTL_TEST_PODS_RUN") == "1")
        return

    from labctl.errors import LabError
    from labctl.providers.sim import SimProvider

    root = tmp_path_factory.mktemp("labctl-state")
    user_kubeconfig = root / "user-kubeconfig"
    sim = SimProvider(state_root=root, user_kubeconfig=user_kubeconfig)
    try:
        sim.up()
    except LabError as e:
        _unavailable(f"{e.message}" + (f" ({e.hint})" if e.hint else ""))
    try:
        yield TestCluster(sim.kubeconfig_path, sim.context, "sim", pods_run=False, sim=sim,
                          user_kubeconfig=user_kubeconfig)
    finally:
        sim.down()


@pytest.fixture(scope="session")
def kube_api(cluster):
    """The official client's ApiClient for the session cluster."""
    from kubernetes import config

    client = config.new_client_from_config(config_file=str(cluster.kubeconfig), context=cluster.context)
    yield client
    client.close()


def namespace_name(test_name: str, suffix: str | None = None) -> str:
    """`t-<test name>-<6 hex>`: a valid namespace name (DNS label, at most 63 characters)."""
    slug = re.sub(r"[^a-z0-9]+", "-", test_name.lower()).strip("-")
    slug = re.sub(r"^test-", "", slug)[:48].strip("-") or "x"
    return f"t-{slug}-{suffix or secrets.token_hex(3)}"


@pytest.fixture
def namespace(request, kube_api):
    """A fresh namespace for this test, deleted afterwards."""
    from kubernetes import client

    core = client.CoreV1Api(kube_api)
    name = namespace_name(request.node.name)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    try:
        core.delete_namespace(name)
    except client.ApiException as e:
        if e.status != 404:
            raise


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.cluster)


# -- the local provider: one real node per session ------------------------------------------------------------

@dataclass(frozen=True)
class LocalCluster:
    """The session's local cluster, and the host's state taken before it started."""

    provider: object  # the LocalProvider
    kubeconfig: Path
    context: str
    state_root: Path
    host_before: dict
    up_seconds: float

    __test__ = False

    def host_state(self) -> dict:
        """What a node can leave on the host: see `local_host_state`."""
        return local_host_state(self.state_root)


# The node's container processes (its shims mention the state root in their command line).
_NODE_PROGRAMS = {"pause", "coredns", "httpecho", "volumehelper"}
_NODE_MOUNT_WORDS = ("netns", "containerd", "kubelet", "cni", "k8s.io", "buildkit")


def local_host_state(state_root: Path) -> dict:
    """Processes, links, iptables/ip6tables rules, ipsets, netns, mounts, folders, kernel settings and cgroups
    that a local node creates, as comparable plain data."""
    import subprocess

    from labctl.providers.node import cleanup, host

    def lines(argv):
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        return sorted(re.sub(r"\[\d+:\d+\]", "", line) for line in done.stdout.splitlines()
                      if line.strip() and not line.startswith("#"))

    root = str(state_root)
    procs = sorted(" ".join(p.argv) for p in host.processes()
                   if any(root in a for a in p.argv) or os.path.basename(p.argv[0]) in _NODE_PROGRAMS)
    mounts = sorted(m for m in cleanup.mount_points()
                    if m.startswith(root) or any(w in m for w in _NODE_MOUNT_WORDS))
    netns = Path("/run/netns")
    return {
        "processes": procs,
        "links": sorted(os.listdir("/sys/class/net")),
        "iptables": lines(["iptables-save"]),
        "ip6tables": lines(["ip6tables-save"]),
        "ipsets": sorted(cleanup.ipset_names()),
        "netns": sorted(os.listdir(netns)) if netns.is_dir() else None,
        "mounts": mounts,
        "dirs": {d: Path(d).exists() for d in (*host.HOST_DIRS, "/run/netns", "/run/labctl", "/var/lib/kubelet",
                                                "/etc/cni", "/opt/cni", "/opt/containerd", "/run/nri")},
        "sysctls": host.read_sysctls(),
        "cgroups": sorted(str(p) for n in ("k8s.io*", "buildkit*") for p in Path("/sys/fs/cgroup").glob(f"*/{n}")),
    }


def _local_unavailable(reason: str):
    if os.environ.get("LABCTL_REQUIRE_LOCAL") == "1":
        pytest.fail(f"LABCTL_REQUIRE_LOCAL=1 but the local provider cannot run: {reason}", pytrace=False)
    pytest.skip(f"local provider: {reason}")


@pytest.fixture(scope="session")
def local_cluster(tmp_path_factory):
    """A local cluster (real node) brought up once per session in a private state dir and kubeconfig.

    Skipped unless this is Linux, root, with the local toolbox and packages installed; with
    $LABCTL_REQUIRE_LOCAL=1 it fails instead. Deleted at the end of the session.
    """
    import time

    from labctl.errors import LabError
    from labctl.providers.local import LocalProvider, can_run
    from labctl.providers.node import host

    problem = host.platform_problem() or (
        f"missing {', '.join(host.missing_requirements())}" if host.missing_requirements() else None)
    if problem is None and not can_run():
        problem = "the local toolbox group is not installed (`labctl toolbox install`)"
    if problem:
        _local_unavailable(problem)
    root = tmp_path_factory.mktemp("local")
    before = local_host_state(root)
    provider = LocalProvider(state_root=root / "state", user_kubeconfig=root / "kubeconfig")
    started = time.monotonic()
    try:
        provider.up()
    except LabError as e:
        try:
            provider.down()
        finally:
            _local_unavailable(f"`up` failed: {e.message}" + (f" ({e.hint})" if e.hint else ""))
    try:
        yield LocalCluster(provider, provider.kubeconfig_path, provider.context, root, before,
                           time.monotonic() - started)
    finally:
        provider.down()
