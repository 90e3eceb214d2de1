"""The kind provider: a real cluster in Docker containers, driven through the toolbox's `kind` CLI.

kind writes its context (`kind-labctl`) into the user's kubeconfig itself and removes it on delete.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import yaml

from labctl.errors import ProviderError, ToolboxError, UsageError
from labctl.providers import kubeconfig, users
from labctl.providers.base import ComponentStatus, Progress, Provider, ProviderStatus, probe_api, quiet

CLUSTER = "labctl"
CONTEXT = f"kind-{CLUSTER}"
CREATE_WAIT = "120s"
_NO_DOCKER_HINT = "start Docker, or use `labctl up --provider sim` (no Docker needed)"


@dataclass(frozen=True)
class PortMapping:
    host_port: int
    container_port: int
    protocol: str = "TCP"
    listen_address: str | None = None


_PORT_RE = re.compile(r"^(?:(?P<addr>[0-9.]+|\[[0-9a-fA-F:]+\]):)?(?P<host>\d+):(?P<container>\d+)(?:/(?P<proto>\w+))?$")


def parse_port(spec: str) -> PortMapping:
    """`HOST:CONTAINER[/tcp|udp|sctp]`, optionally prefixed by a listen address (`127.0.0.1:8080:80`)."""
    m = _PORT_RE.match(spec.strip())
    if not m:
        raise UsageError(f"--ports {spec!r} is not HOST:CONTAINER", hint="for example --ports 8080:80")
    host, container = int(m["host"]), int(m["container"])
    for port in (host, container):
        if not 1 <= port <= 65535:
            raise UsageError(f"--ports {spec!r}: {port} is not a port number (1-65535)")
    proto = (m["proto"] or "tcp").upper()
    if proto not in ("TCP", "UDP", "SCTP"):
        raise UsageError(f"--ports {spec!r}: protocol must be tcp, udp or sctp")
    addr = m["addr"].strip("[]") if m["addr"] else None
    return PortMapping(host, container, proto, addr)


def render_config(ports: list[str] | tuple[str, ...] = ()) -> str:
    """kind's cluster config: one control-plane node, with host port mappings when asked for."""
    node: dict = {"role": "control-plane"}
    mappings = [parse_port(p) for p in ports]
    hosts = [m.host_port for m in mappings]
    if len(set(hosts)) != len(hosts):
        raise UsageError("--ports maps the same host port twice")
    if mappings:
        node["extraPortMappings"] = []
        for m in mappings:
            entry: dict = {"containerPort": m.container_port, "hostPort": m.host_port, "protocol": m.protocol}
            if m.listen_address:
                entry["listenAddress"] = m.listen_address
            node["extraPortMappings"].append(entry)
    config = {"kind": "Cluster", "apiVersion": "kind.x-k8s.io/v1alpha4", "name": CLUSTER, "nodes": [node]}
    return yaml.safe_dump(config, sort_keys=False)


def explain_create_failure(output: str) -> ProviderError:
    """Turn the output of a failed `kind create cluster` into one line a person can act on."""
    text = output.lower()
    if ("cannot connect to the docker daemon" in text or "is the docker daemon running" in text
            or "failed to get docker info" in text or "docker.sock" in text and "connect" in text):
        return ProviderError("kind cannot create the cluster: Docker isn't running (no daemon answers)",
                             hint=_NO_DOCKER_HINT)
    if "failed to detect any supported node provider" in text or "executable file not found" in text:
        return ProviderError("kind cannot create the cluster: Docker isn't installed", hint=_NO_DOCKER_HINT)
    if "permission denied" in text and "docker" in text:
        return ProviderError("kind cannot create the cluster: no permission to use Docker",
                             hint="add yourself to the docker group, or use `labctl up --provider sim`")
    if "already exist" in text:
        return ProviderError(f"a kind cluster named {CLUSTER} already exists but does not answer",
                             hint="`labctl down --provider kind` deletes it; then `labctl up` again")
    if "address already in use" in text or "port is already allocated" in text:
        return ProviderError("kind cannot create the cluster: a host port in --ports is already in use",
                             hint="choose other host ports, or leave --ports out")
    image = re.search(r"(kindest/node:[\w.@:-]+)", output)
    if image and ("pull" in text or "no such image" in text or "not found" in text):
        return ProviderError(f"kind cannot get its node image {image[1].split('@')[0]} (no registry reachable?)",
                             hint="load the image into Docker (`docker load`), or use `labctl up --provider sim`")
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("ERROR") or "error" in ln.lower()]
    last = (errors or lines or ["kind exited with an error and printed nothing"])[-1]
    return ProviderError(f"kind cannot create the cluster: {last[:300]}", hint=_NO_DOCKER_HINT)


