"""The sim provider: a real control plane (etcd, API server, controller-manager, scheduler) with kwok nodes.

Everything the API server does is real (admission, RBAC, PodSecurity, controllers, scheduling, EndpointSlices);
only the nodes are simulated: kwok moves pods through their phases, so no container ever runs. All processes
listen on loopback ports chosen at `up` and are tracked by pid files in the cluster's state directory. A
cluster whose processes stopped (after a reboot, say) comes back with its data on the next `up`.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import urllib3
import yaml

from labctl import paths
from labctl.errors import ClusterUnreachable, LabError, ProviderError, ToolboxError
from labctl.providers import kubeconfig, procs, users
from labctl.providers.base import ComponentStatus, Progress, Provider, ProviderStatus, node_ready, probe_api, quiet

if TYPE_CHECKING:
    from labctl.providers import pki

CONTEXT = "labctl-sim"
SERVICE_CIDR = "10.96.0.0/16"
POD_CIDR = "10.244.0.0/16"
DNS_DOMAIN = "cluster.local"
NODE_NAMES = ("sim-node-1", "sim-node-2", "sim-node-3")
NODE_CAPACITY = {"cpu": "8", "memory": "16Gi", "pods": "110"}
KWOK_ANNOTATION = ("kwok.x-k8s.io/node", "fake")

COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
# These retry their connections for as long as it takes, so they start together. The controller-manager gives up
# after 10 s without a healthy API server (a busy machine can take longer), so it starts once /readyz answers.
FIRST = ("etcd", "kube-apiserver", "kube-scheduler", "kwok")
AFTER_API = ("kube-controller-manager",)
PORTS = ("etcd-client", "etcd-peer", "kube-apiserver", "kwok")
# Clients first, then the API server while etcd still answers (it removes its endpoint lease on the way out),
# then etcd: stopped together, the API server waits on a vanished etcd for tens of seconds.
STOP_ORDER = (("kwok", "kube-scheduler", "kube-controller-manager"), ("kube-apiserver",), ("etcd",))

READY_TIMEOUT = 180.0
POLL = 0.1

_INSTALL_HINT = "run `labctl toolbox install`"


def node_manifest(name: str) -> dict:
    """A kwok-managed Node with the capacity of a small real machine."""
    key, value = KWOK_ANNOTATION
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {key: value, "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {"type": "kwok", "kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                       "kubernetes.io/arch": "amd64"},
        },
        "spec": {},
        "status": {"capacity": dict(NODE_CAPACITY), "allocatable": dict(NODE_CAPACITY)},
    }


def kwok_stage_files() -> list[Path]:
    """The kwok Stage definitions shipped with labctl (nodes, pods without delays, volumes)."""
    return sorted((paths.manifests_dir() / "kwok" / "stages").glob("*.yaml"))


def storage_class_manifest() -> dict:
    """The default StorageClass `standard`, bound by kwok's volume stages."""
    return yaml.safe_load((paths.manifests_dir() / "kwok" / "storage-class.yaml").read_text())


def explain_exit(name: str, log_tail: str, ports: dict[str, int], log: Path) -> ProviderError:
    """The error for a component that exited while the cluster was starting, from the end of its log."""
    if "address already in use" in log_tail:
        port = {"etcd": f"{ports.get('etcd-client')} or {ports.get('etcd-peer')}",
                "kwok": str(ports.get("kwok"))}.get(name, str(ports.get("kube-apiserver")))
        for candidate in ports.values():
            if f":{candidate}" in log_tail:
                port = str(candidate)
        return ProviderError(f"{name} could not listen on 127.0.0.1:{port}: the port is in use",
                             hint=f"run `labctl up` again to choose other ports (log: {log})")
    lines = "\n".join(f"  {line[:240]}" for line in log_tail.splitlines()[-8:]) or "  (it printed nothing)"
    return ProviderError(f"{name} exited while the sim cluster was starting; the end of {log}:\n{lines}",
                         hint="`labctl down` then `labctl up` starts afresh; `labctl doctor` checks the machine")


