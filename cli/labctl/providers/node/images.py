"""The node's own images, made from static binaries without a registry.

- `labctl.local/pause:<v>`: the pod sandbox (containerd's pinned `sandbox` image), from `pause/main.go`.
- `labctl.local/coredns:<v>`: the toolbox's CoreDNS binary.
- `labctl.local/local-path-helper:<v>`: local-path-provisioner's helper pods, from `volumehelper/main.go`.

The two small programs are built once with `go build` into the cache; every image is written once as a
docker-archive tar under `<cache>/images/node/`, named after a digest of what goes into it, and imported into
the node's containerd with `ctr images import`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from labctl import paths
from labctl.errors import ProviderError

PAUSE_VERSION = "1.0"
HELPER_VERSION = "1.0"
COREDNS_VERSION = "1.15.0"
PAUSE_IMAGE = f"labctl.local/pause:{PAUSE_VERSION}"
COREDNS_IMAGE = f"labctl.local/coredns:{COREDNS_VERSION}"
HELPER_IMAGE = f"labctl.local/local-path-helper:{HELPER_VERSION}"
NONROOT = "65532:65532"
_SOURCES = Path(__file__).resolve().parent


@dataclass(frozen=True)
class NodeImage:
    """An image tar ready to import, and the digest of its inputs (changes when the image must be re-imported)."""

    tag: str
    tar: Path
    key: str


def cache_root() -> Path:
    return paths.cache_dir() / "images" / "node"


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(hashlib.sha256(part).digest())
    return h.hexdigest()[:16]


def _binary_digest(path: Path) -> str:
    """The sha256 of a toolbox binary: from its manifest when it has one (no need to read 70 MB again)."""
    try:
        from labctl.toolbox.store import MANIFEST

        recorded = json.loads((path.parent / MANIFEST).read_text()).get("sha256")
        if isinstance(recorded, str) and len(recorded) == 64:
            return recorded
    except (ImportError, OSError, ValueError, AttributeError):
        pass
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def go_program(name: str, go: str | None = None) -> Path:
    """The static binary of the Go program in `<package>/<name>/main.go`, built once into the cache."""
    source = _SOURCES / name / "main.go"
    code = source.read_bytes()
    out = cache_root() / "programs" / f"{name}-{_digest(code)}" / name
    if out.is_file():
        return out
    go = go or shutil.which("go")
    if go is None:
        raise ProviderError(f"building the node's {name} program needs Go, which is not installed",
                            hint="install Go (the toolbox builds need it too), then run `labctl up` again")
    out.parent.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent.parent, prefix=f".{name}-") as tmp:
        env = {**os.environ, "CGO_ENABLED": "0"}
        built = Path(tmp) / name
        try:
            done = subprocess.run([go, "build", "-trimpath", "-ldflags=-s -w", "-o", str(built), str(source)],
                                  cwd=tmp, env=env, capture_output=True, text=True, timeout=600, check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise ProviderError(f"could not build the node's {name} program: {e}") from e
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise ProviderError(f"`go build` of the node's {name} program failed: {last}",
                                hint=f"the source is {source}")
        staged = Path(tmp) / "staged"
        staged.mkdir()
        built.rename(staged / name)
        try:
            staged.rename(out.parent)
        except OSError:
            if not out.is_file():  # another labctl built it at the same moment; theirs is as good
                raise
    return out


def _image(tag: str, key: str, write: Callable[[Path], None]) -> NodeImage:
    safe = tag.replace("/", "_").replace(":", "_")
    tar = cache_root() / f"{safe}-{key}.tar"
    if not tar.is_file():
        write(tar)
    return NodeImage(tag, tar, key)


def pause_image() -> NodeImage:
    from labctl.images.archive import write_image

    binary = go_program("pause")
    return _image(PAUSE_IMAGE, _digest(binary.read_bytes()), lambda tar: write_image(
        tar, PAUSE_IMAGE, {"/pause": binary}, entrypoint=["/pause"], user=NONROOT))


def helper_image() -> NodeImage:
    from labctl.images.archive import write_image

    binary = go_program("volumehelper")
    return _image(HELPER_IMAGE, _digest(binary.read_bytes()), lambda tar: write_image(
        tar, HELPER_IMAGE, {"/volumehelper": binary}, entrypoint=["/volumehelper"]))


def coredns_image(coredns: Path) -> NodeImage:
    from labctl.images.archive import write_image

    return _image(COREDNS_IMAGE, _binary_digest(coredns)[:16], lambda tar: write_image(
        tar, COREDNS_IMAGE, {"/coredns": coredns}, entrypoint=["/coredns"], user=NONROOT))


def node_images(coredns: Path) -> list[NodeImage]:
    """Every image the node needs before its first pod, built where missing."""
    return [pause_image(), coredns_image(coredns), helper_image()]
