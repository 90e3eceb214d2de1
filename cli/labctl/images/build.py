"""Build an ordinary Dockerfile into the current cluster's image store.

- local: BuildKit (`buildctl`) against the buildkitd that runs next to the node's containerd with its containerd
  worker; the result lands in containerd's `k8s.io` namespace, where the kubelet finds it. There is no
  registry: Dockerfiles take their base as a build argument (`ARG BASE_IMAGE=python:3.11-slim`, then
  `FROM ${BASE_IMAGE}`), which labctl sets to its own Python base image built from Debian packages.
- kind: `docker build`, then `kind load docker-image` into the cluster's node; bases come from Docker Hub.

pip in a build: the host's CA bundle is offered to every build as the BuildKit secret `cacert`. A RUN step
that needs TLS mounts it and points pip at it; without the secret (a plain `docker build`) the same line
falls back to the image's own certificates:

    RUN --mount=type=secret,id=cacert \\
        if [ -f /run/secrets/cacert ]; then export PIP_CERT=/run/secrets/cacert; fi; \\
        pip install --no-cache-dir -r requirements.txt

A secret is mounted for that one step only: it is neither in a layer nor part of the cache key.
"""

from __future__ import annotations

import abc
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

from labctl.errors import EnvironmentProblem, LabError, ProviderError, UsageError
from labctl.providers.base import Progress, quiet

CACERT_SECRET = "cacert"
BASE_ARG = "BASE_IMAGE"
KIND_CLUSTER = "labctl"
# The pattern lab.schema.json applies to image names: a lower-case repository and a tag.
REF_PATTERN = re.compile(
    r"^[a-z0-9]+([._-][a-z0-9]+)*(:[0-9]+)?(/[a-z0-9]+([._-][a-z0-9]+)*)*:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")

Echo = Callable[[str], None]
# How buildctl and docker say that their daemon is not there (as opposed to a step that failed).
_UNREACHABLE = re.compile(r"dial unix|connection refused|Cannot connect to the Docker daemon|"
                          r"Is the docker daemon running", re.IGNORECASE)


class BuildFailed(LabError):
    """A Dockerfile did not build (its own error: a bad step, a missing file, a failing command)."""


# -- pure helpers -----------------------------------------------------------------------------------------------

def check_tag(tag: str) -> str:
    """`tag` when it is an image name with a tag (`labctl.local/hello:1.0`); UsageError otherwise."""
    if not REF_PATTERN.match(tag):
        raise UsageError(f"{tag!r} is not an image name with a tag",
                         hint="lower-case name and a tag, for example labctl.local/hello:1.1")
    return tag


def normalize_ref(ref: str) -> str:
    """An image reference as containerd stores it: `hello:1` -> `docker.io/library/hello:1`."""
    name, digest = (ref.split("@", 1) + [""])[:2]
    last = name.rsplit("/", 1)[-1]
    if ":" not in last and not digest:
        name += ":latest"
    first = name.split("/", 1)[0]
    if "/" not in name or not ("." in first or ":" in first or first == "localhost"):
        name = "docker.io/" + (name if "/" in name else "library/" + name)
    return f"{name}@{digest}" if digest else name


def _logical_lines(text: str) -> list[str]:
    lines, current = [], ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    if current:
        lines.append(current)
    return lines


def _substitute(value: str, args: Mapping[str, str]) -> str:
    def one(m: re.Match) -> str:
        name = m.group(1) or m.group(3)
        default = m.group(2)
        got = args.get(name, "")
        return got if got or default is None else default

    return re.sub(r"\$\{(\w+)(?::-([^}]*))?\}|\$(\w+)", one, value)


@dataclass(frozen=True)
class DockerfileBases:
    """What a Dockerfile builds FROM: global ARG defaults, and each external base image (stages excluded)."""

    global_args: dict[str, str]
    bases: list[str] = field(default_factory=list)