class SimProvider(Provider):
    """etcd + Kubernetes control plane + kwok, as host processes under the state directory."""

    name = "sim"
    pods_run = False
    # What a provider built on this one (local) changes: its processes, and the clients given a kubeconfig.
    components: tuple[str, ...] = COMPONENTS
    component_kubeconfigs: tuple[str, ...] = ("kube-controller-manager", "kube-scheduler", "kwok")

    def __init__(self, state_root: Path | None = None, user_kubeconfig: Path | None = None) -> None:
        """`state_root` and `user_kubeconfig` default to the target user's (see `users`, `kubeconfig`)."""
        self.dir = (state_root or users.state_root()) / "clusters" / self.name
        self.procs = procs.ProcessRegistry(self.dir)
        self._user_kubeconfig = user_kubeconfig

    @property
    def user_kubeconfig(self) -> Path:
        """The kubeconfig file `up` merges the context into and `down` removes it from."""
        return self._user_kubeconfig or kubeconfig.user_path()

    # -- layout ----------------------------------------------------------------------------------------------

    @property
    def context(self) -> str:
        return CONTEXT

    @property
    def kubeconfig_path(self) -> Path:
        return self.dir / "kubeconfig"

    @property
    def api_host(self) -> str:
        """The address the API server listens on and the kubeconfigs name."""
        return "127.0.0.1"

    @property
    def pki_dir(self) -> Path:
        return self.dir / "pki"

    def _component_kubeconfig(self, name: str) -> Path:
        return self.dir / "kubeconfigs" / f"{name}.kubeconfig"

    def _read_meta(self) -> dict:
        try:
            return json.loads((self.dir / "cluster.json").read_text())
        except (FileNotFoundError, ValueError):
            return {}

    def _ports(self) -> dict[str, int]:
        return {k: int(v) for k, v in (self._read_meta().get("ports") or {}).items()}

    # -- up ----------------------------------------------------------------------------------------------------

    @property
    def _lock(self) -> Path:
        return self.dir.parent / "sim.lock"

    def up(self, progress: Progress = quiet) -> None:
        with procs.exclusive(self._lock, "the sim cluster", progress):
            self._up(progress)

    def _up(self, progress: Progress) -> None:
        started = time.monotonic()
        self.procs.clean_stale()
        running = [n for n in COMPONENTS if self.procs.running(n)]
        if len(running) == len(COMPONENTS) and self._api_ready():
            self._ensure_user_context(progress)
            progress(f"The sim cluster is already up (context {CONTEXT})")
            return
        binaries = self._binaries()
        if running:
            missing = [n for n in COMPONENTS if n not in running]
            progress(f"Starting what stopped: {', '.join(missing)}" if missing
                     else "Waiting for the sim cluster's API server")
        elif (self.dir / "cluster.json").exists():
            progress("Starting the sim cluster again, with its data")
        user = users.target_user()
        users.make_dirs(self.dir, user)
        try:
            self._ensure_pki()
            before = self._ports()
            if running and all(k in before for k in PORTS):
                ports = {k: before[k] for k in PORTS}  # the running components know each other by these
            else:
                ports = procs.choose_ports({name: before.get(name) for name in PORTS})
            self._write_meta(ports)
            self._write_kubeconfigs(ports)
            self._wait_ready(self._argvs(binaries, ports), ports, started, progress)
        except BaseException:
            self._stop(timeout=5)
            users.give(self.dir, user, recursive=True)
            raise
        users.give(self.dir, user, recursive=True)
        path, result = kubeconfig.merge_into_user(kubeconfig.read(self.kubeconfig_path), self.user_kubeconfig)
        progress(kubeconfig.merge_message(path, result))

    def _start_missing(self, names: tuple[str, ...], argvs: dict[str, list[str]]) -> list[str]:
        """Start those of `names` that are not running; returns the ones started."""
        started = []
        for name in names:
            if self.procs.running(name) is None:
                self.procs.start(name, argvs[name], env=self._env(name))
                started.append(name)
        return started

    def _stop(self, timeout: float = 10.0) -> list[str]:
        """Stop every process of the cluster, in dependency order; returns the names stopped."""
        stopped = []
        for stage in STOP_ORDER:
            stopped += self.procs.stop(stage, timeout=timeout)
        return stopped + self.procs.stop(timeout=timeout)  # anything else with a pid file here

    def _binaries(self) -> dict[str, str]:
        try:
            from labctl.toolbox import binary
        except ImportError as e:
            raise ToolboxError("the toolbox of pinned binaries is not available", hint=_INSTALL_HINT) from e
        found = {}
        for name in COMPONENTS:
            try:
                found[name] = str(binary(name))
            except ToolboxError as e:
                raise ToolboxError(f"the sim cluster needs {name}, which is not installed",
                                   hint=_INSTALL_HINT) from e
        return found

    def _ensure_pki(self) -> None:
        from labctl.providers import pki  # cryptography costs ~0.2 s to import: only when certificates are made

        d = self.pki_dir
        ca_files = (d / "ca.crt", d / "ca.key")
        ca = pki.load(d, "ca") if all(f.exists() for f in ca_files) else None
        if ca is None:
            ca = pki.new_ca("labctl-sim-ca")
            ca.write(d, "ca")
        for stem, issue in self._pki_leaves(ca).items():
            if not ((d / f"{stem}.crt").exists() and (d / f"{stem}.key").exists()):
                issue().write(d, stem)
        if not ((d / "sa.key").exists() and (d / "sa.pub").exists()):
            pki.new_service_account_keys(d / "sa.key", d / "sa.pub")

    def _apiserver_sans(self) -> tuple[list[str], list[str]]:
        """The DNS names and IP addresses of the API server's serving certificate."""
        from labctl.providers import pki  # cryptography costs ~0.2 s to import: only when certificates are made

        return pki.apiserver_sans(SERVICE_CIDR, DNS_DOMAIN)

    def _pki_leaves(self, ca: pki.CertKey) -> dict[str, Callable[[], pki.CertKey]]:
        """Certificate file stem -> how to issue it, for each certificate the CA signs."""
        from labctl.providers import pki  # cryptography costs ~0.2 s to import: only when certificates are made

        dns, ips = self._apiserver_sans()
        return {
            "kube-apiserver": lambda: pki.issue_serving_cert(ca, "kube-apiserver", dns, ips),
            "etcd-server": lambda: pki.issue_serving_cert(ca, "etcd", ["localhost"], ["127.0.0.1"],
                                                          client_auth=True),
            "apiserver-etcd-client": lambda: pki.issue_client_cert(ca, "kube-apiserver-etcd-client"),
            "admin": lambda: pki.issue_client_cert(ca, "labctl-admin", ["system:masters"]),
            "kwok": lambda: pki.issue_client_cert(ca, "kwok", ["system:masters"]),
            "kube-controller-manager": lambda: pki.issue_client_cert(ca, "system:kube-controller-manager"),
            "kube-scheduler": lambda: pki.issue_client_cert(ca, "system:kube-scheduler"),
        }

    def _write_meta(self, ports: dict[str, int]) -> None:
        meta = {"ports": ports, "context": CONTEXT, "service_cidr": SERVICE_CIDR}
        (self.dir / "cluster.json").write_text(json.dumps(meta, indent=2) + "\n")

    def _write_kubeconfigs(self, ports: dict[str, int]) -> None:
        server = f"https://{self.api_host}:{ports['kube-apiserver']}"
        ca_pem = (self.pki_dir / "ca.crt").read_bytes()

        def config(stem: str) -> dict:
            return kubeconfig.build(self.context, server, ca_pem, (self.pki_dir / f"{stem}.crt").read_bytes(),
                                    (self.pki_dir / f"{stem}.key").read_bytes())

        kubeconfig.write(self.kubeconfig_path, config("admin"))
        for stem in self.component_kubeconfigs:
            kubeconfig.write(self._component_kubeconfig(stem), config(stem))

    def _argvs(self, binaries: dict[str, str], ports: dict[str, int]) -> dict[str, list[str]]:
        p = self.pki_dir
        etcd_url = f"https://127.0.0.1:{ports['etcd-client']}"
        peer_url = f"http://127.0.0.1:{ports['etcd-peer']}"
        cm_kc = str(self._component_kubeconfig("kube-controller-manager"))
        sched_kc = str(self._component_kubeconfig("kube-scheduler"))
        key, value = KWOK_ANNOTATION
        argvs = {
            "etcd": [
                binaries["etcd"], "--name=labctl-sim", f"--data-dir={self.dir / 'etcd'}",
                f"--listen-client-urls={etcd_url}", f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls={peer_url}", f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=labctl-sim={peer_url}",
                f"--cert-file={p / 'etcd-server.crt'}", f"--key-file={p / 'etcd-server.key'}",
                f"--trusted-ca-file={p / 'ca.crt'}", "--client-cert-auth=true",
                # A lab cluster trades durability on power loss for speed; `down` + `up` recovers from that.
                "--unsafe-no-fsync=true", "--log-level=warn",
            ],
            "kube-apiserver": [
                binaries["kube-apiserver"],
                f"--etcd-servers={etcd_url}", f"--etcd-cafile={p / 'ca.crt'}",
                f"--etcd-certfile={p / 'apiserver-etcd-client.crt'}",
                f"--etcd-keyfile={p / 'apiserver-etcd-client.key'}",
                f"--bind-address={self.api_host}", f"--secure-port={ports['kube-apiserver']}",
                f"--tls-cert-file={p / 'kube-apiserver.crt'}", f"--tls-private-key-file={p / 'kube-apiserver.key'}",
                f"--client-ca-file={p / 'ca.crt'}",
                f"--service-account-issuer=https://kubernetes.default.svc.{DNS_DOMAIN}",
                f"--service-account-key-file={p / 'sa.pub'}",
                f"--service-account-signing-key-file={p / 'sa.key'}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--authorization-mode=Node,RBAC",
                # The default (false) rejects privileged pods before PodSecurity admission sees them, which
                # would hide exactly the PodSecurity behaviour the labs teach.
                "--allow-privileged=true",
                "--profiling=false",
            ],
            "kube-controller-manager": [
                binaries["kube-controller-manager"],
                f"--kubeconfig={cm_kc}", f"--authentication-kubeconfig={cm_kc}",
                f"--authorization-kubeconfig={cm_kc}",
                "--leader-elect=false", "--use-service-account-credentials=true",
                f"--service-account-private-key-file={p / 'sa.key'}", f"--root-ca-file={p / 'ca.crt'}",
                f"--cluster-signing-cert-file={p / 'ca.crt'}", f"--cluster-signing-key-file={p / 'ca.key'}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--secure-port=0", "--profiling=false",
            ],
            "kube-scheduler": [
                binaries["kube-scheduler"],
                f"--kubeconfig={sched_kc}", f"--authentication-kubeconfig={sched_kc}",
                f"--authorization-kubeconfig={sched_kc}",
                "--leader-elect=false", "--secure-port=0", "--profiling=false",
            ],
        }
        if "kwok" in self.components:
            # Simulated nodes never fail, but on a busy machine kwok's lease renewals can fall behind the default
            # grace period; the node controller would then mark every pod NotReady for good (kwok does not
            # flip the condition back), and checks would report a healthy lab as broken.
            argvs["kube-controller-manager"].append("--node-monitor-grace-period=10m")
            argvs["kwok"] = [
                binaries["kwok"],
                f"--kubeconfig={self._component_kubeconfig('kwok')}",
                f"--manage-nodes-with-annotation-selector={key}={value}",
                f"--server-address=127.0.0.1:{ports['kwok']}",
                f"--cidr={POD_CIDR}",
                *[f"--config={f}" for f in kwok_stage_files()],
            ]
        return argvs

    def _env(self, name: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
        if name == "kwok":
            # kwok also reads ~/.kwok/kwok.yaml when it exists; its own work dir keeps a person's kwok setup out.
            env["KWOK_WORKDIR"] = str(self.dir / "kwok")
        return env

    def _check_components(self, ports: dict[str, int]) -> None:
        """Raise for a component that was started and has exited."""
        for name in COMPONENTS:
            if self.procs.read(name) is not None and self.procs.running(name) is None:
                raise self._died(name, ports)

    def _died(self, name: str, ports: dict[str, int]) -> ProviderError:
        return explain_exit(name, self.procs.tail(name, lines=8), ports, self.procs.log_file(name))

    def _client(self):
        from labctl.kube.client import Client

        return Client.from_kubeconfig(self.kubeconfig_path, self.context, timeout=5.0)

    def _api_ready(self) -> bool:
        try:
            return self._client().readyz()
        except LabError:
            return False

    def _wait_ready(self, argvs: dict[str, list[str]], ports: dict[str, int], started: float,
                    progress: Progress) -> None:
        """Start what is not running and wait until the API, the nodes and the default ServiceAccount are there."""
        from labctl.kube.client import ApiError

        client = self._client()
        deadline = started + READY_TIMEOUT

        def check() -> None:
            self._check_components(ports)

        def remaining() -> float:
            return max(0.0, deadline - time.monotonic())

        first = self._start_missing(FIRST, argvs)
        if first:
            progress(f"Starting {', '.join(first)} (logs in {self.dir})")
        if not procs.wait_for(client.readyz, remaining(), POLL, check):
            raise self._timeout("the API server to answer /readyz")
        progress(f"API server ready after {time.monotonic() - started:.1f} s")
        self._start_missing(AFTER_API, argvs)

        try:
            for name in NODE_NAMES:
                try:
                    client.create(node_manifest(name))
                except ApiError as e:
                    if e.status != 409:  # already there from an earlier run
                        raise
            client.apply(storage_class_manifest())
        except ApiError as e:
            raise ProviderError(f"the sim cluster's API server refused its nodes or StorageClass: {e.message}",
                                hint=f"logs in {self.dir}") from e

        waiting: list[str] = []

        def settled() -> bool:
            try:
                return _settled()
            except ClusterUnreachable:  # the API server may still be finishing its start
                return False

        def _settled() -> bool:
            waiting.clear()
            if client.get("v1", "ServiceAccount", "default", "default") is None:
                waiting.append("the default ServiceAccount")
            nodes, _ = client.list("v1", "Node")
            ready = sum(1 for n in nodes if node_ready(n))
            if ready < len(NODE_NAMES):
                waiting.append(f"nodes Ready ({ready}/{len(NODE_NAMES)})")
            if not _http_ok(f"http://127.0.0.1:{ports['kwok']}/healthz"):
                waiting.append("kwok to answer /healthz")
            return not waiting

        if not procs.wait_for(settled, remaining(), POLL, check):
            raise self._timeout(" and ".join(waiting))
        progress(f"{len(NODE_NAMES)} nodes Ready and the default ServiceAccount present after "
                 f"{time.monotonic() - started:.1f} s")

    def _timeout(self, what: str) -> ProviderError:
        return ProviderError(f"the sim cluster did not become ready within {READY_TIMEOUT:.0f} s: waiting for {what}",
                             hint=f"see the logs in {self.dir} (the machine may be very busy)")

    def _ensure_user_context(self, progress: Progress) -> None:
        """Put the context back into the user's kubeconfig if someone removed or changed it."""
        own = kubeconfig.read(self.kubeconfig_path)
        path = self.user_kubeconfig
        mine = kubeconfig.read(path)
        wanted = {(s, e["name"]): e for s in kubeconfig.SECTIONS for e in own.get(s) or []}
        present = {(s, e.get("name")): e for s in kubeconfig.SECTIONS for e in mine.get(s) or []}
        if all(present.get(key) == entry for key, entry in wanted.items()):
            return
        path, result = kubeconfig.merge_into_user(own, path)
        progress(kubeconfig.merge_message(path, result))

    # -- down --------------------------------------------------------------------------------------------------

    def down(self, progress: Progress = quiet) -> None:
        with procs.exclusive(self._lock, "the sim cluster", progress):
            self._down(progress)

    def _down(self, progress: Progress) -> None:
        existed = self.dir.exists()
        stopped = self._stop()
        left = [n for n in self.procs.names() if self.procs.running(n)]
        if left:
            raise ProviderError(f"could not stop {', '.join(left)} of the sim cluster",
                                hint=f"their pids are in {self.dir}; stop them, then run `labctl down` again")
        path, removed = kubeconfig.remove_from_user(CONTEXT, self.user_kubeconfig)
        if existed:
            shutil.rmtree(self.dir)
        if stopped:
            progress(f"Stopped {', '.join(stopped)}")
        if removed:
            progress(f"Removed context {CONTEXT} from {path}")
        progress("The sim cluster is deleted" if existed or removed else "There is no sim cluster")

    # -- status ------------------------------------------------------------------------------------------------

    def status(self) -> ProviderStatus:
        ports = self._ports()
        records = {name: self.procs.running(name) for name in COMPONENTS}
        exists = self.dir.exists() and any(records.values())
        probe = probe_api(self.kubeconfig_path, CONTEXT) if exists and self.kubeconfig_path.exists() else None
        reachable = bool(probe and probe.reachable)
        etcd_ok = reachable and self._readyz_check("etcd")
        kwok_ok = "kwok" in ports and _http_ok(f"http://127.0.0.1:{ports['kwok']}/healthz")
        extra = {"etcd": (etcd_ok, "API server reaches it" if etcd_ok else "API server cannot reach it"),
                 "kube-apiserver": (reachable, "ready" if reachable else (probe.error if probe else "")),
                 "kwok": (kwok_ok, "healthy" if kwok_ok else "its /healthz does not answer")}
        components = []
        for name in COMPONENTS:
            rec = records[name]
            if rec is None:
                components.append(ComponentStatus(name, False, "not running"))
                continue
            ok, detail = extra.get(name, (True, "running"))
            components.append(ComponentStatus(name, ok, detail, rec.pid, procs.proc_rss_bytes(rec.pid)))
        message = ""
        if not exists and (self.dir / "cluster.json").exists():
            message = "the sim cluster is stopped: `labctl up --provider sim` starts it again, with its data"
        elif not exists:
            message = "there is no sim cluster: `labctl up --provider sim` starts one"
        elif not all(records.values()):
            message = "some components stopped: `labctl up` restarts them"
        return ProviderStatus(
            provider=self.name, context=CONTEXT, exists=exists, api_reachable=reachable, components=components,
            nodes_ready=probe.nodes_ready if probe else 0, nodes_total=probe.nodes_total if probe else 0,
            message=message,
        )

    def _readyz_check(self, check: str) -> bool:
        try:
            return self._client().request("GET", f"/readyz/{check}", timeout=3).status == 200
        except LabError:
            return False


def _http_ok(url: str) -> bool:
    try:
        return urllib3.request("GET", url, timeout=urllib3.Timeout(total=2.0), retries=False).status == 200
    except urllib3.exceptions.HTTPError:
        return False
