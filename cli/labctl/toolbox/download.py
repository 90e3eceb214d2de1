"""Official release binaries, downloaded and checked against the sha256 their project publishes.

Base URLs, for mirrors and air-gapped networks:
  LABCTL_TOOLBOX_MIRROR   one mirror for every source, laid out by host: <mirror>/dl.k8s.io/release/...,
                          <mirror>/github.com/<owner>/<repo>/releases/..., <mirror>/get.helm.sh/...,
                          <mirror>/api.github.com/repos/...
  LABCTL_K8S_URL          instead of https://dl.k8s.io
  LABCTL_GITHUB_URL       instead of https://github.com
  LABCTL_GITHUB_API_URL   instead of https://api.github.com (release asset digests)
  LABCTL_HELM_URL         instead of https://get.helm.sh
A per-source variable wins over the mirror.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tarfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Mapping
from urllib.parse import urlparse

from labctl import __version__
from labctl.errors import ToolboxError
from labctl.toolbox.components import Component, host_platform
from labctl.toolbox.store import elapsed

MIRROR_ENV = "LABCTL_TOOLBOX_MIRROR"
SOURCES = {
    "k8s": ("LABCTL_K8S_URL", "https://dl.k8s.io"),
    "github": ("LABCTL_GITHUB_URL", "https://github.com"),
    "github_api": ("LABCTL_GITHUB_API_URL", "https://api.github.com"),
    "helm": ("LABCTL_HELM_URL", "https://get.helm.sh"),
}
TIMEOUT = 30.0
_HINT = ("check the network (or set LABCTL_TOOLBOX_MIRROR), "
         "or build from Go modules: `labctl toolbox install --method build`")


def base_urls(env: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The base URL of each download source after the environment's overrides."""
    mirror = env.get(MIRROR_ENV, "").rstrip("/")
    bases = {}
    for key, (var, default) in SOURCES.items():
        if env.get(var):
            bases[key] = env[var].rstrip("/")
        elif mirror:
            bases[key] = f"{mirror}/{urlparse(default).netloc}"
        else:
            bases[key] = default
    return bases


def release_urls(comp: Component, bases: Mapping[str, str], os_: str, arch: str) -> tuple[str, str]:
    """(download URL, checksum URL) of a component; the checksum URL of a GitHub digest is the release API's."""
    if comp.release is None:
        raise ToolboxError(f"{comp.name} {comp.version} has no release download",
                           hint="build it from Go modules: `labctl toolbox install --method build " + comp.name + "`")
    fields = {**bases, "version": comp.version, "ver": comp.version.removeprefix("v"), "os": os_, "arch": arch}
    url = comp.release.url.format(**fields)
    checksum = comp.release.checksum
    if checksum.startswith("github:"):
        repo = checksum.removeprefix("github:")
        return url, f"{bases['github_api']}/repos/{repo}/releases/tags/{comp.version}"
    return url, checksum.format(**fields)


def parse_checksum(text: str, filename: str) -> str | None:
    """The sha256 for `filename` in a checksum file: a bare digest, or `sha256sum` lines (`<hex>  [*]<name>`)."""
    lines = [line.split() for line in text.splitlines() if line.strip()]
    for parts in lines:
        digest = parts[0].lower()
        if not re.fullmatch(r"[0-9a-f]{64}", digest):
            continue
        if len(parts) == 1:
            if len(lines) == 1:
                return digest
            continue
        if parts[-1].lstrip("*").rsplit("/", 1)[-1] == filename:
            return digest
    return None


def parse_github_digest(text: str, filename: str) -> str | None:
    """The sha256 GitHub publishes for a release asset (`"digest": "sha256:<hex>"` in the release API)."""
    try:
        release = json.loads(text)
    except ValueError:
        return None
    for asset in release.get("assets", []) if isinstance(release, dict) else []:
        if asset.get("name") == filename:
            digest = str(asset.get("digest") or "")
            if re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
                return digest.removeprefix("sha256:")
    return None


def _open(url: str):
    request = urllib.request.Request(url, headers={"User-Agent": f"labctl/{__version__}"})
    return urllib.request.urlopen(request, timeout=TIMEOUT)


