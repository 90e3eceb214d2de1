import json
import shutil
from pathlib import Path

import pytest

from labctl.errors import ToolboxError, UsageError
from labctl.toolbox import COMPONENTS, GROUPS, binary, installed, store
from labctl.toolbox.components import resolve
from labctl.toolbox.install import reports_version

pytestmark = pytest.mark.unit


def put(name: str, content: str = "#!/bin/sh\n", how: str = "built") -> Path:
    """Install a stand-in binary the way install() does."""
    staged = store.staging_dir() / name
    staged.write_text(content)
    path = store.place(COMPONENTS[name], staged, how, "test")
    shutil.rmtree(staged.parent.parent)  # as install() does
    return path


def test_cache_layout_honours_labctl_cache_dir(cache: Path):
    assert store.binary_path("kube-apiserver", "v1.37.2") == cache / "toolbox" / "kube-apiserver-v1.37.2" / \
        "kube-apiserver"


def test_cache_layout_falls_back_to_xdg_cache_home(monkeypatch, tmp_path: Path):
    monkeypatch.delenv("LABCTL_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert store.component_dir("etcd", "v3.7.3") == tmp_path / "xdg" / "labctl" / "toolbox" / "etcd-v3.7.3"


def test_missing_binary_names_itself_and_how_to_install(cache: Path):
    with pytest.raises(ToolboxError) as err:
        binary("kube-apiserver")
    assert str(err.value) == "kube-apiserver v1.37.2 is not installed"
    assert err.value.hint == "run `labctl toolbox install`"
    with pytest.raises(ToolboxError) as err:
        binary("traefik")  # not in the default group: the hint names it
    assert err.value.hint == "run `labctl toolbox install traefik`"
    with pytest.raises(ToolboxError, match="unknown toolbox binary 'kubectl2'"):
        binary("kubectl2")


def test_place_writes_binary_and_manifest(cache: Path):
    path = put("kind", "#!/bin/sh\necho kind\n")
    assert binary("kind") == path
    assert path.stat().st_mode & 0o777 == 0o755 and path.parent.stat().st_mode & 0o777 == 0o755
    manifest = json.loads((path.parent / "manifest.json").read_text())
    assert manifest["sha256"] == store.sha256_file(path)
    assert manifest["size"] == len("#!/bin/sh\necho kind\n")
    assert (manifest["name"], manifest["version"], manifest["how"]) == ("kind", "v0.33.0", "built")


def test_a_binary_without_manifest_is_not_installed(cache: Path):
    path = put("kind")
    (path.parent / "manifest.json").unlink()
    with pytest.raises(ToolboxError, match="not installed"):
        binary("kind")


def test_place_replaces_an_older_copy(cache: Path):
    put("kind", "old")
    path = put("kind", "new")
    assert path.read_text() == "new"
    assert [p.name for p in store.root().iterdir() if p.name.startswith(".kind")] == []


def test_verify_installed_detects_a_changed_file(cache: Path):
    path = put("kind")
    put("kwok")
    assert store.verify_installed([COMPONENTS["kind"], COMPONENTS["kwok"], COMPONENTS["helm"]]) == {
        "kind": True, "kwok": True, "helm": False}
    path.write_text("#!/bin/sh\necho changed\n")
    assert store.verify_installed([COMPONENTS["kind"]]) == {"kind": False}


def test_installed_lists_every_pinned_binary(cache: Path):
    put("etcd", how="downloaded")
    rows = {r["name"]: r for r in installed()}
    assert list(rows) == list(COMPONENTS)
    assert rows["etcd"]["present"] and rows["etcd"]["how"] == "downloaded"
    assert rows["etcd"]["path"] == store.binary_path("etcd", "v3.7.3")
    assert rows["kubelet"]["present"] is False and rows["kubelet"]["how"] is None
    assert rows["kubelet"]["groups"] == ["local"] and rows["kwok"]["groups"] == ["sim", "local"]


def test_unpinned_finds_old_versions_and_their_build_directories(cache: Path):
    put("kind")
    for stale in ("kind-v0.30.0", "kube-apiserver-v1.36.1", "build/kubernetes-v1.36.1"):
        (store.root() / stale).mkdir(parents=True)
    (store.root() / "build" / "kubernetes-v1.37.2").mkdir()
    (store.root() / "logs").mkdir()
    (store.root() / "logs" / "kubernetes-v1.36.1.log").write_text("x")
    (store.root() / "logs" / "kubernetes-v1.37.2.log").write_text("x")

    found = {p.relative_to(store.root()).as_posix() for p in store.unpinned()}
    assert found == {"kind-v0.30.0", "kube-apiserver-v1.36.1", "build/kubernetes-v1.36.1",
                     "logs/kubernetes-v1.36.1.log"}


def test_groups_nest_and_resolve_in_definition_order():
    assert set(GROUPS["sim"]) < set(GROUPS["local"]) < set(GROUPS["all"])
    assert {"kubelet", "kube-proxy", "containerd", "coredns", "buildkitd", "kube-router"} <= set(GROUPS["local"])
    assert not {"traefik", "jaeger", "nats-server"} & set(GROUPS["local"])
    assert set(GROUPS["all"]) == set(COMPONENTS)
    names = [c.name for c in resolve(["kind", "sim"])]
    assert names == GROUPS["sim"]
    assert [c.name for c in resolve(["helm", "kubectl"])] == ["kubectl", "helm"]
    with pytest.raises(UsageError, match="unknown toolbox binary or group 'simm'"):
        resolve(["simm"])


def test_pinned_versions():
    versions = {n: c.version for n, c in COMPONENTS.items()}
    assert {versions[n] for n in ("kube-apiserver", "kubectl", "kubelet", "kube-proxy")} == {"v1.37.2"}
    assert versions["etcd"] == "v3.7.3" and versions["containerd"] == "v2.4.2" and versions["traefik"] == "v3.6.12"


@pytest.mark.parametrize(("output", "version", "ok"), [
    ("Kubernetes v1.37.2", "v1.37.2", True),
    ("Client Version: v1.37.2\nKustomize Version: v5.8.0", "v1.37.2", True),
    ("etcd Version: 3.7.3\nGit SHA: GitNotFound", "v3.7.3", True),
    ("containerd github.com/containerd/containerd/v2 2.4.2+unknown", "v2.4.2", True),
    ("v3.22", "v3.22.0", False),           # helm without its version stamp
    ("Kubernetes v1.37.20", "v1.37.2", False),
    ("Kubernetes v11.37.2", "v1.37.2", False),
    ("Kubernetes v1.37.2.1", "v1.37.2", False),
    ("", "v1.37.2", False),
])
def test_reports_version(output, version, ok):
    assert reports_version(output, version) is ok


def test_human_size_and_elapsed():
    assert store.human_size(512) == "512 B"
    assert store.human_size(1536) == "1.5 KB"
    assert store.human_size(96 * 1024 * 1024) == "96.0 MB"
    assert store.elapsed(4.31) == "4.3s"
    assert store.elapsed(312) == "5m 12s"
