"""Base images from no registry: a Debian root filesystem made by debootstrap from this machine's apt mirror.

The Python base image is `labctl.local/python:<X.Y>`, named after the Python it really holds (3.11 on
bookworm). It behaves like the official `python:X.Y-slim` for an ordinary Dockerfile: `python`, `python3` and
`pip` are on PATH, `pip install` works system-wide, and the CA certificates are installed. It never carries an
official image's name: it is not that image.

Each image is built once per machine and kept as a docker-archive tar under `<cache_dir>/images/`, in a folder
keyed by what decides its content (suite, packages, architecture, how it is tidied), so a warm machine reuses it.
Building needs root and `debootstrap`; the mirror is the one the machine's own apt sources name.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from labctl import paths
from labctl.errors import EnvironmentProblem
from labctl.images import archive
from labctl.providers.base import Progress, quiet

SUITE = "bookworm"
PYTHON_REPOSITORY = "labctl.local/python"
# python3-pip and python-is-python3 make Dockerfiles written for python:X.Y-slim (`pip install`, `python`)
# work unchanged; ca-certificates lets the service itself speak TLS.
PYTHON_PACKAGES = ("python3", "python3-pip", "python-is-python3", "ca-certificates")
# Raise when the way a root filesystem is tidied or packed changes: cached tars made the old way are then rebuilt.
RECIPE = 1
MIRROR_ENV = "LABCTL_APT_MIRROR"
_SCHEMES = ("http://", "https://", "file:/")


# -- apt sources and the mirror ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class AptSource:
    """One apt source entry (a one-line `deb` line or a deb822 paragraph)."""

    types: tuple[str, ...]
    uris: tuple[str, ...]
    suites: tuple[str, ...]
    components: tuple[str, ...]
    signed_by: str | None = None
    enabled: bool = True


@dataclass(frozen=True)
class Mirror:
    """Where debootstrap fetches from and what it asks for."""

    uri: str
    suite: str
    components: tuple[str, ...] = ("main",)
    keyring: str | None = None


def parse_one_line(text: str) -> list[AptSource]:
    """Entries of a `sources.list` file: `deb [option=value ...] URI SUITE COMPONENT...`."""
    out = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        options: dict[str, str] = {}
        m = re.match(r"^(\S+)\s+\[([^\]]*)\]\s*(.*)$", line)
        if m:
            kind, opts, rest = m.groups()
            for opt in opts.split():
                key, _, value = opt.partition("=")
                options[key.lower()] = value
        else:
            kind, _, rest = line.partition(" ")
        # A cdrom URI carries the disc's name in brackets, spaces included.
        uri = re.match(r"(\S*\[[^\]]*\]\S*|\S+)\s*(.*)$", rest)
        words = [uri.group(1), *uri.group(2).split()] if uri else []
        if kind not in ("deb", "deb-src") or len(words) < 2:
            continue
        out.append(AptSource((kind,), (words[0],), (words[1],), tuple(words[2:]), options.get("signed-by")))
    return out


def parse_deb822(text: str) -> list[AptSource]:
    """Entries of a deb822 `.sources` file (paragraphs of `Field: value`, continuation lines indented)."""
    out = []
    for paragraph in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        current = None
        for raw in paragraph.splitlines():
            if raw.startswith("#"):
                continue
            if raw[:1] in (" ", "\t") and current:
                fields[current] += "\n" + raw.strip()
                continue
            key, sep, value = raw.partition(":")
            if not sep:
                continue
            current = key.strip().lower()
            fields[current] = value.strip()
        if not fields.get("types") or not fields.get("uris"):
            continue
        signed_by = fields.get("signed-by") or None
        if signed_by and "\n" in signed_by:  # an inline key block, not a keyring file
            signed_by = None
        out.append(AptSource(
            tuple(fields["types"].split()), tuple(fields["uris"].split()), tuple(fields.get("suites", "").split()),
            tuple(fields.get("components", "").split()), signed_by,
            fields.get("enabled", "yes").lower() not in ("no", "false", "0"),
        ))
    return out


def read_sources(etc_apt: Path = Path("/etc/apt")) -> list[AptSource]:
    """Every apt source of this machine, in the order apt reads them (files apt ignores are ignored)."""
    found: list[AptSource] = []
    main = etc_apt / "sources.list"
    with contextlib.suppress(OSError):
        found += parse_one_line(main.read_text())
    parts = etc_apt / "sources.list.d"
    for f in sorted(parts.glob("*")) if parts.is_dir() else []:
        try:
            if f.suffix == ".list":
                found += parse_one_line(f.read_text())
            elif f.suffix == ".sources":
                found += parse_deb822(f.read_text())
        except OSError:
            continue
    return found


def os_family(os_release: str) -> str:
    """'ubuntu', 'debian' or '' from the text of /etc/os-release (ID, then ID_LIKE)."""
    values = {}
    for line in os_release.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key.strip()] = value.strip().strip('"').lower()
    ids = [values.get("ID", "")] + values.get("ID_LIKE", "").split()
    for family in ids:
        if family in ("ubuntu", "debian"):
            return family
    return ""


def choose_mirror(sources: Sequence[AptSource], family: str, known_suites: set[str] | frozenset[str], *,
                  debian_suite: str = SUITE) -> Mirror | None:
    """The archive mirror among `sources` that debootstrap can use, or None.

    Only enabled binary (`deb`) entries of a release suite that debootstrap knows (so third-party
    repositories, -updates and -security are passed over) with the `main` component count. On Debian the
    mirror serves every release, so the pinned `debian_suite` is used; on Ubuntu the machine's own release.
    """
    if family not in ("debian", "ubuntu"):
        return None
    for src in sources:
        if not src.enabled or "deb" not in src.types or "main" not in src.components:
            continue
        for uri in src.uris:
            if not uri.startswith(_SCHEMES):
                continue
            for suite in src.suites:
                if suite not in known_suites:
                    continue
                keyring = src.signed_by if src.signed_by and src.signed_by.startswith("/") else None
                if family == "ubuntu":
                    return Mirror(uri, suite, ("main", "universe"), keyring)
                return Mirror(uri, debian_suite, ("main",), keyring)
    return None


def debootstrap_suites(scripts: Path = Path("/usr/share/debootstrap/scripts")) -> frozenset[str]:
    """The suites this machine's debootstrap has a script for."""
    try:
        return frozenset(p.name for p in scripts.iterdir())
    except OSError:
        return frozenset()