def dockerfile_bases(text: str, build_args: Mapping[str, str] | None = None) -> DockerfileBases:
    """The global ARGs (before the first FROM) and the images the FROM lines name, with build args applied."""
    global_args: dict[str, str] = {}
    stages: set[str] = set()
    bases: list[str] = []
    seen_from = False
    for line in _logical_lines(text):
        word, _, rest = line.partition(" ")
        word = word.upper()
        if word == "ARG" and not seen_from:
            for item in rest.split():
                key, _, value = item.partition("=")
                global_args[key] = value.strip('"\'')
        elif word == "FROM":
            seen_from = True
            parts = [p for p in rest.split() if not p.startswith("--")]
            if not parts:
                continue
            values = {**global_args, **(build_args or {})}
            image = _substitute(parts[0], values)
            if len(parts) >= 3 and parts[1].lower() == "as":
                stages.add(parts[2].lower())
            if image.lower() not in stages and image != "scratch" and image not in bases:
                bases.append(image)
    return DockerfileBases(global_args, bases)


_STEP = re.compile(r"^#(\d+) (\[(?:[\w.-]+ )?\d+/\d+\] .*)$")
_CACHED = re.compile(r"^#(\d+) CACHED$")
_FROM = re.compile(r"^\[[^\]]*\] FROM ", re.IGNORECASE)


@dataclass(frozen=True)
class Step:
    name: str
    cached: bool


def build_steps(plain_log: str) -> list[Step]:
    """The steps of a `--progress=plain` log (BuildKit's and Docker's) that make layers, each cached or run.

    FROM is left out: it resolves a base image and makes no layer of its own, and BuildKit never calls it CACHED.
    """
    names: dict[str, str] = {}
    cached: set[str] = set()
    for line in plain_log.splitlines():
        m = _STEP.match(line.strip())
        if m:
            if not _FROM.match(m.group(2)):
                names.setdefault(m.group(1), m.group(2))
            continue
        m = _CACHED.match(line.strip())
        if m:
            cached.add(m.group(1))
    return [Step(name, vid in cached) for vid, name in sorted(names.items(), key=lambda kv: int(kv[0]))]


def build_error(plain_log: str) -> str:
    """The line that says why a build failed (the last `ERROR`/`error:` line), or ''."""
    for line in reversed(plain_log.splitlines()):
        text = line.strip()
        m = re.match(r"^(?:#\d+ )?(?:ERROR:?|error:)\s*(.*)$", text)
        if m and m.group(1):
            return m.group(1)
    return ""


def host_ca_bundle() -> Path | None:
    """The CA bundle this machine trusts (one file), offered to builds as the `cacert` secret."""
    import ssl

    candidates = [os.environ.get(v) for v in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "PIP_CERT")]
    candidates += [ssl.get_default_verify_paths().cafile, "/etc/ssl/certs/ca-certificates.crt",
                   "/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/cert.pem"]
    for c in candidates:
        if c and Path(c).is_file():
            return Path(c)
    return None


def buildctl_argv(buildctl: Path | str, address: str, context: Path, dockerfile: Path, tag: str, *,
                  build_args: Mapping[str, str], cacert: Path | None, no_cache: bool = False) -> list[str]:
    """The `buildctl build` command that builds `dockerfile` with `context` into containerd as `tag`."""
    argv = [str(buildctl), "--addr", address, "build", "--progress=plain", "--frontend", "dockerfile.v0",
            "--local", f"context={context}", "--local", f"dockerfile={dockerfile.parent}",
            "--opt", f"filename={dockerfile.name}", "--opt", "image-resolve-mode=local"]
    for key, value in build_args.items():
        argv += ["--opt", f"build-arg:{key}={value}"]
    if cacert:
        argv += ["--secret", f"id={CACERT_SECRET},src={cacert}"]
    if no_cache:
        argv.append("--no-cache")
    # unpack: the kubelet starts containers from unpacked snapshots; unpacking now saves it at pod start.
    argv += ["--output", f"type=image,name={tag},unpack=true"]
    return argv


