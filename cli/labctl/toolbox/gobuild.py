"""Binaries built from their Go modules with the local Go toolchain and module proxy."""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections import deque
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from labctl.errors import ToolboxError
from labctl.toolbox import gomod, store
from labctl.toolbox.components import Component, GoBuild

TAIL_LINES = 15


def go_binary() -> str | None:
    return shutil.which("go")


def _build_env() -> dict[str, str]:
    # Static binaries run anywhere, including in the minimal images built from them (CGO_ENABLED=0, as upstream).
    # GOWORK=off: a go.work of the user's must not change what the pinned modules resolve to.
    return {**os.environ, "CGO_ENABLED": "0", "GOWORK": "off"}


def go_env(*names: str) -> dict[str, str]:
    """Values of `go env` for the given variables ({} when Go cannot answer)."""
    go = go_binary()
    if not go:
        return {}
    try:
        out = subprocess.run([go, "env", "-json", *names], capture_output=True, text=True, timeout=60,
                             env=_build_env())
        return json.loads(out.stdout) if out.returncode == 0 else {}
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return {}


def module_reachable(module: str, version: str, env: dict[str, str] | None = None, timeout: float = 5.0) -> bool:
    """Whether Go can get this module version: already in the module cache, or the first answering proxy has it."""
    env = env if env is not None else go_env("GOPROXY", "GOMODCACHE")
    escaped = gomod.escape_module_path(module)
    cache = env.get("GOMODCACHE")
    if cache and (Path(cache) / "cache" / "download" / escaped / "@v" / f"{version}.zip").is_file():
        return True
    for entry, fallback_on_any_error in _proxy_list(env.get("GOPROXY") or "https://proxy.golang.org,direct"):
        if entry == "off":
            return False
        if entry == "direct":
            return True  # the version control host decides; Go reports its own error if it cannot
        try:
            with urllib.request.urlopen(f"{entry.rstrip('/')}/{escaped}/@v/{version}.info", timeout=timeout):
                return True
        except urllib.error.HTTPError as e:
            e.close()
            # As Go does: "not found" always moves on to the next entry, other errors only after a "|".
            if e.code not in (404, 410) and not fallback_on_any_error:
                return False
        except (urllib.error.URLError, OSError, ValueError):
            if not fallback_on_any_error:
                return False
    return False


def _proxy_list(goproxy: str) -> list[tuple[str, bool]]:
    """GOPROXY entries, each with whether Go falls back after any error ("|") or only after not-found (",")."""
    entries: list[tuple[str, bool]] = []
    current = ""
    for ch in goproxy + ",":
        if ch in ",|":
            if current.strip():
                entries.append((current.strip(), ch == "|"))
            current = ""
        else:
            current += ch
    return entries


def _run(cmd: list[str], cwd: Path, log: Path, what: str, extra_env: dict[str, str] | None = None) -> None:
    """Run a go command with its output appended to the log; a failure names the command and the output's tail."""
    with open(log, "a") as out:
        out.write(f"\n$ (cd {shlex.quote(str(cwd))} && {shlex.join(cmd)})\n")
        out.flush()
        try:
            rc = subprocess.run(cmd, cwd=cwd, env={**_build_env(), **(extra_env or {})}, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT).returncode
        except OSError as e:
            raise ToolboxError(f"{what}: cannot run {cmd[0]}: {e}", hint="is Go installed and on PATH?") from e
    if rc != 0:
        with open(log, errors="replace") as f:
            tail = "".join(deque(f, maxlen=TAIL_LINES)).rstrip()
        raise ToolboxError(
            f"{what}: `{shlex.join(cmd)}` exited with {rc}; last lines of its output:\n{tail}",
            hint=f"full output in {log}",
        )


def _module_info(spec: GoBuild, cwd: Path, log: Path, what: str) -> dict:
    """Download the upstream module and return `go mod download -json` about it (GoMod, Info paths)."""
    go = go_binary() or "go"
    cmd = [go, "mod", "download", "-json", f"{spec.module}@{spec.version}"]
    out = subprocess.run(cmd, cwd=cwd, env=_build_env(), capture_output=True, text=True, stdin=subprocess.DEVNULL)
    try:
        info = json.loads(out.stdout)
    except ValueError:
        info = {}
    if out.returncode != 0 or info.get("Error") or not info.get("GoMod"):
        with open(log, "a") as f:
            f.write(f"\n$ {shlex.join(cmd)}\n{out.stdout}{out.stderr}")
        detail = info.get("Error") or "\n".join((out.stdout + out.stderr).strip().splitlines()[-TAIL_LINES:])
        raise ToolboxError(f"{what}: `{shlex.join(cmd)}` failed: {detail}",
                           hint="is the Go module proxy reachable? (go env GOPROXY)")
    return info


