"""`labctl operator`: run the Microservice operator here, in the background, or see where it runs."""

from __future__ import annotations

import json
from pathlib import Path

import click

from labctl.errors import EnvironmentProblem, UsageError


def _progress(msg: str) -> None:
    click.echo(click.style("• ", fg="cyan") + msg, err=True)


def _context_option(f):
    return click.option(
        "--context", envvar="LABCTL_CONTEXT", metavar="NAME",
        help="Kube context to act on; labctl only touches contexts it created unless you name one here "
             "[env: LABCTL_CONTEXT].",
    )(f)


def _target(context: str | None):
    from labctl import session, state

    return session.resolve(state.load(), context)


@click.group("operator", context_settings={"help_option_names": ["-h", "--help"]})
def operator() -> None:
    """The Microservice operator of the control-loops lab (a kopf control loop).

    `labctl start control-loops` installs it: from its Helm chart where pods run (local, kind), as a background
    process on sim. These commands run it by hand, to watch its logs or to debug it.
    """


@operator.command("run")
@_context_option
@click.option("--kubeconfig", type=click.Path(dir_okay=False, path_type=Path),
              help="A kubeconfig to use instead of labctl's cluster (with --context: that context of it).")
@click.option("--health-port", type=click.IntRange(1, 65535), default=8080, show_default=True,
              help="Port of /healthz and /readyz (on 127.0.0.1).")
@click.option("--resync-seconds", type=click.FloatRange(min=0.5), default=60.0, show_default=True,
              help="How often every Microservice is compared with its children, whatever events arrived.")
@click.option("--watch-timeout", type=click.IntRange(5, 3600), default=60, show_default=True,
              help="Seconds a watch stream stays open before it is reopened.")
@click.option("--inactivity-timeout", type=click.FloatRange(min=1), default=70.0, show_default=True,
              help="Reopen a watch stream that was silent (bookmarks included) this many seconds.")
@click.option("--log-format", type=click.Choice(["full", "plain", "json"]), default="full", show_default=True,
              help="Log line format.")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging (every request and handler).")
def run_cmd(context: str | None, kubeconfig: Path | None, health_port: int, resync_seconds: float,
            watch_timeout: int, inactivity_timeout: float, log_format: str, verbose: bool) -> None:
    """Run the operator in the foreground against labctl's cluster; Ctrl-C stops it.

    Stop the background one first (`labctl operator stop`): two operators would both act on every change.
    """
    from labctl_operator.main import Options, StartupError, run

    if kubeconfig is None:
        target = _target(context)
        kubeconfig, context = target.kubeconfig, target.context
    elif not kubeconfig.exists():
        raise UsageError(f"kubeconfig {kubeconfig} does not exist")
    options = Options(kubeconfig=kubeconfig, context=context, health_port=health_port,
                      resync_seconds=resync_seconds, watch_timeout=watch_timeout,
                      inactivity_timeout=inactivity_timeout, log_format=log_format, verbose=verbose)
    try:
        run(options)
    except StartupError as e:
        raise EnvironmentProblem(str(e), hint="`labctl operator status` shows whether another one is running")


@operator.command("start")
@_context_option
def start_cmd(context: str | None) -> None:
    """Run the operator in the background for labctl's cluster (the CRD is applied first); waits until ready."""
    from labctl import addons, session

    target = _target(context)
    client = session.connect(target)
    addons.apply_crds(client, _progress)
    record = addons.start_host_operator(target, _progress)
    click.echo(f"Operator running: pid {record.pid}, log {record.log}")
    if target.pods_run and addons.operator_status(target, client)["in_cluster"]:
        click.echo(click.style("note: ", fg="yellow") + f"the chart's operator also runs in {addons.NAMESPACE}; "
                   f"scale it to 0 while this one runs: labctl kubectl -n {addons.NAMESPACE} scale "
                   f"deployment/{addons.RELEASE} --replicas=0")


@operator.command("stop")
@_context_option
def stop_cmd(context: str | None) -> None:
    """Stop the background operator (the one `start` or `labctl start` launched on this machine)."""
    from labctl import addons

    target = _target(context)
    if addons.stop_host_operator(target):
        click.echo("Operator stopped. Microservices keep their children; nothing reconciles them until it runs again.")
    else:
        click.echo("No background operator is running for this cluster.")


@operator.command("status")
@_context_option
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="Output format.")
def status_cmd(context: str | None, output: str) -> None:
    """Where the operator runs (a background process, the chart in labctl-system) and whether it is ready."""
    from labctl import addons, session
    from labctl.errors import ClusterUnreachable

    target = _target(context)
    try:
        client = session.connect(target) if target.pods_run else None
        info = addons.operator_status(target, client)
    except ClusterUnreachable:
        info = addons.operator_status(target, None)
    if output == "json":
        click.echo(json.dumps(info, indent=2))
        return
    host, cluster = info["host_process"], info["in_cluster"]
    if host:
        mark = click.style("✓", fg="green") if host["ready"] else click.style("✗", fg="red")
        rss = f", {host['rss_bytes'] / 2**20:.0f} MiB" if host["rss_bytes"] else ""
        click.echo(f"{mark} background process: pid {host['pid']}{rss}, probes {host['probes']} — {host['reason']}")
        click.echo(f"  log {host['log']}")
    if cluster:
        ok = cluster["ready_replicas"] >= cluster["replicas"] > 0
        mark = click.style("✓", fg="green") if ok else click.style("✗", fg="red")
        click.echo(f"{mark} in the cluster: deployment/{cluster['deployment']} in {cluster['namespace']}, "
                   f"{cluster['ready_replicas']}/{cluster['replicas']} ready, image {cluster['image']}")
    if not host and not cluster:
        click.echo("The operator is not running. `labctl start control-loops` installs it; "
                   "`labctl operator start` runs it in the background.")
