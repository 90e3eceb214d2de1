"""`requires: [operator]` on sim: the CRD applied and labelled, the operator started once as a tracked host
process in the cluster's process directory, reused, reported, and stopped."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from labctl import addons
from labctl.errors import LabDefinitionError
from labctl.providers import procs
from labctl.session import Target


@pytest.fixture
def sim_target(cluster, monkeypatch, unavailable, operator_crd):
    """A session Target for the session's sim cluster, with labctl's state dir pointing at it."""
    if cluster.sim is None:
        unavailable("these tests start a host operator in a sim cluster's process directory")
    monkeypatch.setenv("LABCTL_STATE_DIR", str(Path(cluster.sim.dir).parent.parent))
    target = Target("sim", cluster.context, Path(cluster.kubeconfig), False)
    yield target
    addons.stop_host_operator(target)


def test_ensure_operator_on_sim_runs_one_tracked_host_process(sim_target, cluster, ms_api, namespace, wait_until):
    from labctl.kube.client import Client

    client = Client.from_kubeconfig(cluster.kubeconfig, cluster.context)
    lab = SimpleNamespace(slug="control-loops")
    addons.ensure_addons(lab, ["operator"], sim_target, client)

    crd = client.get("apiextensions.k8s.io/v1", "CustomResourceDefinition", addons.CRD_NAME)
    assert crd["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "labctl"
    pid_file = Path(cluster.sim.dir) / f"{addons.PROCESS}.pid"
    record = procs.ProcessRecord.from_json(pid_file.read_text())
    assert procs.proc_cmdline(record.pid) == record.argv  # the pid file names this very process
    assert procs.proc_stat(record.pid)[1] == record.start_ticks
    assert record.argv[1:3] == ["-m", "labctl_operator"] and str(cluster.kubeconfig) in record.argv

    addons.ensure_addons(lab, ["operator"], sim_target, client)
    assert procs.ProcessRecord.from_json(pid_file.read_text()).pid == record.pid  # reused, not a second one

    ms_api.create(namespace, "web")
    wait_until(lambda: ms_api.is_ready(namespace, "web"), what="Ready through the host operator")
    status = addons.operator_status(sim_target, client)
    assert status["host_process"]["pid"] == record.pid and status["host_process"]["ready"]
    assert status["in_cluster"] is None

    assert addons.stop_host_operator(sim_target)
    assert procs.proc_stat(record.pid) is None or procs.proc_stat(record.pid)[1] != record.start_ticks
    assert not pid_file.exists()
    assert not addons.stop_host_operator(sim_target)


def test_release_stops_the_operator_and_removes_only_labctls_crd(sim_target, cluster, ms_api, namespace,
                                                                   wait_until):
    from labctl.kube.client import Client

    client = Client.from_kubeconfig(cluster.kubeconfig, cluster.context)
    addons.ensure_addons(SimpleNamespace(slug="control-loops"), ["operator"], sim_target, client)
    ms_api.create(namespace, "web")
    wait_until(lambda: ms_api.is_ready(namespace, "web"), what="Ready")
    record = addons.host_operator(sim_target)
    try:
        addons.release_addons(["operator"], sim_target, client)
        assert addons.host_operator(sim_target) is None and not procs.is_running(record)
        wait_until(lambda: client.get("apiextensions.k8s.io/v1", "CustomResourceDefinition", addons.CRD_NAME)
                   is None, what="CRD deleted")
        wait_until(lambda: ms_api.deployment(namespace, "web") is None, timeout=60, what="children collected")

        # A CRD someone else installed (no managed-by label) is theirs: it stays.
        (crd,) = addons.crd_objects()
        del crd["metadata"]["labels"]["app.kubernetes.io/managed-by"]
        client.apply(crd, field_manager="someone-else")
        wait_until(lambda: client.get("apiextensions.k8s.io/v1", "CustomResourceDefinition", addons.CRD_NAME),
                   what="their CRD")
        addons.release_operator(sim_target, client)
        assert client.get("apiextensions.k8s.io/v1", "CustomResourceDefinition", addons.CRD_NAME)
    finally:
        addons.apply_crds(client)  # the other tests of the session use it


def test_a_stale_pid_file_is_never_signalled(sim_target, cluster):
    """A pid file whose pid now belongs to another program: that program is left alone, a new operator starts."""
    registry = addons.host_registry(sim_target)
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stale = procs.ProcessRecord(addons.PROCESS, stranger.pid, ["/usr/bin/python3", "-m", "labctl_operator"],
                                    procs.proc_stat(stranger.pid)[1], str(registry.log_file(addons.PROCESS)))
        registry.pid_file(addons.PROCESS).write_text(stale.to_json())
        record = addons.start_host_operator(sim_target)
        assert record.pid != stranger.pid
        assert addons.stop_host_operator(sim_target)
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()


def test_a_failing_operator_is_one_line_with_its_log(sim_target, tmp_path, monkeypatch):
    broken = Target("sim", "labctl-sim", tmp_path / "missing-kubeconfig", False)
    from labctl.errors import EnvironmentProblem

    with pytest.raises(EnvironmentProblem) as e:
        addons.start_host_operator(broken, timeout=60)
    assert "the operator stopped at once" in e.value.message
    assert "cannot load Kubernetes credentials" in e.value.message
    assert e.value.hint.startswith("its log is ")


def test_an_unknown_addon_is_a_lab_definition_error():
    with pytest.raises(LabDefinitionError) as e:
        addons.ensure_addons(SimpleNamespace(slug="x"), ["database"], None, None)
    assert "requires 'database'" in e.value.message and "operator" in e.value.message


@pytest.mark.unit
def test_host_argv_and_port_round_trip(tmp_path):
    target = Target("sim", "labctl-sim", tmp_path / "kubeconfig", False)
    argv = addons.host_argv(target, 41234)
    record = procs.ProcessRecord(addons.PROCESS, 1, argv, 1, "log")
    assert addons.health_port_of(record) == 41234
    assert argv[:3] == [sys.executable, "-m", "labctl_operator"] and "--exit-with-kubeconfig" in argv


@pytest.mark.unit
def test_helm_argv_installs_the_chart_without_its_crds(tmp_path):
    target = Target("kind", "kind-labctl", tmp_path / "kc", True)
    argv = addons.helm_argv("/bin/helm", target, image="labctl.local/operator:0.1.0")
    assert argv[:4] == ["/bin/helm", "upgrade", "--install", "labctl-operator"]
    assert "--skip-crds" in argv and "--wait" in argv
    assert argv[argv.index("--namespace") + 1] == "labctl-system"
    assert "image.repository=labctl.local/operator" in argv and "image.tag=0.1.0" in argv
    assert json.dumps(argv)  # plain strings only


@pytest.mark.unit
@pytest.mark.parametrize(("requires", "error"), [
    (["operator"], None),
    (["database"], "requires[0]: 'database' is not one of: operator"),
    (["operator", "operator"], "requires: lists an item more than once"),
    ("operator", "requires: 'operator' is text (wanted a list)"),
])
def test_requires_is_validated_by_the_lab_schema(tmp_path, requires, error):
    import yaml

    from labctl.labs import SCHEMA_COMMENT, load_lab

    folder = tmp_path / "11-demo"
    (folder / "solution").mkdir(parents=True)
    (folder / "solution" / "ms.yaml").write_text("kind: Microservice\n")
    doc = {"format_version": 1, "title": "Demo", "difficulty": "Advanced", "minutes": 30, "summary": "A demo.",
           "objectives": ["o"], "requires": requires, "deploy": [], "solution": ["solution/ms.yaml"],
           "checks": [{"id": "c", "title": "C", "type": "exists", "hints": ["h"],
                       "target": {"apiVersion": "labctl.dev/v1alpha1", "kind": "Microservice", "name": "web"}}]}
    (folder / "lab.yaml").write_text(f"{SCHEMA_COMMENT}\n{yaml.safe_dump(doc)}")
    if error is None:
        assert load_lab(folder).raw["requires"] == requires
        return
    with pytest.raises(LabDefinitionError) as e:
        load_lab(folder)
    assert error in e.value.message
