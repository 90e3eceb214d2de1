"""Installing pinned binaries: skip what is present and intact, build or download the rest, verify, place."""

from __future__ import annotations

import contextlib
import re
import shlex
import shutil
import subprocess
import time
from pathlib import Path
from typing import Callable, Iterable

from labctl.errors import ToolboxError, UsageError
from labctl.toolbox import store
from labctl.toolbox.components import Component, GoBuild, resolve

METHODS = ("auto", "build", "download")


def reports_version(output: str, version: str) -> bool:
    """Whether a binary's version output names exactly `version` (v3.22 is not v3.22.0; 2.4.2+unknown is 2.4.2)."""
    v = re.escape(version.removeprefix("v"))
    return re.search(rf"(?<![\d.])v?{v}(?!\.?\d)", output) is not None


def check_version(comp: Component, path: Path) -> None:
    """Run the binary's version command; raise ToolboxError unless it reports the pinned version."""
    cmd = [str(path), *comp.version_args]
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ToolboxError(f"{comp.name} {comp.version}: `{shlex.join(cmd)}` failed: {e}",
                           hint="the binary does not run on this machine; nothing was installed") from e
    output = (result.stdout + result.stderr).strip()
    if not reports_version(output, comp.expected_version):
        shown = " | ".join(output.splitlines()[:3]) or "(nothing)"
        raise ToolboxError(
            f"{comp.name}: `{comp.name} {' '.join(comp.version_args)}` printed {shown!r}, "
            f"not version {comp.expected_version}; nothing was installed",
            hint="the build or download produced a different version than the one pinned",
        )


def _batches(comps: list[Component]) -> list[tuple[GoBuild, list[Component]]]:
    """Components grouped by the Go build that makes them, in definition order."""
    batches: dict[str, tuple[GoBuild, list[Component]]] = {}
    for comp in comps:
        batches.setdefault(comp.build.key, (comp.build, []))[1].append(comp)
    return list(batches.values())


class _Chooser:
    """Decides, per Go build, whether to build or download (auto: build where Go and its module source answer)."""

    def __init__(self, method: str) -> None:
        from labctl.toolbox import gobuild

        self.method = method
        self.go = gobuild.go_binary()
        self._env: dict[str, str] | None = None

    def __call__(self, spec: GoBuild, comps: list[Component]) -> str:
        from labctl.toolbox import gobuild

        names = ", ".join(c.name for c in comps)
        downloadable = all(c.release is not None for c in comps)
        if self.method == "build" or (self.method == "auto" and not downloadable):
            if not self.go:
                raise ToolboxError(f"cannot build {names} {spec.version}: `go` is not on PATH",
                                   hint="install Go 1.26 or newer" + (
                                       ", or use `--method download`" if downloadable else ""))
            return "built"
        if self.method == "download":
            return "downloaded"
        if self.go:
            if self._env is None:
                self._env = gobuild.go_env("GOPROXY", "GOMODCACHE")
            if gobuild.module_reachable(spec.module, spec.version, self._env):
                return "built"
        return "downloaded"


def install(
    names: Iterable[str] | None = None,
    *,
    method: str = "auto",
    progress: Callable[[str], None] = print,
    verify: bool = False,
) -> dict[str, Path]:
    """Make the named binaries (or groups; default: the default group) present and verified; return name -> path.

    Binaries already installed are left alone when intact: their size, modification time and inode are the
    ones their manifest recorded, or else (and always with verify=True) their sha256 still matches it. The rest
    are built from Go modules or downloaded and checked against the published sha256 (method "auto" builds
    where Go and the module proxy answer), and each must report its pinned version before it is moved into place.
    """
    if method not in METHODS:
        raise UsageError(f"unknown install method {method!r}", hint=f"one of: {', '.join(METHODS)}")
    comps = resolve(list(names) if names is not None else None)
    start = time.monotonic()
    with store.locked():
        store.clean_leftovers()
        intact = store.verify_installed(comps, rehash=verify)
        for comp in comps:
            if not intact[comp.name] and store.read_manifest(comp.name, comp.version):
                progress(f"{comp.name} {comp.version} differs from its recorded sha256: installing it again")
        missing = [c for c in comps if not intact[c.name]]
        result = {c.name: store.binary_path(c.name, c.version) for c in comps}
        if not missing:
            how = "sha256 verified" if verify else "unchanged since installed"
            what = f"{comps[0].name} {comps[0].version} is" if len(comps) == 1 else f"all {len(comps)} binaries are"
            progress(f"{what} already installed, {how} ({store.elapsed(time.monotonic() - start)})")
            return result
        if len(missing) < len(comps):
            progress(f"{len(comps) - len(missing)} of {len(comps)} binaries already installed")

        from labctl.toolbox import download, gobuild

        choose = _Chooser(method)
        work = store.staging_dir()
        try:
            for spec, batch in _batches(missing):
                how = choose(spec, batch)
                if how == "built":
                    staged = gobuild.build(spec, batch, work, progress)
                else:
                    staged = download.download(batch, work, progress)
                for comp in batch:
                    path, source = staged[comp.name]
                    check_version(comp, path)
                    store.place(comp, path, how, source)
        finally:
            shutil.rmtree(work, ignore_errors=True)
            with contextlib.suppress(OSError):
                work.parent.rmdir()  # only when empty
    progress(f"installed {len(missing)} binaries in {store.elapsed(time.monotonic() - start)} ({store.root()})")
    return result
