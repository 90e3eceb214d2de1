"""The command line as a person meets it: help, exit codes and the words of errors (no cluster needed)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import click
import pytest
import yaml
from click.testing import CliRunner

from labctl.cli import main

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def env(tmp_path, monkeypatch):
    """An isolated labctl home: its own state, cache and kubeconfig."""
    monkeypatch.setenv("LABCTL_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "kubeconfig"))
    monkeypatch.delenv("LABCTL_CONTEXT", raising=False)
    monkeypatch.delenv("LABCTL_LABS_DIR", raising=False)
    return tmp_path


def _commands(group: click.Group, prefix=()):
    for name, cmd in group.commands.items():
        yield prefix + (name,), cmd
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, prefix + (name,))


def test_every_command_has_help_text():
    runner = CliRunner()
    for path, cmd in _commands(main):
        assert cmd.help and cmd.help.strip(), f"labctl {' '.join(path)} has no help text"
        for param in cmd.params:
            if isinstance(param, click.Option) and not param.hidden and param.name not in ("help", "version"):
                assert param.help, f"labctl {' '.join(path)} {param.opts[0]} has no help="
        if path != ("kubectl",):  # kubectl passes every argument through, -h included
            result = runner.invoke(main, [*path, "-h"])
            assert result.exit_code == 0, (path, result.output)
            assert "Usage:" in result.output


def test_help_documents_exit_codes():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for code in ("0 ", "1 ", "2 ", "3 ", "4 "):
        assert f"  {code}" in result.output
    assert "cluster cannot be reached" in result.output


def test_version():
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0 and result.output.startswith("labctl ")


def test_list_shows_the_containerization_lab(env):
    result = CliRunner().invoke(main, ["list"])
    assert result.exit_code == 0, result.output
    assert "Containerization" in result.output and "Intermediate" in result.output and "45 min" in result.output
    rows = json.loads(CliRunner().invoke(main, ["list", "-o", "json"]).output)
    assert [r["number"] for r in rows] == sorted(r["number"] for r in rows)  # study order
    assert {"number": 9, "slug": "containerization", "difficulty": "Intermediate"}.items() <= next(
        r for r in rows if r["slug"] == "containerization").items()


def test_unknown_lab_is_bad_usage(env):
    result = CliRunner().invoke(main, ["render", "no-such-lab"])
    assert result.exit_code == 2
    assert "no-such-lab" in result.output and "Traceback" not in result.output


def test_render_prints_objects_in_the_lab_namespace(env):
    result = CliRunner().invoke(main, ["render", "9"])
    assert result.exit_code == 0, result.output
    objects = list(yaml.safe_load_all(result.output))
    assert objects and all(o["metadata"]["namespace"] == "lab-containerization" for o in objects)


def test_bad_lab_definition_exits_2_naming_file_and_field(env, monkeypatch):
    labs = env / "labs"
    shutil.copytree(REPO / "labs" / "09-containerization", labs / "09-containerization")
    lab_yaml = labs / "09-containerization" / "lab.yaml"
    data = yaml.safe_load(lab_yaml.read_text())
    data["difficulty"] = "Impossible"
    lab_yaml.write_text(yaml.safe_dump(data))
    monkeypatch.setenv("LABCTL_LABS_DIR", str(labs))
    result = CliRunner().invoke(main, ["list"])
    assert result.exit_code == 2
    assert "lab.yaml" in result.output and "difficulty" in result.output
    assert "Traceback" not in result.output


def test_check_without_a_started_lab_says_what_to_do(env):
    result = CliRunner().invoke(main, ["check"])
    assert result.exit_code == 2
    assert "labctl start" in result.output


def test_foreign_current_context_is_refused(env):
    (env / "kubeconfig").write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "prod",
        "contexts": [{"name": "prod", "context": {"cluster": "prod", "user": "prod"}}],
        "clusters": [{"name": "prod", "cluster": {"server": "https://127.0.0.1:1"}}],
        "users": [{"name": "prod", "user": {"token": "x"}}],
    }))
    result = CliRunner().invoke(main, ["check", "containerization"])
    assert result.exit_code == 2, result.output
    assert "'prod'" in result.output and "refusing" in result.output and "--context prod" in result.output


def test_unreachable_cluster_exits_3(env):
    (env / "kubeconfig").write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "dead",
        "contexts": [{"name": "dead", "context": {"cluster": "dead", "user": "dead"}}],
        "clusters": [{"name": "dead", "cluster": {"server": "https://127.0.0.1:1", "insecure-skip-tls-verify": True}}],
        "users": [{"name": "dead", "user": {"token": "x"}}],
    }))
    result = CliRunner().invoke(main, ["check", "containerization", "--context", "dead"])
    assert result.exit_code == 3, result.output
    assert "cannot reach the API server" in result.output and "labctl up" in result.output


def test_corrupt_progress_file_is_set_aside(env):
    state = env / "state"
    state.mkdir()
    (state / "progress.json").write_text("{not json")
    result = CliRunner().invoke(main, ["list"])
    assert result.exit_code == 0, result.output
    assert "moved it to" in result.output
    assert list(state.glob("progress.json.corrupt-*"))


def test_solve_without_a_terminal_needs_yes(env):
    # the confirmation comes before any cluster access: refusing to overwrite work must not need a cluster
    (env / "state").mkdir()
    (env / "state" / "progress.json").write_text(json.dumps({
        "format": 1, "cluster": {"provider": "existing", "context": "dead"}, "current_lab": "containerization",
        "labs": {}}))
    (env / "kubeconfig").write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config",
        "contexts": [{"name": "dead", "context": {"cluster": "dead", "user": "dead"}}],
        "clusters": [{"name": "dead", "cluster": {"server": "https://127.0.0.1:1", "insecure-skip-tls-verify": True}}],
        "users": [{"name": "dead", "user": {"token": "x"}}],
    }))
    result = CliRunner().invoke(main, ["solve"])
    assert result.exit_code == 2, result.output
    assert "--yes" in result.output


def test_completion_script():
    result = CliRunner().invoke(main, ["completion", "bash"])
    assert result.exit_code == 0 and "_LABCTL_COMPLETE" in result.output
