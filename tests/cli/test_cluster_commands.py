import json

import click
import pytest
from click.testing import CliRunner

from labctl.providers.base import ComponentStatus, ProviderStatus
from labctl.cli import main
from labctl.providers.display import format_status

pytestmark = pytest.mark.unit


@pytest.fixture
def env(tmp_path):
    return {"LABCTL_STATE_DIR": str(tmp_path / "state"), "KUBECONFIG": str(tmp_path / "kubeconfig"),
            "LABCTL_PROVIDER": None, "LABCTL_CONTEXT": None}


def _recorded_sim(env):
    import pathlib

    state = pathlib.Path(env["LABCTL_STATE_DIR"])
    state.mkdir(parents=True)
    (state / "progress.json").write_text(json.dumps({"format": 1, "cluster": {"provider": "sim", "context": "labctl-sim"},
                                                     "current_lab": None, "labs": {}}))


def test_status_without_a_cluster(env):
    result = CliRunner().invoke(main, ["status"], env=env)
    assert result.exit_code == 0
    assert "Cluster: none" in result.output and "labctl up" in result.output


def test_status_of_a_stopped_cluster_exits_3(env):
    _recorded_sim(env)
    result = CliRunner().invoke(main, ["status"], env=env)
    assert result.exit_code == 3
    assert "Cluster: sim (context labctl-sim): API not reachable" in result.output
    assert "labctl up --provider sim" in result.output


def test_status_json(env):
    _recorded_sim(env)
    result = CliRunner().invoke(main, ["status", "-o", "json"], env=env)
    data = json.loads(result.output)["cluster"]
    assert data["provider"] == "sim" and data["apiReachable"] is False and result.exit_code == 3
    assert [c["name"] for c in data["components"]] == ["etcd", "kube-apiserver", "kube-controller-manager",
                                                       "kube-scheduler", "kwok"]


def test_unknown_context_is_one_line_with_exit_2(env):
    result = CliRunner().invoke(main, ["up", "--context", "nowhere"], env=env)
    assert result.exit_code == 2
    assert "no context 'nowhere' in" in result.output
    assert "hint:" in result.output
    assert "Traceback" not in result.output


def test_down_of_an_existing_context_does_nothing(env, tmp_path):
    from labctl.providers import kubeconfig

    kubeconfig.write(tmp_path / "kubeconfig", kubeconfig.build("prod", "https://127.0.0.1:1", b"a", b"b", b"c"))
    result = CliRunner().invoke(main, ["down", "--context", "prod"], env=env)
    assert result.exit_code == 0
    assert "labctl did not create context prod, so it leaves that cluster as it is" in result.output
    assert kubeconfig.has_context(kubeconfig.read(tmp_path / "kubeconfig"), "prod")


def test_up_of_an_unreachable_existing_cluster_exits_3(env, tmp_path):
    from labctl.providers import kubeconfig

    kubeconfig.write(tmp_path / "kubeconfig", kubeconfig.build("prod", "https://127.0.0.1:1", b"a", b"b", b"c"))
    result = CliRunner().invoke(main, ["up", "--provider", "existing", "--context", "prod"], env=env)
    assert result.exit_code == 3, result.output
    assert "the cluster of context prod does not answer" in result.output


def test_ports_with_another_provider_is_usage_error(env):
    result = CliRunner().invoke(main, ["up", "--provider", "sim", "--ports", "8080:80"], env=env)
    assert result.exit_code == 2
    assert "--provider kind only" in result.output


def test_format_status():
    st = ProviderStatus("sim", "labctl-sim", True, True, [
        ComponentStatus("etcd", True, "API server reaches it", 10, 50 * 2**20),
        ComponentStatus("kwok", False, "not running"),
    ], nodes_ready=3, nodes_total=3)
    assert format_status(st).splitlines() == [
        "Cluster: sim (context labctl-sim): API ready, 3/3 nodes Ready",
        "  ✓ etcd  pid 10        50 MB  API server reaches it",
        "  ✗ kwok                    -  not running",
    ]