def docker_build_argv(docker: Path | str, context: Path, dockerfile: Path, tag: str, *,
                      build_args: Mapping[str, str], cacert: Path | None, no_cache: bool = False) -> list[str]:
    """The `docker build` command for the same build (run with DOCKER_BUILDKIT=1)."""
    argv = [str(docker), "build", "--progress=plain", "-t", tag, "-f", str(dockerfile)]
    for key, value in build_args.items():
        argv += ["--build-arg", f"{key}={value}"]
    if cacert:
        argv += ["--secret", f"id={CACERT_SECRET},src={cacert}"]
    if no_cache:
        argv.append("--no-cache")
    argv.append(str(context))
    return argv


def _socket_path(address: str | Path) -> str:
    return str(address).removeprefix("unix://")


def _grpc_address(address: str | Path) -> str:
    address = str(address)
    return address if "://" in address else f"unix://{address}"


# -- running ----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BuildResult:
    """A finished build: the tag, how long it took, its steps (cached or run) and the full log."""

    tag: str
    seconds: float
    steps: list[Step]
    log: Path

    @property
    def summary(self) -> str:
        cached = sum(1 for s in self.steps if s.cached)
        return f"built {self.tag} in {self.seconds:.1f} s ({len(self.steps)} steps, {cached} from cache)"


def log_path(tag: str) -> Path:
    """Where the log of the last build of `tag` is kept."""
    from labctl import paths

    return paths.state_dir() / "logs" / "images" / (re.sub(r"[^A-Za-z0-9_.-]+", "_", tag) + ".log")


def _run_logged(argv: list[str], log: Path, echo: Echo | None, env: Mapping[str, str] | None = None) -> int:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        out.write("$ " + " ".join(argv) + "\n")
        try:
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    text=True, errors="replace", env={**os.environ, **(env or {})})
        except OSError as e:
            raise EnvironmentProblem(f"cannot run {argv[0]}: {e.strerror}") from e
        assert proc.stdout is not None
        with proc:
            for line in proc.stdout:
                out.write(line)
                if echo:
                    echo(line.rstrip("\n"))
        return proc.returncode