def machine_mirror() -> Mirror:
    """The mirror this machine's apt sources name ($LABCTL_APT_MIRROR, a Debian mirror URL, wins)."""
    override = os.environ.get(MIRROR_ENV)
    if override:
        return Mirror(override.strip(), SUITE)
    try:
        family = os_family(Path("/etc/os-release").read_text())
    except OSError:
        family = ""
    mirror = choose_mirror(read_sources(), family, debootstrap_suites())
    if mirror is None:
        where = "this is not a Debian or Ubuntu machine" if not family else \
            "no Debian or Ubuntu archive with `main` is named in /etc/apt/sources.list{,.d}"
        raise EnvironmentProblem(
            f"cannot find an apt mirror to build base images from: {where}",
            hint=f"set {MIRROR_ENV} to a Debian mirror URL (for example http://deb.debian.org/debian)",
        )
    return mirror


# -- what is in a root filesystem -------------------------------------------------------------------------------

def installed_packages(dpkg_status: str) -> dict[str, str]:
    """Package -> version of every installed package in the text of a dpkg `status` file."""
    out = {}
    for paragraph in re.split(r"\n\s*\n", dpkg_status):
        fields = {}
        for line in paragraph.splitlines():
            key, sep, value = line.partition(":")
            if sep and not line[:1].isspace():
                fields[key.strip()] = value.strip()
        if "Package" in fields and "Version" in fields and fields.get("Status", "").endswith(" installed"):
            out[fields["Package"]] = fields["Version"]
    return out


def tag_version(debian_version: str, parts: int = 2) -> str:
    """The upstream version a tag names: '3.11.2-1+b1' -> '3.11', '5:7.0.15-1~deb12u1' -> '7.0', '15+248' -> '15'."""
    upstream = re.sub(r"^\d+:", "", debian_version)
    m = re.match(r"\d+(?:\.\d+)*", upstream)
    if not m:
        raise ValueError(f"no version number in {debian_version!r}")
    return ".".join(m.group(0).split(".")[:parts])