def _failure(what: str, url: str, e: Exception) -> ToolboxError:
    if isinstance(e, urllib.error.HTTPError):
        e.close()  # it holds the response's socket
        reason = f"HTTP {e.code}"
    elif isinstance(e, urllib.error.URLError):
        reason = str(e.reason)
    else:
        reason = str(e) or type(e).__name__
    return ToolboxError(f"{what}: {url}: {reason}", hint=_HINT)


def fetch_text(url: str, what: str) -> str:
    try:
        with _open(url) as response:
            return response.read(4 << 20).decode("utf-8", "replace")
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise _failure(what, url, e) from e


def fetch_file(url: str, dest: Path, what: str) -> str:
    """Stream a URL to a file; return its sha256."""
    digest = hashlib.sha256()
    try:
        with _open(url) as response, open(dest, "wb") as out:
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise _failure(what, url, e) from e
    return digest.hexdigest()


def expected_digest(comp: Component, names: str, url: str, checksum_url: str) -> str:
    """The published sha256 of a download, or a ToolboxError: nothing is installed without one."""
    filename = url.rsplit("/", 1)[-1]
    text = fetch_text(checksum_url, f"no published checksum for {names} {comp.version}")
    github = comp.release is not None and comp.release.checksum.startswith("github:")
    digest = parse_github_digest(text, filename) if github else parse_checksum(text, filename)
    if digest is None:
        raise ToolboxError(
            f"no sha256 for {filename} in {checksum_url}; refusing to install {names} {comp.version} unverified",
            hint=_HINT,
        )
    return digest


def extract(archive: Path, member: str, dest: Path) -> None:
    """Copy the regular file named `member` (at any depth) out of a tar archive."""
    try:
        with tarfile.open(archive) as tar:
            candidates = [m for m in tar.getmembers() if m.isfile() and m.name.rsplit("/", 1)[-1] == member]
            if not candidates:
                raise ToolboxError(f"{member} not found in {archive.name}", hint=_HINT)
            best = min(candidates, key=lambda m: m.name.count("/"))
            source = tar.extractfile(best)
            assert source is not None  # a regular file always has content to read
            with source, open(dest, "wb") as out:
                shutil.copyfileobj(source, out)
    except (tarfile.TarError, OSError) as e:
        raise ToolboxError(f"cannot read {archive.name}: {e}", hint=_HINT) from e


def download(
    comps: list[Component], workdir: Path, progress: Callable[[str], None]
) -> dict[str, tuple[Path, str]]:
    """Download and verify the given components into workdir; return name -> (staged binary, its URL)."""
    os_, arch = host_platform()
    bases = base_urls()
    by_url: dict[str, list[Component]] = {}
    checksum_of: dict[str, str] = {}
    for comp in comps:
        url, checksum_url = release_urls(comp, bases, os_, arch)
        by_url.setdefault(url, []).append(comp)
        checksum_of[url] = checksum_url

    staged: dict[str, tuple[Path, str]] = {}
    for n, (url, group) in enumerate(by_url.items()):
        first = group[0]
        names = ", ".join(c.name for c in group)
        start = time.monotonic()
        progress(f"downloading {names} {first.version} from {url}")
        want = expected_digest(first, names, url, checksum_of[url])
        fetched = workdir / f"download-{n}-{url.rsplit('/', 1)[-1]}"
        got = fetch_file(url, fetched, f"downloading {names} {first.version} failed")
        if got != want:
            fetched.unlink(missing_ok=True)
            raise ToolboxError(
                f"{names} {first.version}: sha256 mismatch for {url}: expected {want}, got {got}; nothing installed",
                hint="the download is corrupt or was tampered with; try again, use another mirror, "
                     "or build from Go modules: `labctl toolbox install --method build`",
            )
        for comp in group:
            target = workdir / comp.name
            if comp.release is not None and comp.release.member:
                extract(fetched, comp.release.member, target)
            else:
                shutil.copyfile(fetched, target)
            target.chmod(0o755)
            staged[comp.name] = (target, url)
        fetched.unlink(missing_ok=True)
        progress(f"  downloaded and verified {names} (sha256 {want[:12]}…) in {elapsed(time.monotonic() - start)}")
    return staged
