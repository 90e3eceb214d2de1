import hashlib
import os
import time

import pytest

from labctl.errors import UsageError
from labctl.toolbox import binary, install, store

pytestmark = pytest.mark.unit

SCRIPT = "#!/bin/sh\necho 'kind v0.33.0 go1.26.8 linux/amd64'\n"


@pytest.fixture
def kind_release(release_server, platform_names):
    os_, arch = platform_names
    base = f"github.com/kubernetes-sigs/kind/releases/download/v0.33.0/kind-{os_}-{arch}"
    digest = release_server.publish(base, SCRIPT)
    release_server.publish(base + ".sha256sum", f"{digest}  kind-{os_}-{arch}\n")
    return release_server


def test_present_and_intact_is_a_quick_no_op_without_network(kind_release, monkeypatch):
    first = install(["kind"], method="download", progress=lambda _: None)
    monkeypatch.setenv("LABCTL_TOOLBOX_MIRROR", "http://127.0.0.1:9")  # any network use would now fail
    served = len(kind_release.requests)
    lines: list[str] = []

    start = time.monotonic()
    again = install(["kind"], method="auto", progress=lines.append)
    took = time.monotonic() - start

    assert again == first
    assert len(lines) == 1 and lines[0].startswith("kind v0.33.0 is already installed, unchanged since installed")
    assert len(kind_release.requests) == served
    assert took < 5


def test_a_changed_binary_is_installed_again(kind_release):
    path = install(["kind"], method="download", progress=lambda _: None)["kind"]
    path.write_text("#!/bin/sh\necho 'kind v0.33.0' # and something else\n")
    lines: list[str] = []

    install(["kind"], method="download", progress=lines.append)

    assert lines[0] == "kind v0.33.0 differs from its recorded sha256: installing it again"
    assert path.read_text() == SCRIPT
    assert store.read_manifest("kind", "v0.33.0")["sha256"] == hashlib.sha256(SCRIPT.encode()).hexdigest()


def test_only_missing_binaries_are_fetched(kind_release, platform_names):
    install(["kind"], method="download", progress=lambda _: None)
    os_, arch = platform_names
    script = "#!/bin/sh\necho 'kwok version v0.8.0'\n"
    digest = kind_release.publish(f"github.com/kubernetes-sigs/kwok/releases/download/v0.8.0/kwok-{os_}-{arch}",
                                  script)
    kind_release.publish("api.github.com/repos/kubernetes-sigs/kwok/releases/tags/v0.8.0",
                         f'{{"assets": [{{"name": "kwok-{os_}-{arch}", "digest": "sha256:{digest}"}}]}}')
    kind_release.requests.clear()
    lines: list[str] = []

    paths = install(["kind", "kwok"], method="download", progress=lines.append)

    assert set(paths) == {"kind", "kwok"} and binary("kwok") == paths["kwok"]
    assert lines[0] == "1 of 2 binaries already installed"
    assert not any("kind" in r for r in kind_release.requests)


def test_unknown_method_is_bad_usage(cache):
    with pytest.raises(UsageError, match="unknown install method 'fast'"):
        install(["kind"], method="fast")


def test_an_edit_that_keeps_size_and_time_is_caught_by_verify(kind_release):
    path = install(["kind"], method="download", progress=lambda _: None)["kind"]
    before = path.stat()
    with open(path, "r+b") as f:  # same inode, same size
        f.write(b"#!/bin/bash")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))

    quick: list[str] = []
    install(["kind"], method="download", progress=quick.append)
    assert quick[0].startswith("kind v0.33.0 is already installed, unchanged since installed")

    verified: list[str] = []
    install(["kind"], method="download", progress=verified.append, verify=True)
    assert verified[0] == "kind v0.33.0 differs from its recorded sha256: installing it again"
    assert path.read_text() == SCRIPT


def test_a_touched_but_identical_binary_is_rehashed_once_and_kept(kind_release):
    path = install(["kind"], method="download", progress=lambda _: None)["kind"]
    os.utime(path, (1, 1))
    lines: list[str] = []

    install(["kind"], method="download", progress=lines.append)

    assert lines[0].startswith("kind v0.33.0 is already installed")
    assert store.read_manifest("kind", "v0.33.0")["mtime_ns"] == 1_000_000_000