def cache_key(*, suite: str, packages: Sequence[str], architecture: str, repository: str,
              config: archive.ImageConfig) -> str:
    """What decides a base image's content, hashed: the same key means the cached tar can be reused."""
    spec = {
        "recipe": RECIPE,
        "suite": suite,
        "packages": sorted(set(packages)),
        "architecture": architecture,
        "repository": repository,
        "config": config.to_json(),
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


# -- building ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BaseImage:
    """A base image tar in the cache: its tag, where it is, and whether this call had to build it."""

    tag: str
    tar: Path
    image_id: str
    size: int
    built: bool
    seconds: float
    meta: dict


def cache_root() -> Path:
    """<cache_dir>/images."""
    return paths.cache_dir() / "images"


def mounts_under(mountinfo: str, path: str) -> list[str]:
    """Mount points at or below `path` in the text of /proc/self/mountinfo, deepest first."""
    base = path.rstrip("/")
    found = []
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) < 5:
            continue
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
        if point == base or point.startswith(base + "/"):
            found.append(point)
    return sorted(found, key=lambda p: p.count("/"), reverse=True)


def remove_tree(path: Path) -> None:
    """Delete a debootstrap target, unmounting first whatever an interrupted debootstrap left mounted in it."""
    if not path.exists():
        return
    with contextlib.suppress(OSError):
        for point in mounts_under(Path("/proc/self/mountinfo").read_text(), str(path.resolve())):
            subprocess.run(["umount", "--lazy", point], capture_output=True, check=False)
        left = mounts_under(Path("/proc/self/mountinfo").read_text(), str(path.resolve()))
        if left:
            raise EnvironmentProblem(f"{left[0]} is still mounted inside {path}; not deleting it",
                                     hint=f"unmount it (umount {left[0]}) and delete {path}")
    shutil.rmtree(path, ignore_errors=True)


def tidy_rootfs(root: Path) -> None:
    """Remove what an image should not carry: apt's caches and lists, logs, the build host's name and resolver,
    and Debian's marker that refuses system-wide `pip install` (an image is its own environment)."""
    globs = [
        "var/cache/apt/*.bin", "var/cache/apt/archives/*.deb", "var/cache/apt/archives/partial/*",
        "var/lib/apt/lists/*", "var/log/**/*", "tmp/*", "var/tmp/*", "var/cache/debconf/*-old",
        "etc/resolv.conf", "etc/hostname", "usr/lib/python3*/EXTERNALLY-MANAGED",
    ]
    for pattern in globs:
        for p in sorted(root.glob(pattern), reverse=True):
            if p.is_symlink() or p.is_file():
                p.unlink()
            elif p.is_dir() and not pattern.startswith(("var/log", "var/lib/apt/lists")):
                shutil.rmtree(p)


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    import fcntl

    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _read_cached(folder: Path) -> BaseImage | None:
    tar = folder / "image.tar"
    try:
        meta = json.loads((folder / "meta.json").read_text())
        size = tar.stat().st_size
        if size != meta["size"]:  # an interrupted copy or a damaged file: build it again
            return None
        return BaseImage(meta["tag"], tar, meta["image_id"], size, False, 0.0, meta)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _debootstrap(target: Path, mirror: Mirror, packages: Sequence[str], log: Path, debs: Path) -> None:
    exe = shutil.which("debootstrap")
    if exe is None:
        raise EnvironmentProblem("building a base image needs debootstrap, which is not installed",
                                 hint="apt-get install debootstrap")
    if os.geteuid() != 0:
        raise EnvironmentProblem("building a base image needs root (debootstrap)",
                                 hint="run it as root, for example with sudo")
    debs.mkdir(parents=True, exist_ok=True)
    argv = [exe, "--variant=minbase", f"--include={','.join(packages)}",
            f"--components={','.join(mirror.components)}", f"--arch={archive.host_architecture()}",
            f"--cache-dir={debs}"]
    if mirror.keyring and Path(mirror.keyring).is_file():
        argv.append(f"--keyring={mirror.keyring}")
    argv += [mirror.suite, str(target), mirror.uri]
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        out.write("$ " + " ".join(argv) + "\n")
        out.flush()
        done = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, check=False)
    if done.returncode != 0:
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
        last = lines[-1] if lines else f"exit code {done.returncode}"
        raise EnvironmentProblem(f"debootstrap {mirror.suite} from {mirror.uri} failed: {last}",
                                 hint=f"the full log is {log}")


