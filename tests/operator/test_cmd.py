"""`labctl operator run|start|stop|status`, through click as a person types them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from labctl import addons
from labctl.cli import Group
from labctl.operator_cmd import operator
from labctl.providers import procs

# The group as `labctl` mounts it: domain errors become one line and their exit code.
CLI = Group(name="labctl", commands={"operator": operator}, context_settings={"help_option_names": ["-h", "--help"]})
ENTRY = ("import sys; from labctl.cli import Group; from labctl.operator_cmd import operator; "
         "Group(name='labctl', commands={'operator': operator})(sys.argv[1:])")


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(CLI, ["operator", *args])
    assert "Traceback" not in result.output, result.output
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


@pytest.mark.unit
@pytest.mark.parametrize("command", [[], ["run"], ["start"], ["stop"], ["status"]])
def test_every_command_has_help(command):
    code, out = invoke(*command, "-h")
    assert code == 0 and "Usage:" in out
    assert len(out.split("\n\n")[1].strip()) > 20  # a sentence, not a stub


@pytest.mark.unit
def test_without_a_cluster_it_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("LABCTL_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "none"))
    monkeypatch.delenv("LABCTL_CONTEXT", raising=False)
    code, out = invoke("status")
    assert code == 3 and "no labctl cluster is up" in out


@pytest.mark.unit
def test_run_with_a_missing_kubeconfig_is_bad_usage(tmp_path):
    code, out = invoke("run", "--kubeconfig", str(tmp_path / "nope"))
    assert code == 2 and "does not exist" in out


@pytest.fixture
def sim_env(cluster, monkeypatch, unavailable, operator_crd):
    if cluster.sim is None:
        unavailable("start/stop act on a sim cluster's process directory")
    root = Path(cluster.sim.dir).parent.parent
    monkeypatch.setenv("LABCTL_STATE_DIR", str(root))
    monkeypatch.setenv("KUBECONFIG", str(cluster.user_kubeconfig))
    yield ["--context", cluster.context]
    CliRunner().invoke(CLI, ["operator", "stop", "--context", cluster.context])


def test_start_status_stop(sim_env):
    code, out = invoke("start", *sim_env)
    assert code == 0, out
    assert "Operator running: pid" in out
    code, out = invoke("status", *sim_env)
    assert code == 0 and "✓ background process" in out, out
    code, out = invoke("status", "-o", "json", *sim_env)
    assert '"ready": true' in out
    code, out = invoke("stop", *sim_env)
    assert code == 0 and "Operator stopped" in out
    code, out = invoke("stop", *sim_env)
    assert "No background operator" in out
    code, out = invoke("status", *sim_env)
    assert "The operator is not running" in out


def test_run_in_the_foreground_until_ctrl_c(cluster, operator_crd, tmp_path, wait_until):
    port = procs.free_ports(1)[0]
    proc = subprocess.Popen([sys.executable, "-c", ENTRY, "operator", "run", "--kubeconfig", str(cluster.kubeconfig),
                             "--context", cluster.context, "--health-port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        wait_until(lambda: addons.probe(port, "/readyz")[0] == 200 or proc.poll() is not None, timeout=90,
                   what="ready")
        assert proc.poll() is None
        # A second one on the same probe port cannot start: one line, the environment exit code.
        second = subprocess.run([sys.executable, "-c", ENTRY, "operator", "run", "--kubeconfig",
                                 str(cluster.kubeconfig), "--context", cluster.context, "--health-port", str(port)],
                                capture_output=True, text=True, timeout=120)
        assert second.returncode == 4, second.stdout + second.stderr
        assert f"cannot serve probes on 127.0.0.1:{port}" in second.stderr
        assert "Traceback" not in second.stderr
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out
