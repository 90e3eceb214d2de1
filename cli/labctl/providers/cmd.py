"""`labctl up`, `labctl down` and `labctl status`: bring the labs' cluster up, take it down, show its health."""

from __future__ import annotations

import functools
import json
import time
from typing import Any, Callable

import click

from labctl import state
from labctl.errors import EXIT_UNREACHABLE, LabError
from labctl.providers import PROVIDER_NAMES, Provider, ProviderStatus, default_provider_name, get_provider, users

PROVIDER_HELP = ("kind: a real cluster in Docker; local: a real node on this Linux machine (root); sim: a real "
                 "control plane with simulated nodes, pods never run; existing: a cluster you name with --context. "
                 "Default for `up`: kind where Docker runs, else local as root on Linux, else sim; for `down` and "
                 "`status`: the cluster `up` last brought up.")


class LabCommandError(click.ClickException):
    """A LabError shown as one line (and its hint), with the exit code documented for it."""

    def __init__(self, error: LabError) -> None:
        super().__init__(error.message)
        self.exit_code = error.exit_code
        self.hint = error.hint

    def format_message(self) -> str:
        return self.message + (f"\n  hint: {self.hint}" if self.hint else "")


def reports_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn LabErrors raised by a command into one-line messages with their exit codes."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except LabError as e:
            raise LabCommandError(e) from e

    return wrapper


def _progress_file():
    return users.state_root() / "progress.json"


def _record(provider: Provider) -> None:
    st = state.load(_progress_file())
    st.cluster = {"provider": provider.name, "context": provider.context, "kubeconfig": str(provider.kubeconfig_path)}
    st.save()
    users.give(_progress_file())


def _recorded() -> dict | None:
    return state.load(_progress_file()).cluster


def _split_ports(values: tuple[str, ...]) -> list[str]:
    return [p for v in values for p in v.split(",") if p.strip()]


def resolve(provider: str | None, context: str | None, ports: list[str] | tuple[str, ...] = (),
            *, for_up: bool) -> Provider:
    """The provider a command acts on: the one named, else (for `up`) the best for this machine, else the
    cluster `up` recorded."""
    if provider is None and context:
        recorded = _recorded()
        if recorded and recorded.get("context") == context:
            provider = recorded.get("provider")
        else:
            provider = "existing"
    if provider is None and not for_up:
        recorded = _recorded()
        if recorded and recorded.get("provider") in PROVIDER_NAMES:
            return get_provider(recorded["provider"],
                                recorded.get("context") if recorded["provider"] == "existing" else None)
        provider = "sim"
    if provider is None:
        provider = default_provider_name()
    return get_provider(provider, context, ports=tuple(ports))


provider_option = click.option("--provider", type=click.Choice(PROVIDER_NAMES), envvar="LABCTL_PROVIDER",
                               help=PROVIDER_HELP)
context_option = click.option("--context", metavar="NAME", envvar="LABCTL_CONTEXT",
                              help="The kube context of a cluster labctl did not create (implies --provider existing).")


@click.command("up", context_settings={"help_option_names": ["-h", "--help"]})
@provider_option
@context_option
@click.option("--ports", multiple=True, metavar="HOST:CONTAINER",
              help="kind only: map a host port into the node (repeatable, or comma-separated), e.g. 8080:80. "
                   "Default: none.")
@reports_errors
def up_cmd(provider: str | None, context: str | None, ports: tuple[str, ...]) -> None:
    """Bring the labs' cluster up (a running cluster is left as it is)."""
    started = time.monotonic()
    chosen = resolve(provider, context, _split_ports(ports), for_up=True)
    if provider is None and context is None:
        click.echo(f"Provider: {chosen.name} (choose another with --provider)")
    chosen.up(progress=click.echo)
    _record(chosen)
    note = "" if chosen.pods_run else " — pods are simulated: behaviour checks are reported as not verifiable"
    click.echo(f"Ready in {time.monotonic() - started:.1f} s: context {chosen.context}{note}")


@click.command("down", context_settings={"help_option_names": ["-h", "--help"]})
@provider_option
@context_option
@reports_errors
def down_cmd(provider: str | None, context: str | None) -> None:
    """Stop and delete the cluster labctl created (a cluster named with --context is left alone)."""
    chosen = resolve(provider, context, for_up=False)
    chosen.down(progress=click.echo)
    st = state.load(_progress_file())
    if st.cluster and st.cluster.get("provider") == chosen.name and st.cluster.get("context") == chosen.context:
        st.cluster = None
        st.save()
        users.give(_progress_file())


def _mb(n: int | None) -> str:
    return f"{n / 2**20:.0f} MB" if n else "-"


def format_status(st: ProviderStatus) -> str:
    """The status as a person reads it."""
    api = "API ready" if st.api_reachable else "API not reachable"
    nodes = f", {st.nodes_ready}/{st.nodes_total} nodes Ready" if st.api_reachable else ""
    lines = [f"Cluster: {st.provider} (context {st.context}): {api}{nodes}"]
    width = max((len(c.name) for c in st.components), default=0)
    for c in st.components:
        mark = "✓" if c.healthy else "✗"
        pid = f"pid {c.pid}" if c.pid else ""
        lines.append(f"  {mark} {c.name:<{width}}  {pid:<11} {_mb(c.rss_bytes):>7}  {c.detail}".rstrip())
    if st.message:
        lines.append(st.message)
    return "\n".join(lines)


def status_json(st: ProviderStatus) -> dict:
    return {
        "provider": st.provider, "context": st.context, "exists": st.exists, "apiReachable": st.api_reachable,
        "healthy": st.healthy, "nodesReady": st.nodes_ready, "nodesTotal": st.nodes_total, "message": st.message,
        "components": [{"name": c.name, "healthy": c.healthy, "detail": c.detail, "pid": c.pid,
                        "rssBytes": c.rss_bytes} for c in st.components],
    }


@click.command("status", context_settings={"help_option_names": ["-h", "--help"]})
@provider_option
@context_option
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="Output format.")
@reports_errors
def status_cmd(provider: str | None, context: str | None, output: str) -> None:
    """Show the cluster's components and their health (exit code 3 when its API does not answer)."""
    chosen = resolve(provider, context, for_up=False)
    st = chosen.status()
    if output == "json":
        click.echo(json.dumps(status_json(st), indent=2))
    else:
        click.echo(format_status(st))
    if not st.api_reachable:
        raise SystemExit(EXIT_UNREACHABLE)


__all__ = ["down_cmd", "format_status", "resolve", "status_cmd", "up_cmd"]
