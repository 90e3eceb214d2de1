"""The existing provider: a cluster someone else made, named by its kube context. labctl never creates or deletes
anything here: `up` only checks that the context exists and its API answers, `down` does nothing.
"""

from __future__ import annotations

from pathlib import Path

from labctl.errors import ClusterUnreachable, UsageError
from labctl.providers import kubeconfig
from labctl.providers.base import ComponentStatus, Progress, Provider, ProviderStatus, probe_api, quiet


def find_context(context: str, files: list[Path]) -> Path | None:
    """The first kubeconfig file (in kubectl's order) that defines `context`."""
    for path in files:
        if kubeconfig.has_context(kubeconfig.read(path), context):
            return path
    return None


class ExistingProvider(Provider):
    """A context from the user's kubeconfig."""

    name = "existing"
    pods_run = True

    def __init__(self, context: str, files: list[Path] | None = None) -> None:
        self._context = context
        self._files = files if files is not None else kubeconfig.search_paths()
        self._path = find_context(context, self._files)

    @property
    def context(self) -> str:
        return self._context

    @property
    def kubeconfig_path(self) -> Path:
        return self._require()

    def _require(self) -> Path:
        if self._path is None:
            known = sorted({name for p in self._files for name in kubeconfig.context_names(kubeconfig.read(p))})
            listed = f" (there are: {', '.join(known)})" if known else " (there are none)"
            raise UsageError(
                f"no context {self._context!r} in {', '.join(str(p) for p in self._files)}{listed}",
                hint="`kubectl config get-contexts` lists them; pass one with --context NAME",
            )
        return self._path

    def up(self, progress: Progress = quiet) -> None:
        path = self._require()
        probe = probe_api(path, self._context)
        if not probe.reachable:
            raise ClusterUnreachable(f"the cluster of context {self._context} does not answer: {probe.error}",
                                     hint="check that the cluster is running and the context is right")
        progress(f"Using the existing cluster of context {self._context} ({probe.nodes_ready}/{probe.nodes_total} "
                 "nodes Ready); labctl will not create or delete it")

    def down(self, progress: Progress = quiet) -> None:
        progress(f"labctl did not create context {self._context}, so it leaves that cluster as it is")

    def status(self) -> ProviderStatus:
        if self._path is None:
            return ProviderStatus(self.name, self._context, False, False,
                                  message=f"no context {self._context!r} in the kubeconfig")
        probe = probe_api(self._path, self._context)
        return ProviderStatus(
            self.name, self._context, True, probe.reachable,
            [ComponentStatus("kube-apiserver", probe.reachable, "ready" if probe.reachable else probe.error)],
            probe.nodes_ready, probe.nodes_total,
        )
