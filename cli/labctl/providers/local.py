"""The local provider: the sim's real control plane plus one real node on this Linux machine (root).

The control plane is the sim provider's (same toolbox, certificates, etcd, API server, controller-manager and
scheduler), with the API server listening on the node IP so pods reach it through the `kubernetes` Service.
The node is real: containerd with runc, a CNI bridge, the kubelet, kube-proxy (iptables), CoreDNS, a default
StorageClass `standard` (local-path-provisioner), NetworkPolicy enforcement (kube-router's firewall) and
BuildKit on the node's containerd for `labctl image build`. Images come from no registry: labctl builds the
node's own (pause, CoreDNS, the volume helper) from static binaries and imports them with `ctr`.

Everything lives under the cluster's state directory. What the node must change on the host (iptables and
ip6tables chains, ipsets, the bridge, mounts, a few kernel settings) is recorded before it starts (see
`node.host`) and removed by `down`, which also stops every pod first so no sandbox outlives the cluster.
It refuses to start beside another cluster on the same machine rather than share its chains.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import yaml

from labctl.errors import ClusterUnreachable, LabError, ProviderError, ToolboxError
from labctl.providers import kubeconfig, procs, users
from labctl.providers.base import ComponentStatus, Progress, ProviderStatus, node_ready, probe_api, quiet
from labctl.providers.node import addons, cleanup, cni, containerd, host, images, kubelet, kubeproxy
from labctl.providers.sim import DNS_DOMAIN, SERVICE_CIDR, SimProvider

if TYPE_CHECKING:
    from labctl.providers import pki

CONTEXT = "labctl-local"
NODE_NAME = "labctl-local"
POD_SUBNET = "10.244.0.0/24"
CLUSTER_DNS = "10.96.0.10"
BRIDGE = "labctl0"
CNI_NETWORK = "labctl"

CONTROL_PLANE = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
NODE_COMPONENTS = ("containerd", "kubelet", "kube-proxy", "buildkitd", "local-path-provisioner", "kube-router")
COMPONENTS = CONTROL_PLANE + NODE_COMPONENTS
# Binaries the node runs without tracking them as components.
HELPERS = ("ctr", "containerd-shim-runc-v2", "coredns")
# Ports on the node IP (reached by the API server and pods), then ports on loopback; preferred numbers first.
NODE_IP_PORTS = {"kube-apiserver": 6443, "kubelet": 10250}
LOOPBACK_PORTS = {"etcd-client": None, "etcd-peer": None, "kubelet-healthz": 10248, "kube-proxy-healthz": 10256,
                  "kube-proxy-metrics": 10249, "kube-router-health": 20244}
PORTS = tuple(NODE_IP_PORTS) + tuple(LOOPBACK_PORTS)

READY_TIMEOUT = 180.0
DRAIN_TIMEOUT = 45.0
POLL = 0.1
# A unix socket path must fit in sockaddr_un (107 bytes and a NUL); the longest one the node makes in its
# state directory is the kubelet's device-plugin socket.
_SOCKET_PATH_MAX = 107
_LONGEST_SOCKET = "kubelet/device-plugins/kubelet.sock"
_ALTERNATIVES = "use `labctl up --provider kind` where Docker runs, or `--provider sim` (no pods run there)"
_INSTALL_HINT = "run `labctl toolbox install` (the local group)"


def can_run() -> bool:
    """True when this machine and process can run the local provider: Linux, root, binaries and packages."""
    if host.platform_problem() is not None or host.missing_requirements():
        return False
    try:
        from labctl.toolbox import binary

        for name in COMPONENTS + HELPERS:
            binary(name)
    except (ImportError, ToolboxError):
        return False
    return True


def _died(name: str, log_tail: str, log: Path) -> ProviderError:
    lines = "\n".join(f"  {line[:240]}" for line in log_tail.splitlines()[-8:]) or "  (it printed nothing)"
    if "address already in use" in log_tail:
        return ProviderError(f"{name} could not listen: a port it was given is in use; the end of {log}:\n{lines}",
                             hint="run `labctl up` again to choose other ports")
    return ProviderError(f"{name} exited while the local cluster was starting; the end of {log}:\n{lines}",
                         hint="`labctl down` removes what started; `labctl doctor` checks the machine")


def deployment_available(deployment: dict | None) -> bool:
    """True when a Deployment reports at least one available replica and its Available condition."""
    if not deployment:
        return False
    status = deployment.get("status") or {}
    conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
    return (status.get("availableReplicas") or 0) >= 1 and conditions.get("Available") == "True"


def _cert_ips(path: Path) -> set[str]:
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, x509.ExtensionNotFound):
        return set()
    return {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}


class LocalProvider(SimProvider):
    """The sim's control plane and a real node, as host processes under the state directory (Linux, root)."""

    name = "local"
    pods_run = True
    components = COMPONENTS
    component_kubeconfigs = ("kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy")
    containerd_namespace = containerd.NAMESPACE

    def __init__(self, state_root: Path | None = None, user_kubeconfig: Path | None = None) -> None:
        """`state_root` and `user_kubeconfig` default to the target user's (see `users`, `kubeconfig`)."""
        super().__init__(state_root, user_kubeconfig)
        self._node_ip: str | None = None

    # -- layout ----------------------------------------------------------------------------------------------

    @property
    def context(self) -> str:
        return CONTEXT

    @property
    def node_ip(self) -> str:
        """The address the API server and kubelet listen on: the host's primary IPv4 address."""
        if self._node_ip is None:
            recorded = self._read_meta().get("node_ip")
            current = host.primary_ipv4()
            self._node_ip = current or recorded
            if self._node_ip is None:
                raise ProviderError("this machine has no IPv4 address other than loopback; the node needs one",
                                    hint="connect a network interface (pods reach the API server on that address)")
        return self._node_ip

    @property
    def api_host(self) -> str:
        return self.node_ip

    @property
    def containerd_address(self) -> Path:
        """The node's containerd socket (for `ctr --address` and BuildKit's containerd worker)."""
        return self.dir / "containerd" / "containerd.sock"

    @property
    def buildkit_address(self) -> str:
        """BuildKit's address for `buildctl --addr`."""
        return f"unix://{self.dir / 'buildkit' / 'buildkitd.sock'}"

    def _path(self, *parts: str) -> Path:
        return self.dir.joinpath(*parts)

    def _containerd_layout(self) -> containerd.ContainerdLayout:
        return containerd.ContainerdLayout(
            root=self._path("containerd", "root"), state=self._path("containerd", "state"),
            address=self.containerd_address, opt=self._path("containerd", "opt"), runc_root=self._path("runc"),
            cni_conf_dir=self._path("cni", "net.d"), cni_bin_dir=host.CNI_BIN_DIR,
            sandbox_image=images.PAUSE_IMAGE, runc=shutil.which("runc") or "runc",
        )

    def _ctr(self) -> containerd.Ctr:
        from labctl.toolbox import binary

        return containerd.Ctr(binary("ctr"), self.containerd_address)

    # -- the provider API for images -------------------------------------------------------------------------

    def import_image_tar(self, path: Path) -> None:
        """Import an image tar (docker-archive or OCI) into the node's containerd, where pods find it."""
        if self.procs.running("containerd") is None:
            raise ProviderError("the local cluster's containerd is not running",
                                hint="run `labctl up --provider local`")
        self._ctr().import_tar(Path(path))

    # -- certificates and kubeconfigs ------------------------------------------------------------------------

    def _apiserver_sans(self) -> tuple[list[str], list[str]]:
        from labctl.providers import pki  # cryptography costs ~0.2 s to import: only when certificates are made

        return pki.apiserver_sans(SERVICE_CIDR, DNS_DOMAIN, extra_dns=[NODE_NAME], extra_ips=[self.node_ip])

    def _pki_leaves(self, ca: pki.CertKey) -> dict[str, Callable[[], pki.CertKey]]:
        from labctl.providers import pki  # cryptography costs ~0.2 s to import: only when certificates are made

        leaves = {k: v for k, v in super()._pki_leaves(ca).items() if k != "kwok"}
        ip = self.node_ip
        leaves.update({
            "apiserver-kubelet-client": lambda: pki.issue_client_cert(ca, "kube-apiserver-kubelet-client",
                                                                      ["system:masters"]),
            "kubelet": lambda: pki.issue_client_cert(ca, f"system:node:{NODE_NAME}", ["system:nodes"]),
            "kubelet-serving": lambda: pki.issue_serving_cert(ca, NODE_NAME, [NODE_NAME, "localhost"],
                                                              [ip, "127.0.0.1"]),
            "kube-proxy": lambda: pki.issue_client_cert(ca, "system:kube-proxy"),
        })
        return leaves

    def _ensure_pki(self) -> None:
        # A machine whose address changed (a laptop on another network) needs serving certificates for the new one.
        for stem in ("kube-apiserver", "kubelet-serving"):
            crt = self.pki_dir / f"{stem}.crt"
            if crt.exists() and self.node_ip not in _cert_ips(crt):
                crt.unlink()
        super()._ensure_pki()

    def _write_meta(self, ports: dict[str, int]) -> None:
        meta = {"ports": ports, "context": CONTEXT, "service_cidr": SERVICE_CIDR, "node_ip": self.node_ip,
                "node_name": NODE_NAME, "pod_subnet": POD_SUBNET, "cluster_dns": CLUSTER_DNS}
        (self.dir / "cluster.json").write_text(json.dumps(meta, indent=2) + "\n")

    # -- component command lines -----------------------------------------------------------------------------

    def _argvs(self, binaries: dict[str, str], ports: dict[str, int]) -> dict[str, list[str]]:
        argvs = super()._argvs(binaries, ports)
        p = self.pki_dir
        argvs["kube-apiserver"] += [
            f"--advertise-address={self.node_ip}",
            f"--kubelet-client-certificate={p / 'apiserver-kubelet-client.crt'}",
            f"--kubelet-client-key={p / 'apiserver-kubelet-client.key'}",
            f"--kubelet-certificate-authority={p / 'ca.crt'}",
            "--kubelet-preferred-address-types=InternalIP,Hostname",
            "--enable-admission-plugins=NodeRestriction",
        ]
        node = self._path("node")
        argvs["containerd"] = [binaries["containerd"], f"--config={self._path('containerd', 'config.toml')}"]
        argvs["kubelet"] = kubelet.argv(binaries["kubelet"], node / "kubelet.yaml",
                                        self._component_kubeconfig("kubelet"), self._path("kubelet"), NODE_NAME,
                                        self.node_ip)
        argvs["kube-proxy"] = kubeproxy.argv(binaries["kube-proxy"], node / "kube-proxy.yaml")
        argvs["buildkitd"] = addons.buildkitd_argv(binaries["buildkitd"], self.containerd_address,
                                                   self._path("buildkit"), self._path("buildkit", "buildkitd.sock"))
        argvs["local-path-provisioner"] = addons.provisioner_argv(
            binaries["local-path-provisioner"], self.kubeconfig_path, node / "local-path-config.json",
            node / "local-path-helper-pod.yaml", images.HELPER_IMAGE)
        argvs["kube-router"] = addons.kube_router_argv(binaries["kube-router"], self.kubeconfig_path, NODE_NAME,
                                                       SERVICE_CIDR, ports["kube-router-health"])
        return argvs

    def _env(self, name: str) -> dict[str, str]:
        env = super()._env(name)
        # iptables, ipset, conntrack, runc and mount live in sbin, which a person's PATH may lack.
        path = [p for p in env.get("PATH", "").split(os.pathsep) if p]
        extra = ["/usr/local/sbin", "/usr/sbin", "/sbin"]
        if name == "containerd":
            from labctl.toolbox import binary

            # containerd finds its shim on PATH; the toolbox keeps each binary in a folder of its own.
            extra.insert(0, str(binary("containerd-shim-runc-v2").parent))
        env["PATH"] = os.pathsep.join(dict.fromkeys(extra + path))
        return env

    def _write_node_configs(self, ports: dict[str, int]) -> None:
        node = self._path("node")
        node.mkdir(parents=True, exist_ok=True)
        layout = self._containerd_layout()
        for d in (layout.root, layout.state, layout.opt, layout.runc_root, layout.cni_conf_dir,
                  self._path("cni", "leases"), self._path("kubelet"), self._path("pod-logs"),
                  self._path("kubelet-plugins"), self._path("buildkit"), self._path("volumes")):
            d.mkdir(parents=True, exist_ok=True)
        _write_if_changed(self._path("containerd", "config.toml"), containerd.config_toml(layout))
        conf = cni.conflist(CNI_NETWORK, BRIDGE, POD_SUBNET, self._path("cni", "leases"))
        _write_if_changed(layout.cni_conf_dir / f"10-{CNI_NETWORK}.conflist", json.dumps(conf, indent=2) + "\n")
        settings = kubelet.KubeletSettings(
            node_ip=self.node_ip, port=ports["kubelet"], healthz_port=ports["kubelet-healthz"],
            ca_file=self.pki_dir / "ca.crt", tls_cert=self.pki_dir / "kubelet-serving.crt",
            tls_key=self.pki_dir / "kubelet-serving.key", runtime_endpoint=f"unix://{self.containerd_address}",
            cluster_dns=CLUSTER_DNS, cluster_domain=DNS_DOMAIN, pod_logs_dir=self._path("pod-logs"),
            volume_plugin_dir=self._path("kubelet-plugins"), resolv_conf=kubelet.resolv_conf(),
        )
        _write_if_changed(node / "kubelet.yaml", yaml.safe_dump(kubelet.config(settings), sort_keys=False))
        proxy = kubeproxy.config(self._component_kubeconfig("kube-proxy"), NODE_NAME, POD_SUBNET,
                                 ports["kube-proxy-healthz"], ports["kube-proxy-metrics"])
        _write_if_changed(node / "kube-proxy.yaml", yaml.safe_dump(proxy, sort_keys=False))
        _write_if_changed(node / "local-path-config.json", addons.provisioner_config(self._path("volumes")))
        _write_if_changed(node / "local-path-helper-pod.yaml",
                          yaml.safe_dump(addons.helper_pod(images.HELPER_IMAGE), sort_keys=False))

    # -- up ----------------------------------------------------------------------------------------------------

    @property
    def _lock(self) -> Path:
        return self.dir.parent / "local.lock"

    def _preflight(self) -> dict[str, str]:
        problem = host.platform_problem()
        if problem:
            raise ProviderError(problem, hint=_ALTERNATIVES)
        missing = host.missing_requirements()
        if missing:
            raise ProviderError(f"the local provider needs {', '.join(missing)}",
                                hint="install them (Debian/Ubuntu: apt-get install runc containernetworking-plugins "
                                     "iptables ipset conntrack iproute2), or " + _ALTERNATIVES)
        if len(str(self.dir / _LONGEST_SOCKET)) > _SOCKET_PATH_MAX:
            raise ProviderError(f"the state directory {self.dir} is too deep for the node's unix socket paths",
                                hint="set LABCTL_STATE_DIR to a shorter path")
        try:
            from labctl.toolbox import binary
        except ImportError as e:
            raise ToolboxError("the toolbox of pinned binaries is not available", hint=_INSTALL_HINT) from e
        found = {}
        for name in COMPONENTS + HELPERS:
            try:
                found[name] = str(binary(name))
            except ToolboxError as e:
                raise ToolboxError(f"the local cluster needs {name}, which is not installed",
                                   hint=_INSTALL_HINT) from e
        return found

    def _up(self, progress: Progress) -> None:
        started = time.monotonic()
        binaries = self._preflight()
        # Two labctl runs (two state dirs, two test sessions) must not both decide the node is theirs to start.
        with procs.exclusive(host.lock_path(), "the machine's local node", progress):
            self._up_locked(binaries, started, progress)

    def _up_locked(self, binaries: dict[str, str], started: float, progress: Progress) -> None:
        self.procs.clean_stale()
        running = [n for n in COMPONENTS if self.procs.running(n)]
        if len(running) == len(COMPONENTS) and self._api_ready():
            self._ensure_user_context(progress)
            progress(f"The local cluster is already up (context {CONTEXT})")
            return
        if running:
            missing = [n for n in COMPONENTS if n not in running]
            progress(f"Starting what stopped: {', '.join(missing)}" if missing
                     else "Waiting for the local cluster's API server")
        user = users.target_user()
        users.make_dirs(self.dir, user)
        self._claim_host(progress)
        try:
            self._ensure_pki()
            ports = self._choose_ports()
            self._write_meta(ports)
            self._write_kubeconfigs(ports)
            self._write_node_configs(ports)
            self._start(binaries, ports, started, progress)
        except BaseException:
            if not running:
                # A cluster that was not running before leaves nothing behind; one that was stays for `down`.
                progress("Start failed: stopping what started and cleaning the host (logs stay in the state dir)")
                try:
                    self._teardown(quiet, keep_state=True)
                except LabError:
                    pass
            self._give(user)
            raise
        self._give(user)
        path, result = kubeconfig.merge_into_user(kubeconfig.read(self.kubeconfig_path), self.user_kubeconfig)
        progress(kubeconfig.merge_message(path, result))

    def _choose_ports(self) -> dict[str, int]:
        before = self._ports()
        if any(self.procs.running(n) for n in COMPONENTS) and all(k in before for k in PORTS):
            return {k: before[k] for k in PORTS}  # running components already know each other's ports
        on_node = procs.choose_ports({k: before.get(k) or v for k, v in NODE_IP_PORTS.items()}, host=self.node_ip)
        on_loopback = procs.choose_ports({k: before.get(k) or v for k, v in LOOPBACK_PORTS.items()})
        return {**on_node, **on_loopback}

    def _give(self, user: users.TargetUser) -> None:
        """Hand the files a person reads (kubeconfig, certificates, logs) to them; the node's data stays root's."""
        # A lock file may have created the `clusters` folder (and the state root in the person's home) as root.
        root = self.dir.parent.parent
        for folder in ([root] if root.is_relative_to(user.home) else []) + [self.dir.parent, self.dir]:
            users.give(folder, user)
        for path in (self.kubeconfig_path, self.dir / "cluster.json", self._lock, self._path("pki"),
                     self._path("kubeconfigs")):
            if path.exists():
                users.give(path, user, recursive=path.is_dir())
        for path in [*self.dir.glob("*.log"), *self.dir.glob("*.pid")]:
            users.give(path, user)

    def _start_missing(self, names: tuple[str, ...], argvs: dict[str, list[str]]) -> list[str]:
        started = []
        for name in names:
            if self.procs.running(name) is None:
                self.procs.start(name, argvs[name], env=self._env(name))
                started.append(name)
        return started

    def _check_started(self) -> None:
        for name in self.procs.names():
            if name in COMPONENTS and self.procs.read(name) and self.procs.running(name) is None:
                raise _died(name, self.procs.tail(name, lines=8), self.procs.log_file(name))

    def _start(self, binaries: dict[str, str], ports: dict[str, int], started: float, progress: Progress) -> None:
        from labctl.kube.client import ApiError

        argvs = self._argvs(binaries, ports)
        deadline = started + READY_TIMEOUT

        def remaining() -> float:
            return max(0.0, deadline - time.monotonic())

        def elapsed() -> str:
            return f"{time.monotonic() - started:.1f} s"

        # The controller-manager gives up when the API server's RBAC is not ready within 10 s, which a busy
        # machine exceeds: it and the scheduler start once the API server is ready.
        first = self._start_missing(("etcd", "kube-apiserver", "containerd"), argvs)
        if first:
            progress(f"Starting {', '.join(first)} (logs in {self.dir})")
        node_images = images.node_images(Path(binaries["coredns"]))
        ctr = containerd.Ctr(binaries["ctr"], self.containerd_address)
        if not procs.wait_for(ctr.answers, remaining(), POLL, self._check_started):
            raise self._timeout("containerd to answer on its socket")
        imported = self._import_node_images(ctr, node_images)
        if imported:
            progress(f"Imported {', '.join(imported)} into the node's containerd ({elapsed()})")
        later = self._start_missing(("kubelet", "kube-proxy"), argvs)
        if later:
            progress(f"Starting {', '.join(later)}")

        client = self._client()
        if not procs.wait_for(client.readyz, remaining(), POLL, self._check_started):
            raise self._timeout("the API server to answer /readyz")
        progress(f"API server ready on {self.node_ip}:{ports['kube-apiserver']} after {elapsed()}")
        self._start_missing(("kube-controller-manager", "kube-scheduler"), argvs)
        try:
            for manifest in addons.storage_manifests() + addons.coredns_manifests(
                    images.COREDNS_IMAGE, CLUSTER_DNS, DNS_DOMAIN):
                client.apply(manifest)
        except ApiError as e:
            raise ProviderError(f"the local cluster's API server refused its add-ons: {e.message}",
                                hint=f"logs in {self.dir}") from e

        waiting: list[str] = []

        def settled() -> bool:
            try:
                waiting[:] = self._not_settled(client)
            except ClusterUnreachable:
                return False
            return not waiting

        if not procs.wait_for(settled, remaining(), POLL, self._check_started):
            raise self._timeout(" and ".join(waiting))
        progress(f"Node {NODE_NAME} Ready and DNS ready after {elapsed()}")

        # The add-ons that no pod needs to start come last, so they do not compete for the CPU before it;
        # kube-router's firewall also needs the Node to exist (it exits otherwise).
        addon_names = ("kube-router", "local-path-provisioner", "buildkitd")
        if self._start_missing(addon_names, argvs):
            checks = [lambda: _http_ok(f"http://127.0.0.1:{ports['kube-router-health']}/healthz"),
                      lambda: _socket_answers(self._path("buildkit", "buildkitd.sock"))]
            if not procs.wait_for(lambda: all(check() for check in checks), remaining(), POLL,
                                  self._check_started):
                raise self._timeout("kube-router and BuildKit to answer")
            progress(f"NetworkPolicy (kube-router), storage (local-path) and BuildKit running after {elapsed()}")

    def _not_settled(self, client) -> list[str]:
        waiting = []
        if client.get("v1", "ServiceAccount", "default", "default") is None:
            waiting.append("the default ServiceAccount")
        node = client.get("v1", "Node", NODE_NAME)
        if not (node and node_ready(node)):
            waiting.append(f"node {NODE_NAME} to be Ready")
        if not deployment_available(client.get("apps/v1", "Deployment", "coredns", "kube-system")):
            waiting.append("CoreDNS to be available")
        return waiting

    def _import_node_images(self, ctr: containerd.Ctr, node_images: list[images.NodeImage]) -> list[str]:
        record = self._path("containerd", "imported.json")
        try:
            imported = json.loads(record.read_text())
        except (OSError, ValueError):
            imported = {}
        present = ctr.image_names()
        done = []
        for image in node_images:
            if image.tag in present and imported.get(image.tag) == image.key:
                continue
            ctr.import_tar(image.tar)
            imported[image.tag] = image.key
            done.append(image.tag)
        record.write_text(json.dumps(imported, indent=2) + "\n")
        return done

    def _timeout(self, what: str) -> ProviderError:
        return ProviderError(f"the local cluster did not become ready within {READY_TIMEOUT:.0f} s: waiting for {what}",
                             hint=f"see the logs in {self.dir} (the machine may be very busy)")

    # -- the host --------------------------------------------------------------------------------------------

    def _claim_host(self, progress: Progress) -> None:
        """Make sure no other cluster runs here, and record what exists before the node changes anything."""
        record = host.read_record()
        if record and record.get("state_dir") == str(self.dir):
            return
        if record:
            other = str(record.get("state_dir"))
            if host.pids_mentioning(host.processes(), other):
                raise ProviderError(f"another labctl local cluster runs on this machine (state dir {other})",
                                    hint=f"stop it first: LABCTL_STATE_DIR={Path(other).parent.parent} labctl down")
            progress(f"Removing what a stopped local cluster left on the host (state dir {other})")
            left = self._clean_host(record, Path(other))
            if left:
                raise ProviderError(f"could not remove what an earlier local cluster left: {'; '.join(left)}",
                                    hint="remove those by hand, then run `labctl up` again")
            host.remove_record()
        own = {r.pid for n in self.procs.names() if (r := self.procs.running(n))}
        conflicts = host.find_conflicts(host.processes(), host.existing_cluster_paths(), own, str(self.dir))
        chains = cleanup.snapshot_chains()
        foreign = sorted({c for family in chains.values() for _, c in family if c.startswith("KUBE-")})
        if foreign:
            more = "…" if len(foreign) > 3 else ""
            conflicts.append(f"iptables has Kubernetes chains ({', '.join(foreign[:3])}{more})")
        if conflicts:
            raise ProviderError(f"another Kubernetes cluster seems to run on this machine: {'; '.join(conflicts)}",
                                hint="the local provider does not share a machine with another cluster's node; "
                                     + _ALTERNATIVES)
        if cleanup.link_exists(BRIDGE) and not host.pids_mentioning(host.processes(), str(self.dir)):
            cleanup.delete_bridge(BRIDGE)  # left by a run whose record a reboot-less /run wipe lost
        host.write_record({
            "state_dir": str(self.dir),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "chains": chains,
            "nft_tables": cleanup.nft_tables(),
            "ipsets": cleanup.ipset_names(),
            "sysctls": host.read_sysctls(),
            "dirs": {d: Path(d).exists() for d in host.HOST_DIRS},
            "cgroups": host.cgroup_parents(),
        })

    def _clean_host(self, record: dict, state_dir: Path) -> list[str]:
        """Remove from the host what the node whose state dir is `state_dir` added; returns what remains."""
        left: list[str] = []
        kube_proxy = self._toolbox_or_none("kube-proxy")
        if kube_proxy:
            try:
                subprocess.run(kubeproxy.cleanup_argv(kube_proxy), capture_output=True, timeout=60, check=False,
                               env=self._env("kube-proxy"))
            except (OSError, subprocess.TimeoutExpired):
                pass
        chains = record.get("chains") or {}
        for family in cleanup.FAMILIES:
            before = {(t, c) for t, c in chains.get(family, [])}
            left += [f"{family} chain {c}" for c in cleanup.remove_chains(family, before)]
        left += [f"ipset {s}" for s in cleanup.destroy_ipsets(record.get("ipsets") or [])]
        if "nft_tables" in record:
            # Tables iptables-nft made for the node's rules; one still holding another program's rules stays.
            cleanup.remove_bare_nft_tables(record["nft_tables"])
        left += [f"mount {m}" for m in cleanup.unmount_under(state_dir)]
        if not cleanup.delete_bridge(BRIDGE):
            left.append(f"link {BRIDGE}")
        cleanup.remove_cni_results(CNI_NETWORK)
        cleanup.remove_log_links(state_dir / "pod-logs")
        cleanup.remove_new_empty_dirs(host.HOST_DIRS, record.get("dirs") or {})
        cleanup.remove_new_cgroups(host.cgroup_parents(), record.get("cgroups") or [])
        failed = host.write_sysctls(host.sysctls_to_restore(record.get("sysctls") or {}, host.read_sysctls()))
        left += [f"kernel setting {name}" for name in failed]
        return left

    def _toolbox_or_none(self, name: str) -> str | None:
        try:
            from labctl.toolbox import binary

            return str(binary(name))
        except (ImportError, ToolboxError):
            return None

    # -- down --------------------------------------------------------------------------------------------------

    def _down(self, progress: Progress) -> None:
        record = host.read_record()
        ours = bool(record and record.get("state_dir") == str(self.dir))
        existed = self.dir.exists()
        if existed or ours:
            problem = host.platform_problem()
            if problem:
                raise ProviderError(f"`down` of the local cluster needs root as `up` did: {problem}",
                                    hint="run it with sudo")
            with procs.exclusive(host.lock_path(), "the machine's local node", progress):
                self._teardown(progress, keep_state=False)
        path, removed = kubeconfig.remove_from_user(CONTEXT, self.user_kubeconfig)
        if removed:
            progress(f"Removed context {CONTEXT} from {path}")
        progress("The local cluster is deleted" if existed or ours or removed else "There is no local cluster")

    def _teardown(self, progress: Progress, *, keep_state: bool) -> None:
        """Stop pods, then every process, then remove from the host what the node added."""
        stopped = []
        if self.procs.running("kubelet") and self.procs.running("kube-apiserver"):
            stopped += self._drain(progress)
        stopped += self.procs.stop(["kube-router", "local-path-provisioner", "buildkitd", "kube-proxy", "kubelet",
                                   "kube-controller-manager", "kube-scheduler"])
        if self.procs.running("containerd"):
            ctr = self._ctr_or_none()
            if ctr is not None:
                ctr.remove_all_containers()
        # The API server's shutdown writes to etcd (its lease, the `kubernetes` endpoints): stopping both at
        # once leaves it retrying until it is killed.
        stopped += self.procs.stop(["kube-apiserver"])
        stopped += self.procs.stop()
        if stopped:
            progress(f"Stopped {', '.join(stopped)}")
        self._kill_strays()
        still = [n for n in self.procs.names() if self.procs.running(n)]
        if still:
            raise ProviderError(f"could not stop {', '.join(still)} of the local cluster",
                                hint=f"their pids are in {self.dir}; stop them, then run `labctl down` again")
        record = host.read_record()
        if record and record.get("state_dir") == str(self.dir):
            left = self._clean_host(record, self.dir)
        else:
            left = [f"mount {m}" for m in cleanup.unmount_under(self.dir)]
        if left:
            raise ProviderError(f"could not remove from the host: {'; '.join(left)}",
                                hint="see `labctl status`; remove those by hand, then run `labctl down` again")
        if record and record.get("state_dir") == str(self.dir):
            host.remove_record()
        progress("Removed the node's chains, ipsets, bridge, mounts and kernel settings from the host")
        if not keep_state and self.dir.exists():
            if cleanup.mounts_under(cleanup.mount_points(), self.dir):
                raise ProviderError(f"something is still mounted under {self.dir}; not deleting it")
            shutil.rmtree(self.dir)

    def _ctr_or_none(self) -> containerd.Ctr | None:
        ctr = self._toolbox_or_none("ctr")
        return containerd.Ctr(ctr, self.containerd_address) if ctr else None

    def _drain(self, progress: Progress) -> list[str]:
        """Delete every pod so the kubelet stops their sandboxes (CNI teardown included) while it still runs.

        Returns the components it stopped first: without the controllers nothing recreates the pods.
        """
        from labctl.kube.client import ApiError

        stopped = self.procs.stop(["kube-controller-manager", "kube-scheduler", "local-path-provisioner"])
        try:
            client = self._client()
            pods, _ = client.list("v1", "Pod")
            if not pods:
                return stopped
            progress(f"Deleting {len(pods)} pods so their sandboxes stop")
            body = json.dumps({"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 1}).encode()
            for pod in pods:
                meta = pod["metadata"]
                client.request("DELETE", client.path("v1", "Pod", meta["namespace"], meta["name"]), body=body,
                               headers={"Content-Type": "application/json"})

            def gone() -> bool:
                return not client.list("v1", "Pod")[0]

            if not procs.wait_for(gone, DRAIN_TIMEOUT, 0.25):
                progress("Some pods did not stop in time: removing their containers directly")
        except (LabError, ApiError):
            progress("The API server did not answer: removing the pods' containers directly")
        return stopped

    def _kill_strays(self) -> None:
        """Kill container shims and container processes of this node that outlived containerd."""
        import signal

        runc = shutil.which("runc")
        if runc and self._path("runc").is_dir():
            listed = subprocess.run([runc, "--root", str(self._path("runc")), "list", "--quiet"],
                                    capture_output=True, text=True, timeout=30, check=False)
            for cid in listed.stdout.split():
                subprocess.run([runc, "--root", str(self._path("runc")), "delete", "--force", cid],
                               capture_output=True, timeout=30, check=False)
        for pid in host.pids_mentioning(host.processes(), str(self.containerd_address)):
            if pid != os.getpid():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    # -- status ------------------------------------------------------------------------------------------------

    def status(self) -> ProviderStatus:
        ports = self._ports()
        records = {name: self.procs.running(name) for name in COMPONENTS}
        exists = self.dir.exists() and any(records.values())
        probe = probe_api(self.kubeconfig_path, CONTEXT) if exists and self.kubeconfig_path.exists() else None
        reachable = bool(probe and probe.reachable)
        checks = {
            "etcd": lambda: reachable and self._readyz_check("etcd"),
            "kube-apiserver": lambda: reachable,
            "kubelet": lambda: _http_ok(f"http://127.0.0.1:{ports.get('kubelet-healthz')}/healthz"),
            "kube-proxy": lambda: _http_ok(f"http://127.0.0.1:{ports.get('kube-proxy-healthz')}/healthz"),
            "kube-router": lambda: _http_ok(f"http://127.0.0.1:{ports.get('kube-router-health')}/healthz"),
        }
        if os.geteuid() == 0:  # their sockets are root's: a person without sudo sees only that they run
            checks["containerd"] = lambda: (c := self._ctr_or_none()) is not None and c.answers()
            checks["buildkitd"] = lambda: _socket_answers(self._path("buildkit", "buildkitd.sock"))
        components = []
        for name in COMPONENTS:
            rec = records[name]
            if rec is None:
                components.append(ComponentStatus(name, False, "not running"))
                continue
            check = checks.get(name)
            ok = check() if check else True
            detail = "healthy" if ok and check else ("running" if ok else "running but not answering")
            components.append(ComponentStatus(name, ok, detail, rec.pid, procs.proc_rss_bytes(rec.pid)))
        if reachable:
            components += self._cluster_checks()
        message = ""
        if not exists:
            message = "no local cluster is running: `sudo labctl up --provider local` starts one"
        elif not all(records.values()):
            message = "some components stopped: `labctl up` starts them again"
        return ProviderStatus(
            provider=self.name, context=CONTEXT, exists=exists, api_reachable=reachable, components=components,
            nodes_ready=probe.nodes_ready if probe else 0, nodes_total=probe.nodes_total if probe else 0,
            message=message,
        )

    def _cluster_checks(self) -> list[ComponentStatus]:
        from labctl.kube.client import ApiError

        try:
            client = self._client()
            node = client.get("v1", "Node", NODE_NAME)
            dns = client.get("apps/v1", "Deployment", "coredns", "kube-system")
        except (LabError, ApiError) as e:
            return [ComponentStatus("node", False, str(e))]
        ready = bool(node and node_ready(node))
        dns_ok = deployment_available(dns)
        return [
            ComponentStatus(f"node {NODE_NAME}", ready, "Ready" if ready else "not Ready"),
            ComponentStatus("dns (CoreDNS)", dns_ok, f"available at {CLUSTER_DNS}" if dns_ok else "not available"),
        ]

    def memory_bytes(self) -> int:
        """Resident memory of the whole cluster: its processes, the container shims and everything in the pods."""
        total = 0
        seen: set[int] = set()
        for name in self.procs.names():
            rec = self.procs.running(name)
            if rec:
                seen.add(rec.pid)
                total += procs.proc_rss_bytes(rec.pid) or 0
        shims = set(host.pids_mentioning(host.processes(), str(self.containerd_address))) - seen
        for pid in host.with_descendants(shims):
            if pid not in seen:
                seen.add(pid)
                total += procs.proc_rss_bytes(pid) or 0
        return total


def _write_if_changed(path: Path, text: str) -> None:
    """Write a component's configuration only when it changes: kube-proxy exits when its file is written."""
    try:
        if path.read_text() == text:
            return
    except OSError:
        pass
    path.write_text(text)


def _http_ok(url: str) -> bool:
    import urllib3

    try:
        return urllib3.request("GET", url, timeout=urllib3.Timeout(total=2.0), retries=False).status == 200
    except (urllib3.exceptions.HTTPError, ValueError):
        return False


def _socket_answers(path: Path) -> bool:
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(2.0)
        try:
            s.connect(str(path))
            return True
        except OSError:
            return False

