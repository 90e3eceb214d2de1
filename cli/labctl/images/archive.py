"""Image tars in the docker-archive format, written with `tarfile`: what `docker save` writes and what
`ctr images import`, `docker load` and `kind load image-archive` read.

    <tar>
      manifest.json                 [{"Config": "blobs/sha256/<config>", "RepoTags": [tag], "Layers": [...]}]
      blobs/sha256/<config digest>  the image config: Env, Entrypoint, Cmd, User, ... and rootfs.diff_ids
      blobs/sha256/<layer digest>   each layer, an uncompressed tar; its sha256 is its diff_id

One layer per image: the images labctl writes are a root filesystem or a few static files, never a stack.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import tarfile
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Iterable, Mapping

from labctl.errors import UsageError

# The time stamped on files written from bytes or static binaries and on their config, so that the same
# inputs give the same tar and the same image id (SOURCE_DATE_EPOCH in reproducible builds plays this part).
EPOCH = 946684800  # 2000-01-01T00:00:00Z

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class ImageConfig:
    """What a container started from the image gets by default (the `config` of the image config)."""

    env: Mapping[str, str] = field(default_factory=lambda: {"PATH": DEFAULT_PATH})
    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    user: str | None = None
    workdir: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> dict:
        out: dict = {"Env": [f"{k}={v}" for k, v in self.env.items()]}
        if self.entrypoint is not None:
            out["Entrypoint"] = list(self.entrypoint)
        if self.cmd is not None:
            out["Cmd"] = list(self.cmd)
        if self.user:
            out["User"] = self.user
        if self.workdir:
            out["WorkingDir"] = self.workdir
        if self.labels:
            out["Labels"] = dict(sorted(self.labels.items()))
        return out


@dataclass(frozen=True)
class Layer:
    """A layer tar on disk and its diff_id (the sha256 of the uncompressed tar)."""

    path: Path
    diff_id: str
    size: int
    created_by: str = "labctl"


@dataclass(frozen=True)
class ImageInfo:
    """What was written: the tag, the image id (the config's digest) and the layers' diff_ids."""

    tag: str
    image_id: str
    diff_ids: list[str]
    size: int


class _HashingWriter(io.RawIOBase):
    """A write-only file that hashes and counts what passes through it to the file underneath."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self.sha = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.size

    def write(self, b) -> int:  # type: ignore[override]
        data = bytes(b)
        self._f.write(data)
        self.sha.update(data)
        self.size += len(data)
        return len(data)


def host_architecture() -> str:
    """The host's architecture as image configs spell it (amd64, arm64)."""
    from labctl.toolbox.components import host_platform

    return host_platform()[1]


def _normalize(info: tarfile.TarInfo, *, mtime: int | None) -> tarfile.TarInfo:
    # Names and fractional times vary from machine to machine and mean nothing to a container runtime.
    info.uname = ""
    info.gname = ""
    info.mtime = int(info.mtime) if mtime is None else mtime
    return info


def _image_path(path: str) -> str:
    """An absolute path in the image to its name in a layer tar ("/usr/bin/x" -> "usr/bin/x")."""
    pure = PurePosixPath(path)
    if not pure.is_absolute() or ".." in pure.parts or pure == PurePosixPath("/"):
        raise UsageError(f"{path!r} is not an absolute file path inside the image")
    return str(pure.relative_to("/"))


def layer_from_files(dest: Path, files: Mapping[str, Path | bytes], *, dirs: Mapping[str, int] | None = None,
                     mtime: int = EPOCH) -> Layer:
    """Write a layer holding `files` (image path -> host file or bytes) and the folders `dirs` (path -> mode).

    A host file keeps its permission bits (a built binary stays executable); bytes become 0644. Parent folders
    are created 0755. Owner root, every time stamp `mtime`: the same inputs give the same layer.
    """
    entries: dict[str, tuple[str, Path | bytes | None, int]] = {}
    for path, mode in (dirs or {}).items():
        entries[_image_path(path)] = ("dir", None, mode)
    for path, source in files.items():
        name = _image_path(path)
        if isinstance(source, (bytes, bytearray)):
            entries[name] = ("file", bytes(source), 0o644)
        else:
            source = Path(source)
            try:
                mode = stat.S_IMODE(source.stat().st_mode)
            except OSError as e:
                raise UsageError(f"cannot read {source} for the image: {e.strerror}") from e
            entries[name] = ("file", source, mode)
    for name in list(entries):
        parent = PurePosixPath(name).parent
        while str(parent) != ".":
            entries.setdefault(str(parent), ("dir", None, 0o755))
            parent = parent.parent

    with open(dest, "wb") as raw:
        writer = _HashingWriter(raw)
        with tarfile.open(fileobj=writer, mode="w", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[arg-type]
            for name in sorted(entries):
                kind, source, mode = entries[name]
                info = tarfile.TarInfo(name)
                info.mode = mode
                info.mtime = mtime
                if kind == "dir":
                    info.type = tarfile.DIRTYPE
                    tar.addfile(info)
                elif isinstance(source, bytes):
                    info.size = len(source)
                    tar.addfile(info, io.BytesIO(source))
                else:
                    assert isinstance(source, Path)
                    info.size = source.stat().st_size
                    with open(source, "rb") as f:
                        tar.addfile(info, f)
    return Layer(dest, f"sha256:{writer.sha.hexdigest()}", writer.size,
                 created_by="labctl: files " + " ".join(sorted(files)))


def layer_from_dir(dest: Path, root: Path, *, empty: Iterable[str] = ("dev", "proc", "sys")) -> Layer:
    """Write a layer holding everything under `root` (a root filesystem), owners and modes as they are.

    The folders named in `empty` are kept but not their contents: the runtime mounts its own /dev, /proc
    and /sys. Time stamps are kept (to the second): Python's bytecode caches record their source's mtime,
    and a changed mtime would make every import recompile.
    """
    skip = {str(root / e) for e in empty}
    with open(dest, "wb") as raw:
        writer = _HashingWriter(raw)
        with tarfile.open(fileobj=writer, mode="w", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[arg-type]
            for top, dirnames, filenames in os.walk(root):
                dirnames.sort()
                names = sorted(dirnames + filenames)
                if top in skip:
                    dirnames[:] = []
                    continue
                for name in names:
                    path = os.path.join(top, name)
                    info = tar.gettarinfo(path, arcname=os.path.relpath(path, root))
                    if info is None:  # sockets and other things a tar cannot carry
                        continue
                    _normalize(info, mtime=None)
                    if info.isreg():
                        with open(path, "rb") as f:
                            tar.addfile(info, f)
                    else:
                        tar.addfile(info)
    return Layer(dest, f"sha256:{writer.sha.hexdigest()}", writer.size, created_by="labctl: root filesystem")


def _json_bytes(data: object) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


def config_json(layers: list[Layer], config: ImageConfig, *, architecture: str, created: str) -> bytes:
    """The image config document (OCI image-spec `config`, as Docker writes it)."""
    return _json_bytes({
        "architecture": architecture,
        "os": "linux",
        "created": created,
        "config": config.to_json(),
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        "history": [{"created": created, "created_by": layer.created_by} for layer in layers],
    })


def _rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def write_archive(tar_path: Path, tag: str, layers: list[Layer], config: ImageConfig, *,
                  architecture: str | None = None, created: float = EPOCH) -> ImageInfo:
    """Write the docker-archive tar of an image made of `layers`, tagged `tag`; written beside and renamed."""
    arch = architecture or host_architecture()
    cfg = config_json(layers, config, architecture=arch, created=_rfc3339(created))
    config_digest = hashlib.sha256(cfg).hexdigest()
    layer_names = [f"blobs/sha256/{layer.diff_id.removeprefix('sha256:')}" for layer in layers]
    manifest = _json_bytes([{"Config": f"blobs/sha256/{config_digest}", "RepoTags": [tag], "Layers": layer_names}])

    tar_path = Path(tar_path)
    tar_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=tar_path.parent, prefix=f".{tar_path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
            def add_bytes(name: str, data: bytes) -> None:
                info = tarfile.TarInfo(name)
                info.size, info.mode, info.mtime = len(data), 0o644, EPOCH
                tar.addfile(info, io.BytesIO(data))

            for d in ("blobs", "blobs/sha256"):
                info = tarfile.TarInfo(d)
                info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, EPOCH
                tar.addfile(info)
            add_bytes(f"blobs/sha256/{config_digest}", cfg)
            for layer, name in zip(layers, layer_names, strict=True):
                info = tarfile.TarInfo(name)
                info.size, info.mode, info.mtime = layer.size, 0o644, EPOCH
                with open(layer.path, "rb") as f:
                    tar.addfile(info, f)
            add_bytes("manifest.json", manifest)
        os.replace(tmp, tar_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return ImageInfo(tag, f"sha256:{config_digest}", [layer.diff_id for layer in layers], tar_path.stat().st_size)


def write_image(tar_path: Path, tag: str, files: Mapping[str, Path | bytes], *, entrypoint: list[str] | None = None,
                cmd: list[str] | None = None, user: str | None = None, env: Mapping[str, str] | None = None,
                workdir: str | None = None, dirs: Mapping[str, int] | None = None,
                labels: Mapping[str, str] | None = None) -> ImageInfo:
    """Write an image of a few files (typically one static binary) as a docker-archive tar.

    `files` maps absolute paths in the image to host files (permission bits kept) or bytes (0644); `dirs` adds
    empty folders with their modes (for example {"/tmp": 0o1777}). PATH is set unless `env` names it. Every
    time stamp is fixed, so the same inputs give the same image id:

        write_image(out, "labctl.local/coredns:1.15.0", {"/coredns": built}, entrypoint=["/coredns"],
                    user="65532:65532")
    """
    environment = {"PATH": DEFAULT_PATH, **(env or {})}
    tar_path = Path(tar_path)
    tar_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=tar_path.parent, prefix=".layer-") as tmp:
        layer = layer_from_files(Path(tmp) / "layer.tar", files, dirs=dirs)
        config = ImageConfig(env=environment, entrypoint=entrypoint, cmd=cmd, user=user, workdir=workdir,
                             labels=labels or {})
        return write_archive(tar_path, tag, [layer], config)


def read_archive(tar_path: Path) -> dict:
    """The manifest entry of a docker-archive tar with its config parsed: {"RepoTags", "Layers", "Config", "config"}.

    Raises UsageError when the file is not an image archive.
    """
    try:
        with tarfile.open(tar_path, mode="r:") as tar:
            manifest = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
            entry = manifest[0]
            entry["config"] = json.loads(tar.extractfile(entry["Config"]).read())  # type: ignore[union-attr]
    except (OSError, tarfile.TarError, KeyError, IndexError, ValueError, AttributeError) as e:
        raise UsageError(f"{tar_path} is not a docker-archive image tar ({e})") from e
    return entry
