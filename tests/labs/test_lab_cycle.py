"""Every lab, end to end on the session's real API server: the starting state fails its checks, the solution
passes them, and reset brings the failures back (rustlings' rule, with a cluster)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from labctl.cli import main
from labctl.labs import all_labs

LABS = all_labs()


@pytest.fixture
def labctl_env(cluster, tmp_path, monkeypatch):
    """Environment variables under which `labctl` acts on the session cluster, and the args naming it."""
    if cluster.sim is not None:
        state_root = Path(cluster.sim.dir).parent.parent
        env = {"LABCTL_STATE_DIR": str(state_root), "KUBECONFIG": str(cluster.user_kubeconfig)}
    else:
        env = {"LABCTL_STATE_DIR": str(tmp_path / "state"), "KUBECONFIG": str(cluster.kubeconfig)}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("LABCTL_LABS_DIR", raising=False)
    return env, ["--context", cluster.context]


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    assert "Traceback" not in result.output, result.output
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


@pytest.mark.parametrize("lab", LABS, ids=[lab.slug for lab in LABS])
def test_start_fails_solve_passes_reset_fails(lab, labctl_env, cluster):
    _, ctx = labctl_env
    code, out = run("start", lab.slug, *ctx)
    assert code == 0, out
    code, out = run("check", *ctx)
    assert code == 1, out
    assert "✗" in out

    code, out = run("solve", "--yes", *ctx)
    assert code == 0, out
    code, out = run("check", "-o", "json", *ctx)
    assert code == 0, out
    report = json.loads(out)
    states = {c["id"]: c["state"] for c in report["checks"]}
    assert "fail" not in states.values(), states
    if not cluster.pods_run:  # behaviour checks are declared, never passed, where pods do not run
        for check in lab.checks:
            if check.needs_running:
                assert states[check.id] == "not-verifiable"

    code, out = run("reset", "--yes", *ctx)
    assert code == 0, out
    assert "saved your objects to" in out
    code, out = run("check", *ctx)
    assert code == 1, out
    _stop_and_verify(lab, ctx, cluster.kubeconfig, cluster.context)


def _stop_and_verify(lab, ctx, kubeconfig, context):
    """`stop` takes the lab off the cluster: its namespace gone, and an add-on only it used released."""
    from labctl.kube.client import Client

    code, out = run("stop", lab.slug, "--yes", *ctx)
    assert code == 0, out
    assert f"`labctl start {lab.slug}` brings it back" in out
    client = Client.from_kubeconfig(Path(kubeconfig), context)
    assert client.get("v1", "Namespace", lab.namespace) is None
    if "gateway-api" in (lab.raw.get("requires") or []):
        crd = client.get("apiextensions.k8s.io/v1", "CustomResourceDefinition", "httproutes.gateway.networking.k8s.io")
        assert crd is None or crd["metadata"].get("deletionTimestamp")  # gone, or going once its routes are


def test_hints_are_progressive(labctl_env):
    _, ctx = labctl_env
    lab = next(lab for lab in LABS if lab.slug == "containerization")
    assert run("reset", "containerization", "--yes", *ctx)[0] == 0
    first_failing = None
    code, out = run("check", "-o", "json", *ctx)
    first_failing = next(c for c in json.loads(out)["checks"] if c["state"] == "fail")
    check = next(c for c in lab.checks if c.id == first_failing["id"])
    seen = []
    for level in range(1, len(check.hints) + 2):
        code, out = run("hint", *ctx)
        assert code == 0, out
        seen.append(out)
        shown = min(level, len(check.hints))
        assert f"Hint {shown}/{len(check.hints)}" in out
        assert check.hints[shown - 1].strip().splitlines()[0] in out


def test_check_junit_output(labctl_env, tmp_path):
    _, ctx = labctl_env
    assert run("start", "containerization", *ctx)[0] == 0
    target = tmp_path / "report.xml"
    code, out = run("check", "-o", "junit", "--junit-file", str(target), *ctx)
    import xml.etree.ElementTree as ET

    suite = ET.parse(target).getroot().find("testsuite")
    assert int(suite.get("tests")) == len(next(lab for lab in LABS if lab.slug == "containerization").checks)
    assert (code == 1) == (int(suite.get("failures")) > 0)


def test_watch_turns_green_after_a_fix_from_another_process(labctl_env):
    env, ctx = labctl_env
    assert run("reset", "containerization", "--yes", *ctx)[0] == 0
    full_env = {**os.environ, **env}
    labctl = str(Path(sys.executable).parent / "labctl")
    watcher = subprocess.Popen([labctl, "check", "containerization", "--watch", *ctx], env=full_env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        first = ""
        deadline = time.monotonic() + 30
        while "watching the cluster" not in first and time.monotonic() < deadline:
            line = watcher.stdout.readline()
            if not line:
                break
            first += line
        assert "watching the cluster" in first, first
        assert "✗ The image has a fixed tag" in first
        solver = subprocess.run([labctl, "solve", "containerization", "--yes", *ctx], env=full_env,
                                capture_output=True, text=True, timeout=180)
        assert solver.returncode == 0, solver.stdout + solver.stderr
        rest, _ = watcher.communicate(timeout=60)
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait()
    assert watcher.returncode == 0, rest
    assert "✓ The image has a fixed tag" in rest


@pytest.fixture
def local_env(local_cluster, monkeypatch):
    """`labctl` acting on the session's local cluster (real node, real pods)."""
    provider = local_cluster.provider
    env = {"LABCTL_STATE_DIR": str(Path(provider.dir).parent.parent), "KUBECONFIG": str(provider.user_kubeconfig)}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("LABCTL_LABS_DIR", raising=False)
    return env, ["--context", local_cluster.context]


@pytest.mark.local
@pytest.mark.timeout(900)
@pytest.mark.parametrize("lab", LABS, ids=[lab.slug for lab in LABS])
def test_full_cycle_with_real_pods(lab, local_env, local_cluster):
    """The same cycle on a real node: images built, pods running, behaviour checks verified, none left unverified."""
    _, ctx = local_env
    code, out = run("start", lab.slug, *ctx)
    assert code == 0, out
    code, out = run("check", *ctx)
    assert code == 1, out

    code, out = run("solve", "--yes", *ctx)
    assert code == 0, out
    code, out = run("check", "-o", "json", *ctx)
    report = json.loads(out)
    states = {c["id"]: (c["state"], c["reason"]) for c in report["checks"]}
    assert code == 0, states
    assert all(state == "pass" for state, _ in states.values()), states
    assert any(check.needs_running for check in lab.checks), f"lab {lab.slug} has no behaviour check"

    code, out = run("reset", "--yes", *ctx)
    assert code == 0, out
    code, out = run("check", *ctx)
    assert code == 1, out
    # Off the node once done, as a learner would: eleven labs' pods do not fit on two cores together.
    _stop_and_verify(lab, ctx, local_cluster.kubeconfig, local_cluster.context)
