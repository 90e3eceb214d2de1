"""What every cluster provider offers: bring a cluster up, take it down, say how it is."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

Progress = Callable[[str], None]


def quiet(_: str) -> None:
    """A progress callback that prints nothing."""


@dataclass(frozen=True)
class ComponentStatus:
    """One part of a cluster (a process, a container, the API) and whether it is healthy."""

    name: str
    healthy: bool
    detail: str = ""
    pid: int | None = None
    rss_bytes: int | None = None


@dataclass(frozen=True)
class ProviderStatus:
    """How a provider's cluster is doing right now."""

    provider: str
    context: str
    exists: bool                     # labctl finds the cluster (processes, a kind cluster, a context)
    api_reachable: bool
    components: list[ComponentStatus] = field(default_factory=list)
    nodes_ready: int = 0
    nodes_total: int = 0
    message: str = ""                # one line for a person, when something needs saying

    @property
    def healthy(self) -> bool:
        return self.exists and self.api_reachable and all(c.healthy for c in self.components)


class Provider(abc.ABC):
    """A way of having a Kubernetes cluster for the labs."""

    name: str = ""
    pods_run: bool = True            # False where pods are only simulated (sim): behaviour checks cannot run

    @property
    @abc.abstractmethod
    def context(self) -> str:
        """The kube context labctl uses for this cluster."""

    @property
    @abc.abstractmethod
    def kubeconfig_path(self) -> Path:
        """A kubeconfig file that holds `context`."""

    @abc.abstractmethod
    def up(self, progress: Progress = quiet) -> None:
        """Create or start the cluster and return when its API answers; a running cluster is left as is."""

    @abc.abstractmethod
    def down(self, progress: Progress = quiet) -> None:
        """Stop and delete what `up` created (nothing else)."""

    @abc.abstractmethod
    def status(self) -> ProviderStatus:
        """The cluster's components and their health."""

    def is_up(self) -> bool:
        """True when the cluster exists and its API server is ready."""
        st = self.status()
        return st.exists and st.api_reachable


@dataclass(frozen=True)
class ApiProbe:
    reachable: bool
    nodes_ready: int = 0
    nodes_total: int = 0
    error: str = ""


def node_ready(node: dict) -> bool:
    """True when a Node object's Ready condition is True."""
    for cond in (node.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return cond.get("status") == "True"
    return False


def probe_api(kubeconfig: Path, context: str, timeout: float = 3.0) -> ApiProbe:
    """Ask a cluster's API server whether it is ready and how many of its nodes are Ready."""
    from labctl.errors import LabError
    from labctl.kube.client import ApiError, Client

    try:
        client = Client.from_kubeconfig(kubeconfig, context, timeout=timeout)
        if not client.readyz():
            return ApiProbe(False, error=f"no ready API server at {client.creds.server}")
        nodes, _ = client.list("v1", "Node")
    except (LabError, ApiError, OSError) as e:
        return ApiProbe(False, error=str(e))
    return ApiProbe(True, sum(1 for n in nodes if node_ready(n)), len(nodes))