def _run(argv: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise EnvironmentProblem(f"{Path(argv[0]).name} failed: {e}") from e


class Builder(abc.ABC):
    """Builds Dockerfiles into one cluster's image store and says what that store holds."""

    provider = ""

    @abc.abstractmethod
    def has_image(self, ref: str) -> bool:
        """True when the cluster's image store holds `ref`."""

    @abc.abstractmethod
    def import_archive(self, tar: Path) -> None:
        """Load a docker-archive tar into the cluster's image store."""

    @abc.abstractmethod
    def _build(self, context: Path, dockerfile: Path, tag: str, build_args: dict[str, str], no_cache: bool,
               log: Path, echo: Echo | None) -> int:
        """Run the build; the exit code."""

    def publish(self, tag: str) -> None:
        """Make an image the builder holds visible to the cluster's nodes (already so where they share a store)."""

    def base_args(self, dockerfile_text: str, given: Mapping[str, str], progress: Progress) -> dict[str, str]:
        """Build arguments this provider adds (on local: the base image); none by default."""
        return {}

    def build(self, context: Path, tag: str, *, dockerfile: Path | None = None,
              build_args: Mapping[str, str] | None = None, no_cache: bool = False, echo: Echo | None = None,
              progress: Progress = quiet) -> BuildResult:
        """Build `dockerfile` (default CONTEXT/Dockerfile) with `context` and store it as `tag`."""
        context = Path(context).resolve()
        dockerfile = Path(dockerfile).resolve() if dockerfile else context / "Dockerfile"
        if not context.is_dir():
            raise UsageError(f"build context {context} is not a folder")
        try:
            text = dockerfile.read_text()
        except OSError as e:
            raise UsageError(f"cannot read the Dockerfile {dockerfile}: {e.strerror}",
                             hint="name another one with --file") from e
        check_tag(tag)
        args = {**self.base_args(text, build_args or {}, progress), **(build_args or {})}
        log = log_path(tag)
        started = time.monotonic()
        code = self._build(context, dockerfile, tag, args, no_cache, log, echo)
        seconds = time.monotonic() - started
        output = log.read_text(errors="replace")
        if code != 0:
            why = build_error(output) or f"exit code {code}"
            if _UNREACHABLE.search(why):
                raise ProviderError(f"cannot reach the {self.provider} cluster's image builder: {why}",
                                    hint="is the cluster up? `labctl status` says; `labctl up` starts it")
            raise BuildFailed(f"building {tag} failed: {why}", hint=f"the full build log is {log}")
        self.publish(tag)
        return BuildResult(tag, seconds, build_steps(output), log)


class BuildKitBuilder(Builder):
    """BuildKit with the containerd worker: images land in the node's containerd, in `namespace`."""

    provider = "local"

    def __init__(self, buildkit_address: str | Path, containerd_address: str | Path, namespace: str = "k8s.io", *,
                 import_tar: Callable[[Path], None] | None = None, base_root: Path | None = None) -> None:
        self.buildkit_address = _grpc_address(buildkit_address)
        self.containerd_address = _socket_path(containerd_address)
        self.namespace = namespace
        self._import_tar = import_tar
        self._base_root = base_root  # where base image tars are cached (default: the labctl cache)

    def _ctr(self) -> Path:
        from labctl.toolbox import binary

        return binary("ctr")

    def images(self) -> set[str]:
        """Every image name in the namespace."""
        done = _run([str(self._ctr()), "-a", self.containerd_address, "-n", self.namespace, "images", "ls", "-q"])
        if done.returncode != 0:
            raise ProviderError(f"cannot list the images in containerd at {self.containerd_address}: "
                                f"{(done.stderr.strip().splitlines() or ['no answer'])[-1]}",
                                hint="is the cluster up? `labctl status` says")
        return set(done.stdout.split())

    def has_image(self, ref: str) -> bool:
        return normalize_ref(ref) in self.images()

    def import_archive(self, tar: Path) -> None:
        if self._import_tar is not None:
            self._import_tar(tar)
            return
        ctr_import(self._ctr(), self.containerd_address, self.namespace, tar)

    def base_args(self, dockerfile_text: str, given: Mapping[str, str], progress: Progress) -> dict[str, str]:
        """Supply BASE_IMAGE (labctl's Python image, imported on first use); refuse bases no registry can give."""
        from labctl.images import base

        python: list[base.BaseImage] = []

        def python_image() -> base.BaseImage:
            if not python:
                python.append(base.python_base(progress, root=self._base_root))
            return python[0]

        present = self.images()  # first: a cluster that is down says so before a base image is built for it
        declared = dockerfile_bases(dockerfile_text)
        args: dict[str, str] = {}
        if BASE_ARG in declared.global_args and BASE_ARG not in given:
            args[BASE_ARG] = python_image().tag
            default = declared.global_args[BASE_ARG]
            progress(f"{BASE_ARG}={args[BASE_ARG]} (Debian's Python; the Dockerfile's default {default} would come "
                     f"from a registry)" if default else f"{BASE_ARG}={args[BASE_ARG]}")
        for ref in dockerfile_bases(dockerfile_text, {**given, **args}).bases:
            if normalize_ref(ref) in present:
                continue
            if ref.startswith(base.PYTHON_REPOSITORY + ":") and python_image().tag == ref:
                progress(f"importing {ref} into the cluster's containerd")
                self.import_archive(python_image().tar)
                continue
            raise UsageError(
                f"the Dockerfile builds FROM {ref}, which is not in the local cluster's image store "
                f"(local pulls from no registry)",
                hint=f"take the base as a build argument: `ARG {BASE_ARG}=python:3.11-slim` then "
                     f"`FROM ${{{BASE_ARG}}}`; labctl sets it to its Debian-built Python image",
            )
        return args

    def _build(self, context: Path, dockerfile: Path, tag: str, build_args: dict[str, str], no_cache: bool,
               log: Path, echo: Echo | None) -> int:
        from labctl.toolbox import binary

        argv = buildctl_argv(binary("buildctl"), self.buildkit_address, context, dockerfile, tag,
                             build_args=build_args, cacert=host_ca_bundle(), no_cache=no_cache)
        return _run_logged(argv, log, echo)


def ctr_import(ctr: Path | str, address: str | Path, namespace: str, tar: Path) -> None:
    """`ctr images import` a docker-archive tar into containerd (unpacked, ready for the kubelet)."""
    done = _run([str(ctr), "-a", _socket_path(address), "-n", namespace, "images", "import", str(tar)],
                timeout=600)
    if done.returncode != 0:
        raise ProviderError(f"importing {tar.name} into containerd failed: "
                            f"{(done.stderr.strip().splitlines() or ['no answer'])[-1]}")


class DockerKindBuilder(Builder):
    """`docker build` on this machine's Docker, then `kind load docker-image` into the kind cluster's node."""

    provider = "kind"

    def __init__(self, cluster: str = KIND_CLUSTER) -> None:
        self.cluster = cluster

    def _docker(self) -> str:
        docker = shutil.which("docker")
        if docker is None:
            raise EnvironmentProblem("the kind provider builds images with Docker, and the docker CLI is missing",
                                     hint="install Docker (Docker Desktop on macOS and Windows)")
        return docker

    def has_image(self, ref: str) -> bool:
        return _run([self._docker(), "image", "inspect", "--format", "{{.Id}}", ref]).returncode == 0

    def import_archive(self, tar: Path) -> None:
        done = _run([self._docker(), "load", "-i", str(tar)], timeout=600)
        if done.returncode != 0:
            raise ProviderError(f"docker load {tar.name} failed: {done.stderr.strip()}")

    def publish(self, tag: str) -> None:
        from labctl.toolbox import binary

        # kind compares image ids node by node and copies nothing when the node already has this one.
        done = _run([str(binary("kind")), "load", "docker-image", tag, "--name", self.cluster], timeout=600)
        if done.returncode != 0:
            raise ProviderError(f"kind load docker-image {tag} failed: "
                                f"{(done.stderr.strip().splitlines() or ['no answer'])[-1]}",
                                hint="is the kind cluster up? `labctl status` says")

    def _build(self, context: Path, dockerfile: Path, tag: str, build_args: dict[str, str], no_cache: bool,
               log: Path, echo: Echo | None) -> int:
        argv = docker_build_argv(self._docker(), context, dockerfile, tag, build_args=build_args,
                                 cacert=host_ca_bundle(), no_cache=no_cache)
        return _run_logged(argv, log, echo, env={"DOCKER_BUILDKIT": "1"})


def builder_for(provider_name: str) -> Builder | None:
    """The builder of a provider's cluster; None where pods never run (sim), so no image is needed."""
    from labctl.providers import get_provider

    if provider_name == "sim":
        return None
    if provider_name == "kind":
        provider = get_provider("kind")
        return DockerKindBuilder(getattr(provider, "cluster_name", KIND_CLUSTER))
    if provider_name == "local":
        provider = get_provider("local")
        try:
            return BuildKitBuilder(provider.buildkit_address, provider.containerd_address,  # type: ignore[attr-defined]
                                   provider.containerd_namespace,  # type: ignore[attr-defined]
                                   import_tar=provider.import_image_tar)  # type: ignore[attr-defined]
        except AttributeError as e:
            raise ProviderError("this local provider does not offer BuildKit", hint="update labctl") from e
    raise EnvironmentProblem(
        "labctl cannot put images into a cluster it did not create (there is no registry between them)",
        hint="build and push the image to a registry that cluster pulls from, or use --provider local or kind",
    )
