"""Cluster-wide parts a lab declares under `requires:`, installed once and shared by the labs that use them.

`gateway-api`: see `labctl.gateway`.

`operator`: the Microservice CRD (server-side applied from the chart's `crds/`, the one definition there is) and
the operator itself. Where pods run (local, kind) it runs from its image, installed with the chart in
`labctl-system`; on sim, where pods never run, it runs as a tracked host process (pid file with command line
and start time) in the cluster's own process directory, so `labctl down` stops it with the cluster.
"""

from __future__ import annotations

import http.client
import json
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labctl import paths
from labctl.errors import ClusterUnreachable, EnvironmentProblem, LabDefinitionError
from labctl.providers import procs
from labctl.providers.base import Progress, quiet

ADDONS = ("operator", "gateway-api")
MANAGED_BY = {"app.kubernetes.io/managed-by": "labctl"}

RELEASE = "labctl-operator"
NAMESPACE = "labctl-system"
PROCESS = "labctl-operator"  # the host process's pid and log file names
CRD_NAME = "microservices.labctl.dev"
API_VERSION = "labctl.dev/v1alpha1"


def _version() -> str:
    from labctl_operator import __version__

    return __version__


def operator_image() -> str:
    """The operator's image, tagged with its version: built by labctl, in no registry."""
    return f"labctl.local/operator:{_version()}"


def chart_dir() -> Path:
    """charts/labctl-operator, in a checkout or inside the installed package."""
    return paths.data_dir() / "charts" / "labctl-operator"


def operator_dir() -> Path:
    """The operator's build context (Dockerfile, requirements.txt, labctl_operator/)."""
    return paths.data_dir() / "operator"


def crd_objects() -> list[dict]:
    """The CRDs of the chart's crds/ folder, labelled as labctl's."""
    import yaml

    folder = chart_dir() / "crds"
    objects = []
    for file in sorted(folder.glob("*.yaml")):
        for doc in yaml.safe_load_all(file.read_text()):
            if doc:
                doc.setdefault("metadata", {}).setdefault("labels", {}).update(MANAGED_BY)
                objects.append(doc)
    if not objects:
        raise EnvironmentProblem(f"no CRD found in {folder}", hint="reinstall labctl, or run it from a checkout")
    return objects


def ensure_addons(lab: Any, required: list[str], target: Any, client: Any, progress: Progress = quiet) -> None:
    """Install what `lab` requires on the target cluster, unless it is there already.

    `target` is a session Target, `client` a labctl.kube.client.Client for it.
    """
    for name in required:
        if name not in ADDONS:
            raise LabDefinitionError(f"lab {getattr(lab, 'slug', lab)} requires {name!r}, which labctl does not "
                                     f"provide (it provides: {', '.join(ADDONS)})",
                                     hint="the lab format is described in labs/FORMAT.md")
    if "operator" in required:
        ensure_operator(target, client, progress)
    if "gateway-api" in required:
        from labctl.gateway import ensure_gateway_api

        ensure_gateway_api(target, client, progress)


def ensure_operator(target: Any, client: Any, progress: Progress = quiet) -> None:
    """The CRD, then the operator: from its chart where pods run, as a host process on sim."""
    apply_crds(client, progress)
    if target.pods_run:
        install_chart(target, client, progress)
    else:
        start_host_operator(target, progress)


def apply_crds(client: Any, progress: Progress = quiet, *, timeout: float = 30.0) -> None:
    """Server-side apply the CRDs and wait until the API server serves them."""
    for crd in crd_objects():
        client.apply(crd)
        wait_established(client, crd["metadata"]["name"], timeout=timeout)
    progress(f"CRD {CRD_NAME} applied")


def wait_established(client: Any, name: str, *, timeout: float = 30.0) -> None:
    """Wait until the API server serves a CRD it was just given."""
    deadline = time.monotonic() + timeout
    while not _established(client.get("apiextensions.k8s.io/v1", "CustomResourceDefinition", name)):
        if time.monotonic() > deadline:
            raise ClusterUnreachable(f"the API server did not establish CRD {name} within {timeout:.0f}s",
                                     hint=f"`labctl kubectl describe crd {name}` says why")
        time.sleep(0.1)


def system_namespace(client: Any) -> None:
    """labctl-system, where add-ons run: labctl's, PodSecurity restricted."""
    client.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE, "labels": {
        **MANAGED_BY, "pod-security.kubernetes.io/enforce": "restricted",
        "pod-security.kubernetes.io/warn": "restricted", "pod-security.kubernetes.io/audit": "restricted"}}})


def _established(crd: dict | None) -> bool:
    conditions = ((crd or {}).get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions)


# -- on sim: a host process -----------------------------------------------------------------------------------

def host_registry(target: Any) -> procs.ProcessRegistry:
    """Where the host operator's pid file and log live for this target.

    On sim, the cluster's own process directory: `labctl down` stops every process recorded there.
    """
    if target.provider == "sim":
        from labctl.providers.sim import SimProvider

        return SimProvider().procs
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", target.context)
    return procs.ProcessRegistry(paths.state_dir() / "operators" / safe)