def debian_image(repository: str, packages: Sequence[str], *, version_of: str,
                 config: archive.ImageConfig | None = None, progress: Progress = quiet, rebuild: bool = False,
                 root: Path | None = None, mirror: Mirror | None = None) -> BaseImage:
    """A Debian image with `packages`, tagged `<repository>:<version of package version_of>`, built once.

    For example debian_image("labctl.local/postgresql", ["postgresql"], version_of="postgresql") gives
    labctl.local/postgresql:15 on bookworm. The tar is reused from the cache unless `rebuild`.
    """
    config = config or archive.ImageConfig()
    root = root or cache_root()
    arch = archive.host_architecture()
    # The suite is part of the key, so the apt sources are read even when the cache is warm (a millisecond).
    mirror = mirror or machine_mirror()
    suite = mirror.suite
    key = cache_key(suite=suite, packages=packages, architecture=arch, repository=repository, config=config)
    folder = root / f"{repository.rsplit('/', 1)[-1]}-{suite}-{key}"
    if not rebuild:
        cached = _read_cached(folder)
        if cached:
            return cached
    with _locked(root):
        if not rebuild:
            cached = _read_cached(folder)  # built by another labctl while this one waited for the lock
            if cached:
                return cached
        progress(f"building base image {repository} from Debian {suite} packages ({', '.join(packages)}); "
                 f"a minute or a few, once per machine")
        started = time.monotonic()
        staging = root / ".staging"
        staging.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(dir=staging, prefix=f"{folder.name}."))
        try:
            rootfs = work / "rootfs"
            _debootstrap(rootfs, mirror, packages, paths.state_dir() / "logs" / f"debootstrap-{folder.name}.log",
                         root / "debs")
            status = (rootfs / "var/lib/dpkg/status").read_text(errors="replace")
            installed = installed_packages(status)
            if version_of not in installed:
                raise EnvironmentProblem(f"debootstrap finished but {version_of} is not installed in the image",
                                         hint=f"check the package names: {', '.join(packages)}")
            tag = f"{repository}:{tag_version(installed[version_of])}"
            tidy_rootfs(rootfs)
            layer = archive.layer_from_dir(work / "layer.tar", rootfs)
            remove_tree(rootfs)
            out = work / "out"
            out.mkdir()
            info = archive.write_archive(out / "image.tar", tag, [layer], config, architecture=arch,
                                         created=time.time())
            (work / "layer.tar").unlink()
            seconds = time.monotonic() - started
            meta = {
                "tag": tag, "image_id": info.image_id, "size": info.size, "suite": suite, "mirror": mirror.uri,
                "packages": sorted(set(packages)), "version": installed[version_of],
                "installed_packages": len(installed), "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "build_seconds": round(seconds, 1), "key": key,
            }
            (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
            if folder.exists():
                remove_tree(folder)
            os.replace(out, folder)
        finally:
            remove_tree(work)
        progress(f"built {tag} ({info.size / 2**20:.0f} MB) in {seconds:.0f} s; cached in {folder}")
        return BaseImage(tag, folder / "image.tar", info.image_id, info.size, True, seconds, meta)


def python_config() -> archive.ImageConfig:
    """The defaults of the Python base image, as the official python images set them."""
    return archive.ImageConfig(env={"PATH": archive.DEFAULT_PATH, "LANG": "C.UTF-8"}, cmd=["python3"])


def python_base(progress: Progress = quiet, *, rebuild: bool = False, root: Path | None = None,
                mirror: Mirror | None = None) -> BaseImage:
    """The Python base image (`labctl.local/python:3.11` on bookworm): from the cache, or built once."""
    return debian_image(PYTHON_REPOSITORY, PYTHON_PACKAGES, version_of="python3", config=python_config(),
                        progress=progress, rebuild=rebuild, root=root, mirror=mirror)
