"""The pinned binaries: where each comes from (Go module or release download), its version and its group."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from labctl.errors import UsageError
from labctl.toolbox.gomod import staging_version

KUBERNETES_VERSION = "v1.37.2"


@dataclass(frozen=True)
class GoBuild:
    """How to build one or more binaries from a Go module.

    style "install": `go install pkg@version` (the module's own go.mod is the main module).
    style "wrapper": a generated module that requires the upstream one (for modules whose go.mod has
    replace/exclude directives, which `go install` refuses); see gomod.wrapper_gomod.
    All binaries of one GoBuild are built by one `go` command, sharing the compile work.
    """

    key: str  # names the wrapper's build directory and log file
    module: str
    version: str
    packages: dict[str, str]  # binary name -> main package
    style: str = "install"
    copy: tuple[str, ...] = ()
    local_replace_version: str | None = None
    tags: tuple[str, ...] = ()
    x: tuple[str, ...] = ()  # -X assignments; {version} and {date} (the tag's commit time) are filled in
    kubernetes: bool = False  # add upstream's Kubernetes version stamps


@dataclass(frozen=True)
class Release:
    """An official release download and where its sha256 is published.

    url and checksum are templates: {k8s}, {github}, {helm} name the base URL of a source (overridable, see
    download.base_urls), {version} is the pinned version, {ver} the same without its leading "v",
    {os}/{arch} the host platform as Go spells it. checksum is either the URL of a checksum file (a bare digest,
    or `sha256sum` lines naming the asset), or "github:OWNER/REPO" for the digest GitHub publishes for every
    release asset. member is the binary's file name inside an archive (None: the download is the binary).
    """

    url: str
    checksum: str
    member: str | None = None


@dataclass(frozen=True)
class Component:
    """One pinned binary."""

    name: str
    version: str
    build: GoBuild
    release: Release | None
    version_args: tuple[str, ...] = ("--version",)
    # The version as the binary prints it, when that differs from the pinned tag.
    reports: str | None = None

    @property
    def expected_version(self) -> str:
        return self.reports or self.version


_K8S = GoBuild(
    key="kubernetes",
    module="k8s.io/kubernetes",
    version=KUBERNETES_VERSION,
    packages={name: f"k8s.io/kubernetes/cmd/{name}" for name in (
        "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl", "kubelet", "kube-proxy")},
    style="wrapper",
    local_replace_version=staging_version(KUBERNETES_VERSION),
    tags=("selinux", "notest", "grpcnotrace"),
    kubernetes=True,
)
_ETCD = GoBuild(key="etcd", module="go.etcd.io/etcd/server/v3", version="v3.7.3",
                packages={"etcd": "go.etcd.io/etcd/server/v3"}, style="wrapper")
_KWOK = GoBuild(key="kwok", module="sigs.k8s.io/kwok", version="v0.8.0",
                packages={"kwok": "sigs.k8s.io/kwok/cmd/kwok"})
_HELM = GoBuild(key="helm", module="helm.sh/helm/v3", version="v3.22.0",
                packages={"helm": "helm.sh/helm/v3/cmd/helm"},
                x=("helm.sh/helm/v3/internal/version.version={version}",))
_KIND = GoBuild(key="kind", module="sigs.k8s.io/kind", version="v0.33.0", packages={"kind": "sigs.k8s.io/kind"})
_CONTAINERD = GoBuild(
    key="containerd", module="github.com/containerd/containerd/v2", version="v2.4.2",
    packages={n: f"github.com/containerd/containerd/v2/cmd/{n}"
              for n in ("containerd", "containerd-shim-runc-v2", "ctr")},
    tags=("no_btrfs",),
    x=("github.com/containerd/containerd/v2/version.Version={version}",),
)
_COREDNS = GoBuild(key="coredns", module="github.com/coredns/coredns", version="v1.15.0",
                   packages={"coredns": "github.com/coredns/coredns"})
_BUILDKIT = GoBuild(
    key="buildkit", module="github.com/moby/buildkit", version="v0.34.2",
    packages={n: f"github.com/moby/buildkit/cmd/{n}" for n in ("buildkitd", "buildctl")},
    style="wrapper", copy=("exclude",),
    x=("github.com/moby/buildkit/version.Version={version}",),
)
_LOCAL_PATH = GoBuild(key="local-path-provisioner", module="github.com/rancher/local-path-provisioner",
                      version="v0.0.30",
                      packages={"local-path-provisioner": "github.com/rancher/local-path-provisioner"},
                      x=("main.VERSION={version}",))
_KUBE_ROUTER = GoBuild(key="kube-router", module="github.com/cloudnativelabs/kube-router/v2", version="v2.1.0",
                       packages={"kube-router": "github.com/cloudnativelabs/kube-router/v2/cmd/kube-router"},
                       x=("github.com/cloudnativelabs/kube-router/v2/pkg/version.Version={version}",
                          "github.com/cloudnativelabs/kube-router/v2/pkg/version.BuildDate={date}"))
_TRAEFIK = GoBuild(key="traefik", module="github.com/traefik/traefik/v3", version="v3.6.12",
                   packages={"traefik": "github.com/traefik/traefik/v3/cmd/traefik"},
                   style="wrapper", copy=("replace", "exclude"),
                   x=("github.com/traefik/traefik/v3/pkg/version.Version={version}",))
# Jaeger tags each release twice (v1.76.0 / v2.13.0): the Go module carries the v1 tag, the jaeger binary (v2)
# reports the v2 one, as upstream stamps it.
JAEGER_V2 = "v2.13.0"
_JAEGER = GoBuild(key="jaeger", module="github.com/jaegertracing/jaeger", version="v1.76.0",
                  packages={"jaeger": "github.com/jaegertracing/jaeger/cmd/jaeger"},
                  style="wrapper", copy=("replace",),
                  x=(f"github.com/jaegertracing/jaeger/internal/version.latestVersion={JAEGER_V2}",
                     "github.com/jaegertracing/jaeger/internal/version.date={date}"))
_NATS = GoBuild(key="nats-server", module="github.com/nats-io/nats-server/v2", version="v2.15.3",
                packages={"nats-server": "github.com/nats-io/nats-server/v2"})


def _k8s(name: str) -> Component:
    release = Release("{k8s}/release/{version}/bin/{os}/{arch}/" + name,
                      "{k8s}/release/{version}/bin/{os}/{arch}/" + name + ".sha256")
    args = ("version", "--client") if name == "kubectl" else ("--version",)
    return Component(name, KUBERNETES_VERSION, _K8S, release, args)


_GH = "{github}"
_ALL: list[Component] = [
    *(_k8s(n) for n in ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")),
    Component("etcd", "v3.7.3", _ETCD, Release(
        _GH + "/etcd-io/etcd/releases/download/{version}/etcd-{version}-{os}-{arch}.tar.gz",
        _GH + "/etcd-io/etcd/releases/download/{version}/SHA256SUMS", "etcd")),
    Component("kwok", "v0.8.0", _KWOK, Release(
        _GH + "/kubernetes-sigs/kwok/releases/download/{version}/kwok-{os}-{arch}",
        "github:kubernetes-sigs/kwok")),
    Component("helm", "v3.22.0", _HELM, Release(
        "{helm}/helm-{version}-{os}-{arch}.tar.gz", "{helm}/helm-{version}-{os}-{arch}.tar.gz.sha256sum", "helm"),
        ("version", "--short")),
    Component("kind", "v0.33.0", _KIND, Release(
        _GH + "/kubernetes-sigs/kind/releases/download/{version}/kind-{os}-{arch}",
        _GH + "/kubernetes-sigs/kind/releases/download/{version}/kind-{os}-{arch}.sha256sum"), ("version",)),
    *(_k8s(n) for n in ("kubelet", "kube-proxy")),
    *(Component(n, "v2.4.2", _CONTAINERD, Release(
        _GH + "/containerd/containerd/releases/download/{version}/containerd-{ver}-{os}-{arch}.tar.gz",
        _GH + "/containerd/containerd/releases/download/{version}/containerd-{ver}-{os}-{arch}.tar.gz.sha256sum",
        n), ("-v",) if n == "containerd-shim-runc-v2" else ("--version",))
      for n in ("containerd", "containerd-shim-runc-v2", "ctr")),
    Component("coredns", "v1.15.0", _COREDNS, Release(
        _GH + "/coredns/coredns/releases/download/{version}/coredns_{ver}_{os}_{arch}.tgz",
        _GH + "/coredns/coredns/releases/download/{version}/coredns_{ver}_{os}_{arch}.tgz.sha256", "coredns"),
        ("-version",)),
    *(Component(n, "v0.34.2", _BUILDKIT, Release(
        _GH + "/moby/buildkit/releases/download/{version}/buildkit-{version}.{os}-{arch}.tar.gz",
        "github:moby/buildkit", n)) for n in ("buildkitd", "buildctl")),
    Component("local-path-provisioner", "v0.0.30", _LOCAL_PATH, Release(
        _GH + "/rancher/local-path-provisioner/releases/download/{version}/local-path-provisioner-{arch}",
        "github:rancher/local-path-provisioner")),
    Component("kube-router", "v2.1.0", _KUBE_ROUTER, Release(
        _GH + "/cloudnativelabs/kube-router/releases/download/{version}/kube-router_{ver}_{os}_{arch}.tar.gz",
        _GH + "/cloudnativelabs/kube-router/releases/download/{version}/kube-router_{ver}_checksums.txt",
        "kube-router")),
    Component("traefik", "v3.6.12", _TRAEFIK, Release(
        _GH + "/traefik/traefik/releases/download/{version}/traefik_{version}_{os}_{arch}.tar.gz",
        _GH + "/traefik/traefik/releases/download/{version}/traefik_{version}_checksums.txt", "traefik"),
        ("version",)),
    # Built only: its v2 release archives are published under the v2 tag, in a layout labctl does not pin.
    Component("jaeger", "v1.76.0", _JAEGER, None, ("version",), reports=JAEGER_V2),
    Component("nats-server", "v2.15.3", _NATS, Release(
        _GH + "/nats-io/nats-server/releases/download/{version}/nats-server-{version}-{os}-{arch}.tar.gz",
        _GH + "/nats-io/nats-server/releases/download/{version}/SHA256SUMS", "nats-server")),
]

COMPONENTS: dict[str, Component] = {c.name: c for c in _ALL}

_SIM = ["kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl", "etcd", "kwok", "helm", "kind"]
_LOCAL = [*_SIM, "kubelet", "kube-proxy", "containerd", "containerd-shim-runc-v2", "ctr", "coredns",
          "buildkitd", "buildctl", "local-path-provisioner", "kube-router"]
GROUPS: dict[str, list[str]] = {
    "sim": _SIM,
    "local": _LOCAL,
    "gateway": ["traefik"],
    "extras": ["jaeger", "nats-server"],
    "all": list(COMPONENTS),
}


def default_group() -> str:
    """What `labctl toolbox install` installs without names: the local provider's set where it can run (Linux)."""
    return "local" if sys.platform.startswith("linux") else "sim"


def resolve(names: list[str] | tuple[str, ...] | None) -> list[Component]:
    """Binary and group names to components, in definition order, without duplicates."""
    if not names:
        names = [default_group()]
    wanted: set[str] = set()
    for name in names:
        if name in GROUPS:
            wanted.update(GROUPS[name])
        elif name in COMPONENTS:
            wanted.add(name)
        else:
            raise UsageError(
                f"unknown toolbox binary or group {name!r}",
                hint=f"groups: {', '.join(GROUPS)}; binaries: {', '.join(COMPONENTS)}",
            )
    return [c for c in _ALL if c.name in wanted]


def host_platform() -> tuple[str, str]:
    """(os, arch) as Go and the release sites spell them."""
    if hasattr(os, "uname"):
        machine = os.uname().machine.lower()
    else:
        machine = os.environ.get("PROCESSOR_ARCHITECTURE", "").lower()
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(machine, machine)
    return {"win32": "windows"}.get(sys.platform, sys.platform), arch