def _commit_date(info: dict) -> str:
    """The tag's commit time from the module proxy's .info, as upstream stamps buildDate (reproducible builds)."""
    try:
        stamp = json.loads(Path(info["Info"]).read_text())["Time"]
        when = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except (KeyError, OSError, ValueError):
        when = datetime.fromtimestamp(0, timezone.utc)
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _prepare_wrapper(spec: GoBuild, info: dict, log: Path, what: str) -> Path:
    """Write the wrapper module under the cache and tidy it (only when its generated go.mod changed)."""
    moddir = store.root() / "build" / f"{spec.key}-{spec.version}"
    moddir.mkdir(parents=True, exist_ok=True)
    upstream = Path(info["GoMod"]).read_text()
    text = gomod.wrapper_gomod(
        f"labctl.local/toolbox/{spec.key}", upstream, spec.version, list(spec.packages.values()),
        copy=spec.copy, local_replace_version=spec.local_replace_version,
    )
    stamp = moddir / "go.mod.generated"
    if stamp.is_file() and stamp.read_text() == text and (moddir / "go.sum").is_file():
        return moddir
    (moddir / "go.mod").write_text(text)
    stamp.unlink(missing_ok=True)
    _run([go_binary() or "go", "mod", "tidy"], moddir, log, what)
    stamp.write_text(text)
    return moddir


def build_command(spec: GoBuild, out: Path, build_date: str | None = None) -> list[str]:
    """The one go command that builds every binary of `spec` into the directory `out` (build_date: the tag's)."""
    date = build_date or "1970-01-01T00:00:00Z"
    assignments = [f"-X {a.format(version=spec.version, date=date)}" for a in spec.x]
    if spec.kubernetes:
        assignments += gomod.kubernetes_ldflags(spec.version, date)
    flags = ["-trimpath", "-ldflags", gomod.ldflags(assignments)]
    if spec.tags:
        flags += ["-tags", ",".join(spec.tags)]
    go = go_binary() or "go"
    packages = list(spec.packages.values())
    if spec.style == "install":
        return [go, "install", *flags, *(f"{p}@{spec.version}" for p in packages)]
    return [go, "build", *flags, "-o", f"{out}{os.sep}", *packages]


def build(
    spec: GoBuild, comps: list[Component], workdir: Path, progress: Callable[[str], None]
) -> dict[str, tuple[Path, str]]:
    """Build the given components (all from `spec`) into workdir; return name -> (staged binary, its source)."""
    names = ", ".join(c.name for c in comps)
    what = f"building {names} {spec.version}"
    logs = store.root() / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{spec.key}-{spec.version}.log"
    log.write_text(f"# {what} ({time.strftime('%Y-%m-%d %H:%M:%S')})\n")
    progress(f"{what} from Go modules (takes minutes on a cold cache)")
    start = time.monotonic()

    out = workdir / f"go-{spec.key}"
    out.mkdir()
    info = _module_info(spec, workdir, log, what)
    # Only the requested binaries are built, but a wrapper lists every tool so that its go.sum covers them all.
    wanted = {c.name for c in comps}
    subset = dataclasses.replace(spec, packages={k: v for k, v in spec.packages.items() if k in wanted})
    cmd = build_command(subset, out, _commit_date(info))
    if spec.style == "wrapper":
        _run(cmd, _prepare_wrapper(spec, info, log, what), log, what)
    else:
        _run(cmd, workdir, log, what, {"GOBIN": str(out)})

    staged = {}
    for comp in comps:
        produced = out / gomod.default_binary_name(spec.packages[comp.name])
        if not produced.is_file():
            raise ToolboxError(f"{what}: the build did not produce {produced.name}", hint=f"full output in {log}")
        staged[comp.name] = (produced, f"{spec.packages[comp.name]}@{spec.version}")
    progress(f"  built {names} {spec.version} in {store.elapsed(time.monotonic() - start)}")
    return staged
