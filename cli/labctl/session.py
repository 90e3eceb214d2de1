"""Which cluster a command acts on, and the safety rule that guards it.

labctl acts only on the contexts it created (`labctl-sim`, `labctl-local`, `kind-labctl`) unless the user names
another with `--context` (or $LABCTL_CONTEXT). The cluster `labctl up` recorded in the progress file is used
when nothing is named. It never falls back to the kubeconfig's current context.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from labctl.errors import ClusterUnreachable, ContextRefused
from labctl.state import State

from labctl.providers import OWN_CONTEXT_PROVIDERS as OWN_CONTEXTS


@dataclass(frozen=True)
class Target:
    provider: str          # sim | local | kind | existing
    context: str
    kubeconfig: Path
    pods_run: bool         # False where pods are simulated: behaviour checks are not verifiable there


def user_kubeconfig() -> Path:
    """The kubeconfig kubectl would read first."""
    env = os.environ.get("KUBECONFIG")
    if env:
        return Path(env.split(os.pathsep)[0])
    return Path.home() / ".kube" / "config"


def _has_context(kubeconfig: Path, context: str) -> bool:
    try:
        data = yaml.safe_load(kubeconfig.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(data, dict) and any(c.get("name") == context for c in data.get("contexts") or [])


def _current_context(kubeconfig: Path) -> str | None:
    try:
        data = yaml.safe_load(kubeconfig.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return None
    return data.get("current-context") if isinstance(data, dict) else None


def target_for(provider_name: str, context: str | None = None) -> Target:
    from labctl.providers import get_provider

    provider = get_provider(provider_name, context=context)
    return Target(provider.name, provider.context, Path(provider.kubeconfig_path), provider.pods_run)


def resolve(state: State, context: str | None = None) -> Target:
    """The cluster to act on: the named context, else the one `labctl up` recorded; refuse anything else."""
    context = context or os.environ.get("LABCTL_CONTEXT") or None
    if context:
        if context in OWN_CONTEXTS:
            target = target_for(OWN_CONTEXTS[context])
            if not target.kubeconfig.exists() and _has_context(user_kubeconfig(), context):
                # a labctl cluster whose state lives elsewhere (another state dir, a copied kubeconfig)
                return Target(target.provider, context, user_kubeconfig(), target.pods_run)
            return target
        return target_for("existing", context=context)
    cluster = state.cluster
    if cluster:
        if cluster.get("provider") == "existing":
            return target_for("existing", context=cluster["context"])
        return target_for(cluster["provider"])
    current = _current_context(user_kubeconfig())
    if current and current not in OWN_CONTEXTS:
        raise ContextRefused(
            f"no labctl cluster is up, and the current kube context {current!r} was not created by labctl: refusing to touch it",
            hint=f"run `labctl up` for a lab cluster, or name the context explicitly: --context {current}",
        )
    raise ClusterUnreachable("no labctl cluster is up", hint="run `labctl up` (or `labctl start LAB`, which brings one up)")


def connect(target: Target):
    """A client for the target; the kube client is imported here so commands without a cluster stay fast."""
    from labctl.kube.client import Client

    return Client.from_kubeconfig(target.kubeconfig, target.context)
