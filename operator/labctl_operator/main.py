"""Running the operator: options, credentials, the probe server, kopf, the resync loop, a clean stop."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

from labctl_operator import __version__

log = logging.getLogger("labctl_operator")


@dataclass(frozen=True)
class Options:
    """How to run the operator."""

    kubeconfig: Path | None = None  # None: in-cluster credentials when in a pod, else $KUBECONFIG
    context: str | None = None
    health_host: str = "127.0.0.1"
    health_port: int = 8080
    resync_seconds: float = 60.0
    watch_timeout: int = 60
    inactivity_timeout: float = 70.0
    log_format: str = "full"
    verbose: bool = False
    # Stop when the kubeconfig file disappears (a host process whose cluster was deleted).
    exit_with_kubeconfig: bool = False


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="labctl-operator",
        description="Keeps each Microservice's Deployment and Service in the shape its spec describes.")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("--kubeconfig", type=Path, help="kubeconfig file (default: in-cluster credentials in a pod, "
                                                   "else $KUBECONFIG or ~/.kube/config)")
    p.add_argument("--context", help="context of the kubeconfig (default: its current context)")
    p.add_argument("--health-host", default=None,
                   help="address of the probe server (default: 0.0.0.0 in a pod, else 127.0.0.1)")
    p.add_argument("--health-port", type=int, default=8080, help="port of /healthz and /readyz (default 8080)")
    p.add_argument("--resync-seconds", type=float, default=60.0,
                   help="how often every Microservice is compared with its children (default 60)")
    p.add_argument("--watch-timeout", type=int, default=60,
                   help="the longest a watch stream stays open before it is reopened (default 60)")
    p.add_argument("--inactivity-timeout", type=float, default=70.0,
                   help="reopen a watch stream silent for this long, bookmarks included (default 70)")
    p.add_argument("--log-format", choices=["full", "plain", "json"], default="full", help="log line format")
    p.add_argument("--exit-with-kubeconfig", action="store_true",
                   help="stop when the kubeconfig file is deleted (its cluster is gone)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def options_from(argv: list[str] | None = None) -> Options:
    a = parser().parse_args(argv)
    in_pod = bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and a.kubeconfig is None
    return Options(
        kubeconfig=a.kubeconfig, context=a.context,
        health_host=a.health_host or ("0.0.0.0" if in_pod else "127.0.0.1"), health_port=a.health_port,
        resync_seconds=a.resync_seconds, watch_timeout=a.watch_timeout, inactivity_timeout=a.inactivity_timeout,
        log_format=a.log_format, verbose=a.verbose, exit_with_kubeconfig=a.exit_with_kubeconfig,
    )


class StartupError(Exception):
    """The operator cannot start: bad credentials, a port in use."""


def run(options: Options) -> None:
    """Run until SIGTERM/SIGINT (or until the kubeconfig is deleted, with exit_with_kubeconfig)."""
    import kopf

    from labctl_operator import handlers, kube
    from labctl_operator.reconcile import Reconciler

    kopf.configure(verbose=options.verbose, log_format=kopf.LogFormat[options.log_format.upper()])
    if not options.verbose:
        # kopf logs every handler call; the operator logs what it changed, which is what a reader wants.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    try:
        cfg = kube.configuration(options.kubeconfig, options.context)
    except Exception as e:  # the client raises several types for one cause: unusable credentials
        raise StartupError(f"cannot load Kubernetes credentials: {e}") from e
    api = kube.Api(cfg)
    reconciler = Reconciler(api)

    def login():
        # Read afresh on every login: kopf logs in again after a 401, when a projected token has rotated.
        return kube.connection_info(kube.configuration(options.kubeconfig, options.context))

    settings = handlers.configure(kopf.OperatorSettings(), watch_timeout=options.watch_timeout,
                                  inactivity_timeout=options.inactivity_timeout)
    try:
        asyncio.run(_serve(options, api, reconciler, lambda stop: handlers.build_registry(reconciler, login, stop),
                           settings))
    finally:
        reconciler.close()
        api.close()


async def _serve(options: Options, api, reconciler, make_registry, settings) -> None:
    import kopf

    from labctl_operator import health as health_mod

    state = health_mod.Health()
    stop = asyncio.Event()  # set by kopf's cleanup (a signal), or by the operator itself (kubeconfig deleted)
    ready = asyncio.Event()
    registry = make_registry(stop)
    try:
        runner = await health_mod.serve(state, options.health_host, options.health_port)
    except OSError as e:
        raise StartupError(f"cannot serve probes on {options.health_host}:{options.health_port}: "
                           f"{e.strerror or e}") from e

    async def mark_started() -> None:
        await ready.wait()
        state.started = True

    watched = options.kubeconfig if options.exit_with_kubeconfig else None
    tasks = [
        asyncio.create_task(mark_started()),
        asyncio.create_task(health_mod.ping(api, state, stop, kubeconfig=watched)),
        asyncio.create_task(health_mod.resync(reconciler, state, stop, every=options.resync_seconds)),
    ]
    try:
        # kopf derives its identity from the login name by default; a pod running as a numeric uid with no
        # passwd entry (PodSecurity restricted, runAsUser 10001) has none, and getpass would crash the operator.
        identity = f"{os.environ.get('POD_NAME') or socket.gethostname()}@labctl-operator"
        await kopf.operator(registry=registry, settings=settings, clusterwide=True, standalone=True,
                            ready_flag=ready, stop_flag=stop, identity=identity)
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    """`python -m labctl_operator`: exit 0 on a clean stop, 2 when it cannot start."""
    options = options_from(argv)
    try:
        run(options)
    except StartupError as e:
        print(f"labctl-operator: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        pass