def host_argv(target: Any, health_port: int) -> list[str]:
    """The command line of the host operator for a target (what `labctl operator run` runs)."""
    return [sys.executable, "-m", "labctl_operator", "--kubeconfig", str(target.kubeconfig),
            "--context", target.context, "--health-port", str(health_port), "--exit-with-kubeconfig"]


def health_port_of(record: procs.ProcessRecord) -> int | None:
    """The probe port a host operator was started with, read from its recorded command line."""
    argv = record.argv
    for i, arg in enumerate(argv[:-1]):
        if arg == "--health-port" and argv[i + 1].isdigit():
            return int(argv[i + 1])
    return None


def _serves(record: procs.ProcessRecord, target: Any) -> bool:
    argv = record.argv
    return (str(target.kubeconfig) in argv and target.context in argv
            and any(a.endswith("labctl_operator") or a == "labctl_operator" for a in argv))


def host_operator(target: Any) -> procs.ProcessRecord | None:
    """The running host operator of this target, or None."""
    return host_registry(target).running(PROCESS)


def start_host_operator(target: Any, progress: Progress = quiet, *, timeout: float = 60.0) -> procs.ProcessRecord:
    """Start the operator as a background process for `target` (or keep the one running) and wait until ready."""
    registry = host_registry(target)
    record = registry.running(PROCESS)
    if record is not None and not _serves(record, target):
        registry.stop([PROCESS])  # one serving another kubeconfig or context: this target wants its own
        record = None
    if record is None:
        port = procs.free_ports(1)[0]
        record = registry.start(PROCESS, host_argv(target, port))
        progress(f"starting the operator as a host process (pid {record.pid}, log {record.log})")
    port = health_port_of(record)

    def died() -> None:
        if not procs.is_running(record):
            registry.pid_file(PROCESS).unlink(missing_ok=True)
            raise EnvironmentProblem(
                f"the operator stopped at once: {_last_line(registry.tail(PROCESS))}",
                hint=f"its log is {registry.log_file(PROCESS)}")

    if port is None or not procs.wait_for(lambda: probe(port, "/readyz")[0] == 200, timeout, 0.2, died):
        raise EnvironmentProblem(f"the operator did not become ready within {timeout:.0f}s",
                                 hint=f"its log is {registry.log_file(PROCESS)}; `labctl operator status` says more")
    progress(f"operator ready (pid {record.pid}, probes on http://127.0.0.1:{port}/readyz)")
    return record


def stop_host_operator(target: Any) -> bool:
    """Stop the host operator of `target`; False when none was running."""
    return bool(host_registry(target).stop([PROCESS]))


def probe(port: int, path: str, *, timeout: float = 2.0) -> tuple[int | None, str]:
    """(HTTP status, body) of a probe endpoint on 127.0.0.1, or (None, why) when nothing answers."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode("utf-8", "replace")
    except OSError as e:
        return None, str(e)
    finally:
        conn.close()


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1].strip() if lines else "no output"


# -- where pods run: the chart --------------------------------------------------------------------------------

@dataclass(frozen=True)
class _OperatorImage:
    """The operator's image in the shape `labctl.images.ensure_images` reads a lab's images."""

    slug: str = "operator"
    path: Path = field(default_factory=operator_dir)
    images: tuple = ()


def ensure_operator_image(target: Any, progress: Progress = quiet) -> None:
    """Build the operator image into the cluster's image store unless it holds this version already."""
    try:
        from labctl.images import ensure_images
    except ImportError:
        raise EnvironmentProblem(
            f"this labctl cannot build images for the {target.provider} provider, and the operator needs one",
            hint="use `labctl up --provider sim`, where the operator runs as a host process",
        ) from None
    from labctl.labs import Image

    folder = operator_dir()
    ensure_images(_OperatorImage(path=folder, images=(Image(operator_image(), folder, folder / "Dockerfile"),)),
                  target, progress=progress)


def helm_argv(helm: str | Path, target: Any, *, image: str, timeout: str = "180s") -> list[str]:
    """`helm upgrade --install` of the chart for a target (the CRD is applied by labctl, hence --skip-crds)."""
    repository, tag = image.rsplit(":", 1)
    return [str(helm), "upgrade", "--install", RELEASE, str(chart_dir()), "--namespace", NAMESPACE,
            "--kubeconfig", str(target.kubeconfig), "--kube-context", target.context, "--skip-crds",
            "--set", f"image.repository={repository}", "--set", f"image.tag={tag}",
            "--wait", "--timeout", timeout]


def _deployment_current(client: Any, image: str) -> bool:
    dep = client.get("apps/v1", "Deployment", RELEASE, NAMESPACE)
    if not dep:
        return False
    containers = dep["spec"]["template"]["spec"].get("containers") or []
    status = dep.get("status") or {}
    return (any(c.get("image") == image for c in containers)
            and (status.get("availableReplicas") or 0) >= (dep["spec"].get("replicas") or 0)
            and (status.get("observedGeneration") or 0) >= dep["metadata"].get("generation", 0))


