"""`labctl image`: build container images into the current cluster, with no registry in between."""

from __future__ import annotations

from pathlib import Path

import click

from labctl.errors import UsageError


def _progress(msg: str) -> None:
    click.echo(click.style("• ", fg="cyan") + msg, err=True)


def _build_args(pairs: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--build-arg {pair!r} is not KEY=VALUE")
        out[key] = value
    return out


@click.group("image", context_settings={"help_option_names": ["-h", "--help"]})
def image() -> None:
    """Build container images for the cluster's pods (Docker on kind, BuildKit on local; no registry)."""


@image.command("build")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("-t", "--tag", metavar="NAME:TAG",
              help="Image name and tag [default: labctl.local/<folder name>:dev].")
@click.option("-f", "--file", "dockerfile", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              metavar="PATH", help="The Dockerfile [default: DIRECTORY/Dockerfile].")
@click.option("--build-arg", "build_args", multiple=True, metavar="KEY=VALUE",
              help="A build argument (repeatable), as `docker build --build-arg`.")
@click.option("--no-cache", is_flag=True, help="Run every step again instead of reusing cached layers.")
@click.option("-q", "--quiet", is_flag=True, help="Print only the image name; the build log goes to its log file.")
@click.option("--context", envvar="LABCTL_CONTEXT", metavar="NAME",
              help="Kube context to act on; labctl only touches contexts it created unless you name one here "
                   "[env: LABCTL_CONTEXT].")
def build(directory: Path, tag: str | None, dockerfile: Path | None, build_args: tuple[str, ...], no_cache: bool,
          quiet: bool, context: str | None) -> None:
    """Build the Dockerfile in DIRECTORY into the current cluster, like `docker build DIRECTORY -t TAG`.

    \b
    kind:  docker build, then kind load docker-image into the cluster's node
    local: BuildKit into the node's containerd; a Dockerfile that declares `ARG BASE_IMAGE`
           gets labctl's Python base image (built from Debian packages, no registry)
    sim:   pods never run, so no image is needed
    Pods use the image by its name with imagePullPolicy IfNotPresent (or Never).
    """
    from labctl import session, state
    from labctl.images.build import builder_for, check_tag
    from labctl.images.ensure import forget

    args = _build_args(build_args)
    # Not :latest by default: for that tag Kubernetes defaults to imagePullPolicy Always, and no registry has it.
    tag = check_tag(tag or f"labctl.local/{directory.resolve().name.lower()}:dev")
    target = session.resolve(state.load(), context)
    builder = builder_for(target.provider)
    if builder is None:
        click.echo(f"Pods never run on {target.provider}: no image is needed. The lab's checks read the "
                   f"declared state (the image name in your manifests).")
        return
    echo = None if quiet else (lambda line: click.echo(line, err=True))
    result = builder.build(directory, tag, dockerfile=dockerfile, build_args=args, no_cache=no_cache, echo=echo,
                           progress=(lambda _: None) if quiet else _progress)
    forget(builder.provider, tag)
    if quiet:
        click.echo(tag)
        return
    click.echo(f"{result.summary[0].upper()}{result.summary[1:]} on {target.provider} (context {target.context}).")
    click.echo(f"Use it in a pod as `image: {tag}` with `imagePullPolicy: IfNotPresent`.")
    if tag.endswith(":latest"):
        click.echo("Note: for a :latest tag Kubernetes pulls by default (imagePullPolicy Always) and no registry "
                   "has this image; pin a version tag or set imagePullPolicy.")


@image.command("base")
@click.option("--rebuild", is_flag=True, help="Build it again even when a cached one exists.")
def base_cmd(rebuild: bool) -> None:
    """Build (once) the Python base image that local builds start FROM, and say where it is cached.

    It is made by debootstrap from this machine's apt mirror (root needed) and named after the Python it
    holds, for example labctl.local/python:3.11.
    """
    from labctl.images import base

    img = base.python_base(_progress, rebuild=rebuild)
    how = f"built in {img.seconds:.0f} s" if img.built else "cached"
    click.echo(f"{img.tag}  {img.size / 2**20:.0f} MB  {how}  {img.tar}")

