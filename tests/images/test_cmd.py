"""`labctl image` as a person meets it, on providers that need no image builder running."""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from labctl.cli import main

pytestmark = pytest.mark.unit

APP = Path(__file__).resolve().parents[2] / "labs" / "09-containerization" / "app"


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("LABCTL_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "kubeconfig"))
    monkeypatch.delenv("LABCTL_CONTEXT", raising=False)
    return tmp_path


def _up(env, provider, context):
    state = env / "state"
    state.mkdir(parents=True, exist_ok=True)
    (state / "progress.json").write_text(json.dumps({
        "format": 1, "cluster": {"provider": provider, "context": context}, "current_lab": None, "labs": {}}))


def test_image_is_a_command_group_with_help():
    result = CliRunner().invoke(main, ["image", "build", "-h"])
    assert result.exit_code == 0
    assert "docker build" in result.output and "--build-arg" in result.output


def test_build_on_sim_needs_no_image(env):
    _up(env, "sim", "labctl-sim")
    result = CliRunner().invoke(main, ["image", "build", str(APP), "-t", "labctl.local/hello:1.1"])
    assert result.exit_code == 0, result.output
    assert "Pods never run on sim: no image is needed" in result.output


def test_build_without_a_cluster_says_how_to_get_one(env):
    result = CliRunner().invoke(main, ["image", "build", str(APP)])
    assert result.exit_code == 3
    assert "no labctl cluster is up" in result.output and "labctl up" in result.output


def test_a_bad_tag_is_bad_usage(env):
    _up(env, "sim", "labctl-sim")
    result = CliRunner().invoke(main, ["image", "build", str(APP), "-t", "Hello"])
    assert result.exit_code == 2
    assert "'Hello' is not an image name with a tag" in result.output


def test_a_bad_build_arg_is_bad_usage(env):
    _up(env, "sim", "labctl-sim")
    result = CliRunner().invoke(main, ["image", "build", str(APP), "--build-arg", "APP_VERSION"])
    assert result.exit_code == 2
    assert "is not KEY=VALUE" in result.output


def test_a_cluster_labctl_did_not_create_gets_no_images(env):
    (env / "kubeconfig").write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "prod",
        "clusters": [{"name": "prod", "cluster": {"server": "https://prod.example:6443"}}],
        "users": [{"name": "prod", "user": {"token": "t"}}],
        "contexts": [{"name": "prod", "context": {"cluster": "prod", "user": "prod"}}]}))
    _up(env, "existing", "prod")
    result = CliRunner().invoke(main, ["image", "build", str(APP), "-t", "labctl.local/hello:1.1"])
    assert result.exit_code == 4
    assert "cannot put images into a cluster it did not create" in result.output
