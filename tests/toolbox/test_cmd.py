import json
import shutil
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from labctl.cli import main
from labctl.toolbox import COMPONENTS, store
from labctl.toolbox.cmd import toolbox

pytestmark = pytest.mark.unit


def run(*args: str, input: str | None = None):
    return CliRunner().invoke(main, ["toolbox", *args], input=input)


def put(name: str) -> Path:
    staged = store.staging_dir() / name
    staged.write_text("#!/bin/sh\n")
    path = store.place(COMPONENTS[name], staged, "built", "test")
    shutil.rmtree(staged.parent.parent)  # as install() does
    return path


def test_every_toolbox_command_and_option_has_help():
    assert toolbox.help
    for name, command in toolbox.commands.items():
        assert command.help, name
        for param in command.params:
            if isinstance(param, click.Option):
                assert param.help, f"{name} {param.name}"
    result = run("install", "-h")
    assert result.exit_code == 0 and "--method [auto|build|download]" in result.output


def test_list_shows_what_is_installed_and_how(cache):
    put("kubectl")
    result = run("list")
    assert result.exit_code == 0
    kubectl = next(line for line in result.output.splitlines() if line.startswith("kubectl "))
    assert kubectl.split()[:3] == ["kubectl", "v1.37.2", "built"]
    assert "kubelet                  v1.37.2   missing" in result.output
    rows = json.loads(run("list", "-o", "json").output)
    assert {r["name"]: r["present"] for r in rows}["kubectl"] is True
    assert len(rows) == len(COMPONENTS)


def test_install_of_an_unknown_name_is_bad_usage(cache):
    result = run("install", "kubernetes")
    assert result.exit_code == 2
    assert "unknown toolbox binary or group 'kubernetes'" in result.output


def test_install_when_present_says_so(cache):
    put("helm")
    result = run("install", "helm")
    assert result.exit_code == 0, result.output
    assert "helm v3.22.0 is already installed, unchanged since installed" in result.output
    verified = run("install", "--verify", "helm")
    assert "helm v3.22.0 is already installed, sha256 verified" in verified.output


def test_prune_removes_unpinned_versions_and_keeps_pinned_ones(cache):
    kept = put("kind")
    old = store.root() / "kind-v0.30.0"
    old.mkdir()
    (old / "kind").write_bytes(b"x" * 2048)

    result = run("prune", "--yes", "--keep-go-caches")

    assert result.exit_code == 0, result.output
    assert f"2.0 KB  {old}" in result.output and "removed 2.0 KB" in result.output
    assert not old.exists() and kept.exists()
    assert "Go build cache" not in result.output


def test_prune_asks_before_removing(cache):
    old = store.root() / "kind-v0.30.0"
    old.mkdir(parents=True)
    result = run("prune", "--keep-go-caches", input="n\n")
    assert "Remove these 1 entries" in result.output
    assert old.exists()


@pytest.mark.skipif(shutil.which("go") is None, reason="the Go caches are Go's to clean")
def test_prune_offers_the_go_caches_with_their_sizes(cache, tmp_path, monkeypatch):
    gocache, modcache = tmp_path / "go-build", tmp_path / "gomod"
    (modcache / "cache" / "download" / "example.com").mkdir(parents=True)
    (modcache / "cache" / "download" / "example.com" / "big").write_bytes(b"x" * 3 * 1024 * 1024)
    gocache.mkdir()
    monkeypatch.setenv("GOCACHE", str(gocache))
    monkeypatch.setenv("GOMODCACHE", str(modcache))

    kept = run("prune", "--yes")
    assert f"kept the Go module cache (3.0 MB in {modcache})" in kept.output
    assert (modcache / "cache").exists()

    declined = run("prune", input="n\nn\n")
    assert f"Also remove the Go module cache (3.0 MB in {modcache})?" in declined.output
    assert (modcache / "cache").exists()

    removed = run("prune", "--yes", "--go-caches")
    assert removed.exit_code == 0, removed.output
    assert "removed the Go module cache (3.0 MB)" in removed.output
    assert not (modcache / "cache").exists()
