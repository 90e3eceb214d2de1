"""Cluster providers: where the labs run.

- `kind`: a real cluster in Docker containers (needs a Docker daemon and the kind node image).
- `local`: a real single-node cluster on this Linux machine (root).
- `sim`: a real API server, controllers and scheduler, with simulated nodes (kwok); pods never run.
- `existing`: a cluster someone else made, named by its kube context; labctl never creates or deletes it.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
import subprocess
import sys

from labctl.errors import ProviderError, ToolboxError, UsageError
from labctl.providers.base import ComponentStatus, Progress, Provider, ProviderStatus

__all__ = ["OWN_CONTEXT_PROVIDERS", "PROVIDER_NAMES", "ComponentStatus", "Progress", "Provider", "ProviderStatus", "default_provider_name",
           "get_provider", "local_available"]

PROVIDER_NAMES = ("kind", "local", "sim", "existing")
# The contexts labctl creates, and the provider behind each: the only contexts it acts on unprompted.
OWN_CONTEXT_PROVIDERS = {"labctl-sim": "sim", "labctl-local": "local", "kind-labctl": "kind"}


def local_available() -> bool:
    """True when this labctl ships the local provider."""
    return importlib.util.find_spec("labctl.providers.local") is not None


def get_provider(name: str, context: str | None = None, *, ports: tuple[str, ...] | list[str] = ()) -> Provider:
    """The provider called `name`. `context` is required for `existing`; `ports` are kind's host port mappings."""
    if name not in PROVIDER_NAMES:
        raise UsageError(f"unknown provider {name!r}", hint=f"choose one of: {', '.join(PROVIDER_NAMES)}")
    if ports and name != "kind":
        raise UsageError("--ports maps host ports into a kind node; it applies to --provider kind only")
    if name == "existing":
        from labctl.providers.existing import ExistingProvider

        if not context:
            raise UsageError("--provider existing needs the kube context to use",
                             hint="add --context NAME (`kubectl config get-contexts` lists them)")
        return ExistingProvider(context)
    if name == "sim":
        from labctl.providers.sim import SimProvider

        provider: Provider = SimProvider()
    elif name == "kind":
        from labctl.providers.kind import KindProvider

        provider = KindProvider(ports=list(ports))
    else:
        if not local_available():
            raise ProviderError("this labctl has no local provider",
                                hint="use --provider sim, or --provider kind where Docker runs")
        module = importlib.import_module("labctl.providers.local")
        provider = module.LocalProvider()
    if context and context != provider.context:
        raise UsageError(
            f"--context {context} does not name the {name} cluster (its context is {provider.context})",
            hint=f"to use a cluster labctl did not create: --provider existing --context {context}",
        )
    return provider


def docker_running(timeout: float = 5.0) -> bool:
    """True when the docker CLI is installed and its daemon answers."""
    docker = shutil.which("docker")
    if docker is None:
        return False
    try:
        done = subprocess.run([docker, "info", "--format", "{{.ServerVersion}}"], capture_output=True,
                              timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0 and bool(done.stdout.strip())


def _kind_installed() -> bool:
    try:
        from labctl.toolbox import binary

        binary("kind")
    except (ImportError, ToolboxError):
        return False
    return True


def _local_can_run() -> bool:
    if not (sys.platform.startswith("linux") and os.geteuid() == 0 and local_available()):
        return False
    from labctl.providers.local import can_run

    return can_run()


def default_provider_name() -> str:
    """kind where Docker runs and kind is installed; else local where it can run (Linux, root, binaries and
    packages present); else sim."""
    if _kind_installed() and docker_running():
        return "kind"
    if _local_can_run():
        return "local"
    return "sim"