def install_chart(target: Any, client: Any, progress: Progress = quiet) -> None:
    """Install or upgrade the chart in labctl-system (restricted Pod Security), unless it runs this version."""
    from labctl.toolbox import binary

    image = operator_image()
    if _deployment_current(client, image):
        return
    ensure_operator_image(target, progress)
    system_namespace(client)
    progress(f"installing the operator chart in {NAMESPACE} ({image})")
    done = subprocess.run(helm_argv(binary("helm"), target, image=image), capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        raise EnvironmentProblem(f"helm could not install the operator: {_last_line(done.stderr or done.stdout)}",
                                 hint=f"`labctl kubectl -n {NAMESPACE} get events` and "
                                      f"`labctl kubectl -n {NAMESPACE} logs deploy/{RELEASE}` say more")
    progress(f"operator running in {NAMESPACE}")


# -- removing -------------------------------------------------------------------------------------------------

def release_addons(required: list[str], target: Any, client: Any, progress: Progress = quiet) -> None:
    """Remove add-ons no started lab uses any more (the caller knows which): the reverse of `ensure_addons`."""
    if "operator" in required:
        release_operator(target, client, progress)
    if "gateway-api" in required:
        from labctl.gateway import release_gateway_api

        release_gateway_api(client, progress)


def release_operator(target: Any, client: Any, progress: Progress = quiet, *, timeout: float = 120.0) -> None:
    """Stop the operator (host process or chart) and delete the CRD labctl applied, with every Microservice.

    A CRD without labctl's managed-by label was installed by someone else and stays.
    """
    if stop_host_operator(target):
        progress("stopped the operator's host process")
    if target.pods_run and client.get("apps/v1", "Deployment", RELEASE, NAMESPACE):
        from labctl.toolbox import binary

        done = subprocess.run([str(binary("helm")), "uninstall", RELEASE, "--namespace", NAMESPACE, "--kubeconfig",
                               str(target.kubeconfig), "--kube-context", target.context, "--wait"],
                              capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise EnvironmentProblem(f"helm could not uninstall the operator: {_last_line(done.stderr)}",
                                     hint=f"`labctl kubectl -n {NAMESPACE} get all` shows what is left")
        progress(f"uninstalled the operator chart from {NAMESPACE}")
    crd = client.get("apiextensions.k8s.io/v1", "CustomResourceDefinition", CRD_NAME)
    labels = ((crd or {}).get("metadata") or {}).get("labels") or {}
    if not crd or labels.get("app.kubernetes.io/managed-by") != MANAGED_BY["app.kubernetes.io/managed-by"]:
        return
    # Microservices first, while their kind is still served: the garbage collector resolves an owner reference
    # through the owner's kind, and leaves the children of a kind that no longer exists where they are.
    items, _ = client.list(API_VERSION, "Microservice")
    for ms in items:
        client.delete(API_VERSION, "Microservice", ms["metadata"]["name"], ms["metadata"]["namespace"])
    if not procs.wait_for(lambda: not _children(client), timeout):
        raise ClusterUnreachable(f"the children of {len(items)} Microservices were not collected in {timeout:.0f}s",
                                 hint="`labctl kubectl get deploy,svc -A -l app.kubernetes.io/managed-by="
                                      "labctl-operator` lists them")
    client.delete("apiextensions.k8s.io/v1", "CustomResourceDefinition", CRD_NAME)
    progress(f"deleted CRD {CRD_NAME} and {len(items)} Microservices with their Deployments and Services")


def _children(client: Any) -> list[dict]:
    selector = "app.kubernetes.io/managed-by=labctl-operator"
    return (client.list("apps/v1", "Deployment", label_selector=selector)[0]
            + client.list("v1", "Service", label_selector=selector)[0])


# -- what runs where ----------------------------------------------------------------------------------------

def operator_status(target: Any, client: Any | None) -> dict:
    """Where the operator runs for `target` and how it is doing, as plain data."""
    info: dict[str, Any] = {"host_process": None, "in_cluster": None}
    registry = host_registry(target)
    record = registry.running(PROCESS)
    if record is not None:
        port = health_port_of(record)
        status, body = probe(port, "/readyz") if port else (None, "no probe port")
        try:
            reason = json.loads(body).get("reason", body) if status else body
        except ValueError:
            reason = body
        info["host_process"] = {"pid": record.pid, "log": record.log, "rss_bytes": procs.proc_rss_bytes(record.pid),
                                "probes": f"http://127.0.0.1:{port}" if port else None,
                                "ready": status == 200, "reason": reason}
    if client is not None and target.pods_run:
        dep = client.get("apps/v1", "Deployment", RELEASE, NAMESPACE)
        if dep:
            containers = dep["spec"]["template"]["spec"].get("containers") or [{}]
            info["in_cluster"] = {"namespace": NAMESPACE, "deployment": RELEASE, "image": containers[0].get("image"),
                                  "ready_replicas": (dep.get("status") or {}).get("readyReplicas") or 0,
                                  "replicas": dep["spec"].get("replicas", 1)}
    return info
