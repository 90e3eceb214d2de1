"""Lab 06's behaviour checks against the services as local processes: the lab's own solution (its ConfigMaps, the
Deployments' args, the volume's mount path) on loopback, each Service a fixed port, and each scenario step done
as labctl does it in a cluster (a patch changes a process's environment, a restart replaces the process).
What the checks expect and what the services answer cannot drift apart unnoticed."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from labctl import paths
from labctl.checks import HttpResponse, Result, evaluate_http
from labctl.checks.scenario import apply_merge_patch, step_kind
from labctl.labs import load_lab
from labctl.render import render_objects
from tests.services.conftest import ServiceProcess, free_port

pytestmark = pytest.mark.unit

MOUNT_PATH = "/var/lib/checkout"  # where the solution mounts the saga log's claim


class LoopbackLab:
    """The solution's workloads as processes, reachable under their Service names as in the cluster."""

    def __init__(self, objects: list[dict], log_dir: Path, volume: Path) -> None:
        self.log_dir, self.volume = log_dir, volume
        configs = {o["metadata"]["name"]: dict(o.get("data") or {}) for o in objects if o["kind"] == "ConfigMap"}
        self.workloads: dict[str, tuple[str, str]] = {}  # Deployment name -> (service module, ConfigMap name)
        for o in objects:
            if o["kind"] == "Deployment":
                [container] = o["spec"]["template"]["spec"]["containers"]
                self.workloads[o["metadata"]["name"]] = (container["args"][0],
                                                         container["envFrom"][0]["configMapRef"]["name"])
        self.configs = configs
        self.ports = {name: free_port() for name in self.workloads}
        self.running: dict[str, ServiceProcess] = {}
        self.started: list[ServiceProcess] = []

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}"

    def env(self, name: str) -> dict[str, str]:
        env = {}
        for key, value in self.configs[self.workloads[name][1]].items():
            for service in self.workloads:  # a Service's DNS name is this process's port on loopback
                if value == f"http://{service}" or value.startswith(f"http://{service}/"):
                    value = self.url(service) + value[len(f"http://{service}"):]
            if value.startswith(MOUNT_PATH + "/"):  # the claim, mounted where the pod mounts it
                value = str(self.volume) + value[len(MOUNT_PATH):]
            env[key] = value
        return {**env, "PORT": str(self.ports[name])}

    def start(self, name: str) -> None:
        process = ServiceProcess(self.workloads[name][0], self.env(name), self.log_dir)
        process.port, process.url = self.ports[name], self.url(name)
        self.started.append(process)
        self.running[name] = process

    def restart(self, name: str) -> None:
        """As a rollout with the Recreate strategy: the old process stops (SIGTERM) before the new one starts."""
        old = self.running.pop(name)
        assert old.stop() == 0, old.log()
        self.start(name)
        self.running[name].wait_ready(30)

    def request(self, http, spec: dict) -> HttpResponse:
        started = time.perf_counter()
        response = http.request(spec.get("method", "GET"), self.url(spec["service"]) + spec["path"],
                                content=spec.get("body"), headers={"Content-Type": "application/json"}, timeout=30)
        body = response.content.replace(str(self.volume).encode(), MOUNT_PATH.encode())
        return HttpResponse(response.status_code, body, (time.perf_counter() - started) * 1000,
                            dict(response.headers))

    def scenario(self, http, steps: list[dict]) -> Result:
        """The steps in order; afterwards patches undone and restarted workloads restarted, as labctl does."""
        originals: list[tuple[str, dict]] = []
        restarted: list[str] = []
        try:
            for number, step in enumerate(steps, 1):
                kind = step_kind(step)
                if kind == "patch":
                    target = step["patch"]["target"]
                    assert target["kind"] == "ConfigMap", target
                    originals.append((target["name"], dict(self.configs[target["name"]])))
                    self.configs[target["name"]] = apply_merge_patch(self.configs[target["name"]],
                                                                     step["patch"]["merge"]["data"])
                elif kind == "restart":
                    self.restart(step["restart"]["name"])
                    restarted.append(step["restart"]["name"])
                elif kind == "http":
                    h = step["http"]
                    result = evaluate_http({**h, "expect": step.get("expect") or {}}, self.request(http, h), None)
                    if not result.passed:
                        return Result(False, f"step {number} ({step.get('title', '')}): {result.reason}")
                else:
                    raise AssertionError(f"no loopback emulation of a {kind} step")
            return Result(True, "every step passed")
        finally:
            for name, data in reversed(originals):
                self.configs[name] = data
            for name in restarted:
                self.restart(name)


@pytest.fixture(scope="module")
def lab():
    return load_lab(paths.labs_dir() / "06-saga")


@pytest.fixture(scope="module")
def loopback(lab, tmp_path_factory):
    objects = render_objects(lab.solution, lab.path, lab.values, lab.namespace)
    cluster = LoopbackLab(objects, tmp_path_factory.mktemp("saga-lab"), tmp_path_factory.mktemp("saga-volume"))
    for name in cluster.workloads:
        cluster.start(name)
    for process in cluster.running.values():
        process.wait_ready()
    yield cluster
    for process in cluster.started:
        process.stop()


def behaviour_checks(lab) -> list[str]:
    return [c.id for c in lab.checks if c.needs_running]


def test_the_lab_has_the_behaviour_checks_emulated_here(lab):
    assert behaviour_checks(lab) == ["orchestrator-configured", "checkout-completes", "payment-failure-compensates",
                                     "log-survives-restart"]


@pytest.mark.parametrize("check_id", ["orchestrator-configured", "checkout-completes", "payment-failure-compensates",
                                      "log-survives-restart"])
def test_the_solution_passes_the_behaviour_check(lab, loopback, http, check_id):
    # In lab order (pytest keeps the parametrized order): the scenarios build on each other as in a cluster.
    check = next(c for c in lab.checks if c.id == check_id)
    if check.type == "http":
        result = evaluate_http(check, loopback.request(http, check.spec), None)
    else:
        result = loopback.scenario(http, check.spec["steps"])
    assert result.passed, result.reason


def test_the_starting_orchestrator_fails_the_compensation_scenario(lab, tmp_path_factory, http):
    # The starting state's checkout (no compensations, no retries) leaves the saga stuck, reservation held.
    start = render_objects(lab.deploy, lab.path, lab.values, lab.namespace)
    cluster = LoopbackLab(start, tmp_path_factory.mktemp("saga-start"), tmp_path_factory.mktemp("saga-start-tmp"))
    cluster.configs["checkout-config"]["SAGA_LOG_PATH"] = str(cluster.volume / "saga.db")  # /tmp is the pod's
    try:
        for name in cluster.workloads:
            cluster.start(name)
        for process in cluster.running.values():
            process.wait_ready()
        check = next(c for c in lab.checks if c.id == "payment-failure-compensates")
        result = cluster.scenario(http, check.spec["steps"])
        assert not result.passed
        assert "status 202 (wanted 409)" in result.reason, result.reason
    finally:
        for process in cluster.started:
            process.stop()