class KindProvider(Provider):
    """A kind cluster named `labctl`."""

    name = "kind"
    pods_run = True

    def __init__(self, ports: list[str] | tuple[str, ...] = (), state_root: Path | None = None) -> None:
        render_config(ports)  # bad --ports fail now, before anything runs
        self.ports = list(ports)
        self.dir = (state_root or users.state_root()) / "clusters" / "kind"

    @property
    def context(self) -> str:
        return CONTEXT

    @property
    def kubeconfig_path(self) -> Path:
        return kubeconfig.user_path()

    def _kind(self) -> str:
        try:
            from labctl.toolbox import binary

            return str(binary("kind"))
        except (ImportError, ToolboxError) as e:
            raise ToolboxError("the kind provider needs kind, which is not installed",
                               hint="run `labctl toolbox install`") from e

    def _run(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        env = dict(os.environ)
        # kind writes its context into $KUBECONFIG, else ~/.kube/config of whoever runs it: under sudo, the
        # learner's file must get it.
        env["KUBECONFIG"] = str(self.kubeconfig_path)
        try:
            return subprocess.run([self._kind(), *args], capture_output=True, text=True, env=env,
                                  timeout=timeout, check=False)
        except subprocess.TimeoutExpired as e:
            raise ProviderError(f"`kind {' '.join(args)}` did not finish within {timeout:.0f} s") from e

    def clusters(self) -> list[str]:
        """Names of the kind clusters Docker has (empty when Docker is not running)."""
        done = self._run("get", "clusters", timeout=30)
        if done.returncode != 0:
            return []
        return [ln.strip() for ln in done.stdout.splitlines() if ln.strip()]

    def up(self, progress: Progress = quiet) -> None:
        if CLUSTER in self.clusters():
            if probe_api(self.kubeconfig_path, CONTEXT).reachable:
                progress(f"The kind cluster {CLUSTER} is already up (context {CONTEXT})")
                return
            progress(f"The kind cluster {CLUSTER} exists; refreshing its kubeconfig entry")
            done = self._run("export", "kubeconfig", "--name", CLUSTER, timeout=60)
            if done.returncode != 0:
                raise explain_create_failure(done.stderr + done.stdout)
            users.give(self.kubeconfig_path)
            return
        user = users.target_user()
        users.make_dirs(self.dir, user)
        config = self.dir / "kind-config.yaml"
        config.write_text(render_config(self.ports))
        users.give(config, user)
        progress(f"Creating the kind cluster {CLUSTER} (this takes a minute or two)")
        done = self._run("create", "cluster", "--name", CLUSTER, "--config", str(config), "--wait", CREATE_WAIT)
        if done.returncode != 0:
            raise explain_create_failure(done.stderr + "\n" + done.stdout)
        users.give(self.kubeconfig_path)
        progress(f"Context {CONTEXT} added to {self.kubeconfig_path}")

    def down(self, progress: Progress = quiet) -> None:
        if CLUSTER not in self.clusters():
            _, removed = kubeconfig.remove_from_user(CONTEXT, self.kubeconfig_path)
            progress(f"There is no kind cluster {CLUSTER}" + (f"; removed its stale context {CONTEXT}" if removed else ""))
            return
        done = self._run("delete", "cluster", "--name", CLUSTER, timeout=300)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["kind exited with an error"])[-1]
            raise ProviderError(f"kind could not delete the cluster {CLUSTER}: {last}")
        progress(f"Deleted the kind cluster {CLUSTER} and its context {CONTEXT}")

    def status(self) -> ProviderStatus:
        from labctl.providers import docker_running

        docker = docker_running()
        components = [ComponentStatus("docker", docker, "daemon answers" if docker else "no daemon answers")]
        if not docker:
            return ProviderStatus(self.name, CONTEXT, False, False, components,
                                  message="Docker isn't running, so no kind cluster can run")
        exists = CLUSTER in self.clusters()
        if not exists:
            return ProviderStatus(self.name, CONTEXT, False, False, components,
                                  message="no kind cluster: `labctl up --provider kind` creates one")
        done = self._run("get", "nodes", "--name", CLUSTER, timeout=30)
        nodes = [ln.strip() for ln in done.stdout.splitlines() if ln.strip()]
        components.append(ComponentStatus("node containers", bool(nodes), ", ".join(nodes) or "none"))
        probe = probe_api(self.kubeconfig_path, CONTEXT)
        components.append(ComponentStatus("kube-apiserver", probe.reachable, "ready" if probe.reachable else probe.error))
        return ProviderStatus(self.name, CONTEXT, True, probe.reachable, components,
                              nodes_ready=probe.nodes_ready, nodes_total=probe.nodes_total)
