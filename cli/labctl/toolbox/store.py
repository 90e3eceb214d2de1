"""The toolbox cache on disk: one directory per pinned binary and version, holding the binary and its manifest.

    <cache_dir>/toolbox/<name>-<version>/<name>
    <cache_dir>/toolbox/<name>-<version>/manifest.json   {"name", "version", "sha256", "size", "how", "source", ...}

A directory is only ever created complete (staged beside it, then renamed), and the manifest is what makes a
binary count as installed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Iterator

from labctl import paths
from labctl.errors import ToolboxError
from labctl.toolbox.components import COMPONENTS, GROUPS, Component, default_group

MANIFEST = "manifest.json"


def root() -> Path:
    """<cache_dir>/toolbox."""
    return paths.cache_dir() / "toolbox"


def component_dir(name: str, version: str) -> Path:
    return root() / f"{name}-{version}"


def binary_path(name: str, version: str) -> Path:
    return component_dir(name, version) / name


def _component(name: str) -> Component:
    try:
        return COMPONENTS[name]
    except KeyError:
        raise ToolboxError(f"unknown toolbox binary {name!r}", hint=f"known: {', '.join(COMPONENTS)}") from None


def _install_hint(name: str) -> str:
    if name in GROUPS[default_group()]:
        return "run `labctl toolbox install`"
    return f"run `labctl toolbox install {name}`"


def binary(name: str) -> Path:
    """The path of a pinned binary; raises ToolboxError when it is not installed. Two stat calls, no hashing."""
    comp = _component(name)
    path = binary_path(name, comp.version)
    if not (path.is_file() and (path.parent / MANIFEST).is_file()):
        raise ToolboxError(f"{name} {comp.version} is not installed", hint=_install_hint(name))
    return path


def read_manifest(name: str, version: str) -> dict | None:
    """The manifest of an installed binary, or None when there is none (or it cannot be read)."""
    try:
        data = json.loads((component_dir(name, version) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def fingerprint(path: Path) -> dict[str, int]:
    """What changes when a file is rewritten or replaced: size, modification time, inode."""
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino}


def _write_manifest(directory: Path, manifest: dict) -> None:
    tmp = directory / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, directory / MANIFEST)


def verify_installed(comps: list[Component], *, rehash: bool = False) -> dict[str, bool]:
    """Check installed binaries against their manifests: name -> intact.

    A binary whose size, modification time and inode are the recorded ones is intact without reading it;
    any other (or every one, with rehash) is re-hashed against the recorded sha256, and a match records the
    new fingerprint. Hashing runs in parallel: hashlib releases the GIL.
    """

    def check(comp: Component) -> bool:
        manifest = read_manifest(comp.name, comp.version)
        path = binary_path(comp.name, comp.version)
        try:
            if not manifest or not path.is_file():
                return False
            seen = fingerprint(path)
            if not rehash and all(manifest.get(k) == v for k, v in seen.items()):
                return True
            if sha256_file(path) != manifest.get("sha256"):
                return False
            if any(manifest.get(k) != v for k, v in seen.items()):
                _write_manifest(path.parent, {**manifest, **seen})
            return True
        except OSError:
            return False

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
        return dict(zip((c.name for c in comps), pool.map(check, comps)))


def installed() -> list[dict]:
    """Every pinned binary with its version, path, whether it is present and how it got there (built/downloaded)."""
    rows = []
    for comp in COMPONENTS.values():
        path = binary_path(comp.name, comp.version)
        manifest = read_manifest(comp.name, comp.version) if path.is_file() else None
        rows.append({
            "name": comp.name,
            "version": comp.version,
            "path": path,
            "present": manifest is not None,
            "how": manifest.get("how") if manifest else None,
            "size": manifest.get("size") if manifest else None,
            "groups": [g for g, members in GROUPS.items() if comp.name in members and g != "all"],
        })
    return rows


def staging_dir() -> Path:
    """A fresh directory beside the installed ones (same file system, so moving out of it is a rename)."""
    base = root() / ".staging"
    base.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=base))


def place(comp: Component, staged: Path, how: str, source: str) -> Path:
    """Move a verified binary into its versioned directory with its manifest, atomically; return its path."""
    final = component_dir(comp.name, comp.version)
    tmp = Path(tempfile.mkdtemp(dir=root(), prefix=f".{comp.name}-{comp.version}."))
    tmp.chmod(0o755)  # mkdtemp makes it private; binaries are for every user of the machine (sudo runs, images)
    try:
        target = tmp / comp.name
        os.replace(staged, target)
        target.chmod(0o755)
        manifest = {
            "name": comp.name,
            "version": comp.version,
            "sha256": sha256_file(target),
            **fingerprint(target),
            "how": how,
            "source": source,
            "installed": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        _write_manifest(tmp, manifest)
        if final.exists():
            # A directory cannot be renamed over a non-empty one: move the old one aside first.
            old = Path(tempfile.mkdtemp(dir=root(), prefix=f".{comp.name}-{comp.version}.old."))
            os.replace(final, old / "d")
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final / comp.name


@contextlib.contextmanager
def locked() -> Iterator[None]:
    """Hold the toolbox lock: two installs at once would build the same thing twice."""
    try:
        import fcntl
    except ImportError:  # Windows: one install at a time is the user's to ensure
        yield
        return
    root().mkdir(parents=True, exist_ok=True)
    with open(root() / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def dir_size(path: Path) -> int:
    """Bytes under a directory (files only, symlinks not followed)."""
    total = 0
    stack = [path]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue
        for e in entries:
            try:
                if e.is_dir(follow_symlinks=False):
                    stack.append(Path(e.path))
                elif e.is_file(follow_symlinks=False):
                    total += e.stat(follow_symlinks=False).st_size
            except OSError:
                continue
    return total


def unpinned() -> list[Path]:
    """What prune removes: binary versions no longer pinned, build directories of other versions, leftovers."""
    base = root()
    if not base.is_dir():
        return []
    keep = {f"{c.name}-{c.version}" for c in COMPONENTS.values()}
    builds = {f"{c.build.key}-{c.build.version}" for c in COMPONENTS.values()}
    found = []
    for entry in sorted(base.iterdir()):
        if entry.name in (".lock", "build", "logs") or entry.name in keep:
            continue
        found.append(entry)
    for sub in ("build", "logs"):
        d = base / sub
        if d.is_dir():
            for entry in sorted(d.iterdir()):
                stem = entry.name.removesuffix(".log")
                if stem not in builds:
                    found.append(entry)
    return found


def human_size(n: int) -> str:
    """1536 -> '1.5 KB' (powers of 1024, as du -h)."""
    size = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1024 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def elapsed(seconds: float) -> str:
    """4.2 -> '4.2s', 312 -> '5m 12s'."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    return f"{int(seconds // 60)}m {int(seconds % 60):02d}s"


def clean_leftovers() -> None:
    """Remove what an interrupted install left behind (call with the lock held)."""
    base = root()
    if not base.is_dir():
        return
    for entry in base.iterdir():
        if entry.name == ".staging" or (entry.name.startswith(".") and entry.is_dir()):
            shutil.rmtree(entry, ignore_errors=True)
