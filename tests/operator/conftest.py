"""The operator as a real process against the session's real API server, and helpers to watch it work.

- `operator_crd`: the Microservice CRD, applied once (server-side) from the chart, as `labctl start` does.
- `run_operator(...)`: starts `python -m labctl_operator` with a kubeconfig, waits for /readyz, and stops every
  operator it started at the end of the test. The lab's own background operator is stopped first, so the one
  under test is the only one acting.
- `ms_api`: create, read, patch and delete Microservices with the official client.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest

from labctl import addons
from labctl.providers import procs

GROUP, VERSION, PLURAL = "labctl.dev", "v1alpha1", "microservices"


def eventually(fn: Callable[[], Any], timeout: float = 30.0, interval: float = 0.1, what: str = "") -> Any:
    """fn()'s first truthy value within `timeout` seconds; AssertionError naming the last value otherwise."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = fn()
        except Exception as e:  # a read racing a delete: try again
            last = e
        if last and not isinstance(last, Exception):
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what or fn.__name__} (last: {last!r})")
        time.sleep(interval)


@dataclass
class RunningOperator:
    """One operator process started by a test."""

    proc: subprocess.Popen
    port: int
    log: Path

    def probe(self, path: str) -> int | None:
        return addons.probe(self.port, path)[0]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, as Kubernetes stops a pod; the exit code."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def kill(self) -> None:
        """SIGKILL: no cleanup, as a node failure or an OOM kill."""
        if self.alive():
            self.proc.kill()
        self.proc.wait()

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture(scope="session")
def operator_crd(cluster):
    """The CRD applied as `labctl start` applies it; the lab's background operator (if a lab test left one
    running) stopped, so operators under test act alone."""
    from labctl.kube.client import Client

    if cluster.sim is not None:
        cluster.sim.procs.stop([addons.PROCESS])
    addons.apply_crds(Client.from_kubeconfig(cluster.kubeconfig, cluster.context))
    return addons.CRD_NAME


@pytest.fixture
def run_operator(cluster, operator_crd, tmp_path):
    """run_operator(*args, kubeconfig=None, context=None, wait=True) -> RunningOperator."""
    started: list[RunningOperator] = []

    def start(*args: str, kubeconfig: Path | None = None, context: str | None = None,
              wait: bool = True) -> RunningOperator:
        port = procs.free_ports(1)[0]
        log = tmp_path / f"operator-{len(started)}.log"
        argv = [sys.executable, "-m", "labctl_operator", "--kubeconfig", str(kubeconfig or cluster.kubeconfig),
                "--context", context or cluster.context, "--health-port", str(port), "--resync-seconds", "5",
                "--log-format", "plain", *args]
        with open(log, "wb") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        op = RunningOperator(proc, port, log)
        started.append(op)
        if wait:
            eventually(lambda: op.probe("/readyz") == 200 or not op.alive(), timeout=90, what="operator ready")
            assert op.alive(), op.output()
        return op

    yield start
    for op in started:
        op.stop()


class Microservices:
    """Microservices through the official client, as plain dicts."""

    def __init__(self, api_client) -> None:
        from kubernetes import client

        self.custom = client.CustomObjectsApi(api_client)
        self.apps = client.AppsV1Api(api_client)
        self.core = client.CoreV1Api(api_client)
        self.client = api_client

    def create(self, namespace: str, name: str, **spec: Any) -> dict:
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Microservice", "metadata": {"name": name},
                "spec": {"image": "labctl.local/hello:1.0", **spec}}
        return self.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)

    def get(self, namespace: str, name: str) -> dict | None:
        from kubernetes.client import ApiException

        try:
            return self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    def patch(self, namespace: str, name: str, spec: dict) -> dict:
        return self.custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, {"spec": spec})

    def scale(self, namespace: str, name: str, replicas: int) -> dict:
        return self.custom.patch_namespaced_custom_object_scale(GROUP, VERSION, namespace, PLURAL, name,
                                                                {"spec": {"replicas": replicas}})

    def delete(self, namespace: str, name: str) -> None:
        self.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)

    def condition(self, namespace: str, name: str, kind: str) -> dict | None:
        ms = self.get(namespace, name) or {}
        return next((c for c in (ms.get("status") or {}).get("conditions") or [] if c["type"] == kind), None)

    def is_ready(self, namespace: str, name: str) -> bool:
        ms = self.get(namespace, name) or {}
        ready = self.condition(namespace, name, "Ready") or {}
        return (ready.get("status") == "True"
                and (ms.get("status") or {}).get("observedGeneration") == ms["metadata"]["generation"])

    def deployment(self, namespace: str, name: str) -> dict | None:
        return self._read(self.apps.read_namespaced_deployment, namespace, name)

    def service(self, namespace: str, name: str) -> dict | None:
        return self._read(self.core.read_namespaced_service, namespace, name)

    def _read(self, fn, namespace: str, name: str) -> dict | None:
        from kubernetes.client import ApiException

        try:
            return self.client.sanitize_for_serialization(fn(name, namespace))
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    def events(self, namespace: str, name: str) -> list[dict]:
        """Events about Microservice `name` (of any incarnation), oldest first."""
        items = self.core.list_namespaced_event(
            namespace, field_selector=f"involvedObject.kind=Microservice,involvedObject.name={name}").items
        return [self.client.sanitize_for_serialization(e) for e in items]

    def reasons(self, namespace: str, name: str) -> list[str]:
        return [e["reason"] for e in self.events(namespace, name)]


@pytest.fixture
def ms_api(kube_api) -> Microservices:
    return Microservices(kube_api)


@pytest.fixture(scope="session")
def wait_until() -> Callable[..., Any]:
    """wait_until(fn, timeout=30, interval=0.1, what="") -> fn()'s first truthy value, or AssertionError."""
    return eventually
