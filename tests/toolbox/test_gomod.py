from pathlib import Path

import pytest

from labctl.toolbox import COMPONENTS, gobuild, gomod

pytestmark = pytest.mark.unit

# The shape of kubernetes' own go.mod (v1.37): go and godebug lines, a require block, and a replace block that
# maps every staging module to a folder of its tree.
STAGING = ["api", "apimachinery", "client-go", "component-base", "cri-streaming", "endpointslice", "kubelet",
           "streaming"]
KUBERNETES_GOMOD = "\n".join([
    "// This is a generated file. Do not edit directly.",
    "",
    "module k8s.io/kubernetes",
    "",
    "go 1.26.0",
    "",
    "godebug default=go1.26",
    "",
    "require (",
    "\tgithub.com/spf13/cobra v1.10.0",
    *(f"\tk8s.io/{m} v0.0.0" for m in STAGING),
    ")",
    "",
    "require github.com/davecgh/go-spew v1.1.2-0.20180830191138-d8f796af33cc // indirect",
    "",
    "replace (",
    *(f"\tk8s.io/{m} => ./staging/src/k8s.io/{m}" for m in STAGING),
    ")",
])


def test_kubernetes_wrapper_maps_each_staging_replace_to_its_published_version():
    text = gomod.wrapper_gomod("labctl.local/toolbox/kubernetes", KUBERNETES_GOMOD, "v1.37.2",
                               ["k8s.io/kubernetes/cmd/kubectl", "k8s.io/kubernetes/cmd/kube-apiserver"],
                               local_replace_version=gomod.staging_version("v1.37.2"))
    lines = text.splitlines()
    assert lines[0] == "module labctl.local/toolbox/kubernetes"
    assert "go 1.26.0" in lines
    assert "godebug default=go1.26" in lines
    assert "require k8s.io/kubernetes v1.37.2" in lines
    replaces = [line.strip() for line in lines if "=>" in line]
    assert replaces == [f"k8s.io/{m} => k8s.io/{m} v0.37.2" for m in STAGING]
    assert "./staging" not in text
    tool_block = text[text.index("tool ("):]
    assert tool_block == "tool (\n\tk8s.io/kubernetes/cmd/kube-apiserver\n\tk8s.io/kubernetes/cmd/kubectl\n)\n"


def test_parse_reads_single_line_and_block_directives_and_drops_comments():
    mod = gomod.parse_gomod(KUBERNETES_GOMOD)
    assert mod.module == "k8s.io/kubernetes"
    assert mod.go == "1.26.0"
    assert mod.godebug == [["default=go1.26"]]
    assert ["github.com/davecgh/go-spew", "v1.1.2-0.20180830191138-d8f796af33cc"] in mod.require
    assert len(mod.replace) == len(STAGING)


def test_wrapper_copies_exclude_and_module_replaces_but_drops_folder_replaces():
    upstream = """module github.com/example/server/v3

go 1.26.8

toolchain go1.26.10

require go.example.io/api/v3 v3.7.3

replace (
\tgo.example.io/api/v3 => ../api
\tgithub.com/old/thing v1.0.0 => github.com/new/thing v1.2.0
)

replace github.com/other/lib => github.com/fork/lib v0.3.0 // a fork with a fix

exclude (
\t// comments inside a block are not directives
\tgithub.com/davecgh/go-spew v1.1.2-0.20180830191138-d8f796af33cc
)
"""
    copied = gomod.wrapper_gomod("w", upstream, "v3.7.3", ["github.com/example/server/v3"],
                                 copy=("replace", "exclude"))
    assert "go 1.26.8" in copied and "toolchain" not in copied
    assert "\tgithub.com/old/thing v1.0.0 => github.com/new/thing v1.2.0" in copied
    assert "\tgithub.com/other/lib => github.com/fork/lib v0.3.0" in copied
    assert "../api" not in copied
    assert "exclude (\n\tgithub.com/davecgh/go-spew v1.1.2-0.20180830191138-d8f796af33cc\n)" in copied

    bare = gomod.wrapper_gomod("w", upstream, "v3.7.3", ["github.com/example/server/v3"])
    assert "replace" not in bare and "exclude" not in bare


def test_wrapper_refuses_a_go_mod_without_module_line():
    with pytest.raises(ValueError):
        gomod.wrapper_gomod("w", "go 1.26\n", "v1.0.0", ["x"])


def test_staging_version():
    assert gomod.staging_version("v1.37.2") == "v0.37.2"
    assert gomod.staging_version("v1.38.0-rc.1") == "v0.38.0-rc.1"
    with pytest.raises(ValueError):
        gomod.staging_version("v2.0.0")


def test_kubernetes_ldflags_stamp_server_and_client_version_packages():
    flags = gomod.kubernetes_ldflags("v1.37.2", "2026-10-27T12:01:04Z")
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        assert f"-X {pkg}.gitVersion=v1.37.2" in flags
        assert f"-X {pkg}.gitMajor=1" in flags
        assert f"-X {pkg}.gitMinor=37" in flags
        assert f"-X {pkg}.gitTreeState=clean" in flags
        assert f"-X {pkg}.buildDate=2026-10-27T12:01:04Z" in flags
    assert len(flags) == 10
    assert gomod.ldflags(flags[:1]) == "-s -w -X k8s.io/component-base/version.gitVersion=v1.37.2"


def test_default_binary_name_skips_major_version_suffix():
    assert gomod.default_binary_name("k8s.io/kubernetes/cmd/kube-apiserver") == "kube-apiserver"
    assert gomod.default_binary_name("github.com/nats-io/nats-server/v2") == "nats-server"
    assert gomod.default_binary_name("go.etcd.io/etcd/server/v3") == "server"
    assert gomod.default_binary_name("sigs.k8s.io/kind") == "kind"


def test_escape_module_path():
    assert gomod.escape_module_path("github.com/BurntSushi/toml") == "github.com/!burnt!sushi/toml"


def test_kubernetes_build_command_builds_every_requested_binary_at_once(tmp_path: Path):
    spec = COMPONENTS["kube-apiserver"].build
    cmd = gobuild.build_command(spec, tmp_path, "2026-10-27T12:01:04Z")
    assert cmd[1:3] == ["build", "-trimpath"]
    assert cmd[cmd.index("-tags") + 1] == "selinux,notest,grpcnotrace"
    ld = cmd[cmd.index("-ldflags") + 1]
    assert ld.startswith("-s -w ") and "-X k8s.io/client-go/pkg/version.gitVersion=v1.37.2" in ld
    assert cmd[cmd.index("-o") + 1] == f"{tmp_path}/"
    assert cmd[-6:] == [f"k8s.io/kubernetes/cmd/{n}" for n in (
        "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl", "kubelet", "kube-proxy")]


def test_module_install_command_pins_each_package_and_stamps_the_version(tmp_path: Path):
    cmd = gobuild.build_command(COMPONENTS["helm"].build, tmp_path)
    assert cmd[1] == "install"
    assert cmd[-1] == "helm.sh/helm/v3/cmd/helm@v3.22.0"
    assert "-X helm.sh/helm/v3/internal/version.version=v3.22.0" in cmd[cmd.index("-ldflags") + 1]
    containerd = gobuild.build_command(COMPONENTS["ctr"].build, tmp_path)
    assert containerd[containerd.index("-tags") + 1] == "no_btrfs"
    assert "github.com/containerd/containerd/v2/cmd/ctr@v2.4.2" in containerd
