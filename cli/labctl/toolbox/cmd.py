"""`labctl toolbox`: install, list and prune the pinned binaries."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import click

from labctl.errors import ToolboxError
from labctl.toolbox import store
from labctl.toolbox.components import default_group
from labctl.toolbox.install import METHODS


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def toolbox() -> None:
    """The pinned Kubernetes binaries labctl runs (kube-apiserver, kubelet, etcd, kwok, helm, containerd, ...).

    They live in labctl's cache ($LABCTL_CACHE_DIR, else ~/.cache/labctl), one directory per version, and are
    built from their Go modules when Go is installed, else downloaded and checked against the published sha256.
    """


@toolbox.command("install")
@click.argument("names", nargs=-1, metavar="[NAME|GROUP]...")
@click.option("--method", type=click.Choice(METHODS), default="auto", show_default=True,
              envvar="LABCTL_TOOLBOX_METHOD",
              help="auto: build from Go modules where Go and its module proxy answer, else download; build or "
                   "download: only that way [env: LABCTL_TOOLBOX_METHOD].")
@click.option("--verify", is_flag=True,
              help="Re-hash every installed binary against its recorded sha256 (otherwise only those whose size or "
                   "modification time changed are re-hashed) and reinstall any that differ.")
def install_command(names: tuple[str, ...], method: str, verify: bool) -> None:
    """Build or download what is missing; quick when everything is present.

    Without names, installs the group for this machine's providers (local on Linux, sim elsewhere).
    Groups are sim, local, gateway, extras and all; see `labctl toolbox list` for every binary.

    Downloads come from dl.k8s.io, github.com and get.helm.sh, or from a mirror laid out by host
    (LABCTL_TOOLBOX_MIRROR=URL serves URL/dl.k8s.io/..., URL/github.com/...), or per source from
    LABCTL_K8S_URL, LABCTL_GITHUB_URL, LABCTL_GITHUB_API_URL and LABCTL_HELM_URL.
    """
    from labctl.toolbox import install

    install(names or None, method=method, progress=click.echo, verify=verify)


@toolbox.command("list")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True,
              help="Output format.")
def list_command(output: str) -> None:
    """Every pinned binary: version, whether it is installed (built or downloaded), size and groups."""
    rows = store.installed()
    if output == "json":
        click.echo(json.dumps([{**r, "path": str(r["path"])} for r in rows], indent=2))
        return
    click.echo(f"{'NAME':<24} {'VERSION':<9} {'STATUS':<11} {'SIZE':>9}  GROUPS")
    for r in rows:
        status = r["how"] if r["present"] else "missing"
        size = store.human_size(r["size"]) if r["size"] else "-"
        click.echo(f"{r['name']:<24} {r['version']:<9} {status:<11} {size:>9}  {','.join(r['groups']) or '-'}")
    missing = [r["name"] for r in rows if not r["present"] and default_group() in r["groups"]]
    if missing:
        click.echo(f"\n{len(missing)} of the {default_group()} group missing: labctl toolbox install")
    click.echo(f"\ncache: {store.root()}")


def _go_caches() -> list[tuple[str, str, str]]:
    """(label, path, `go clean` flag) of the Go caches that exist on this machine."""
    from labctl.toolbox import gobuild

    env = gobuild.go_env("GOCACHE", "GOMODCACHE")
    found = []
    for label, var, flag in (("Go build cache", "GOCACHE", "-cache"), ("Go module cache", "GOMODCACHE", "-modcache")):
        path = env.get(var, "")
        if path and path != "off" and os.path.isdir(path):
            found.append((label, path, flag))
    return found


@toolbox.command()
@click.option("--yes", "-y", is_flag=True,
              help="Remove versions that are no longer pinned without asking (the Go caches stay unless "
                   "--go-caches is given).")
@click.option("--go-caches/--keep-go-caches", default=None,
              help="Also remove the Go build and module caches that the builds filled (several GB; they are shared "
                   "with any other Go work on this machine), or keep them without asking.")
def prune(yes: bool, go_caches: bool | None) -> None:
    """Remove binary versions that are no longer pinned, and offer to remove the Go caches (sizes shown)."""
    stale = store.unpinned()
    if stale:
        sizes = {p: store.dir_size(p) if p.is_dir() else p.stat().st_size for p in stale}
        for p in stale:
            click.echo(f"  {store.human_size(sizes[p]):>9}  {p}")
        total = store.human_size(sum(sizes.values()))
        if yes or click.confirm(f"Remove these {len(stale)} entries ({total})?", default=True):
            with store.locked():
                for p in stale:
                    if p.is_dir():
                        shutil.rmtree(p, ignore_errors=True)
                    else:
                        p.unlink(missing_ok=True)
            click.echo(f"removed {total}")
    else:
        click.echo("nothing unpinned in the toolbox cache")

    if go_caches is False:
        return
    go = shutil.which("go")
    for label, path, flag in _go_caches():
        size = store.human_size(store.dir_size(Path(path)))
        if go_caches is None and yes:
            click.echo(f"kept the {label} ({size} in {path}); `labctl toolbox prune --go-caches` removes it")
            continue
        if go_caches or click.confirm(f"Also remove the {label} ({size} in {path})? The next build starts cold",
                                      default=False):
            done = subprocess.run([go or "go", "clean", flag], capture_output=True, text=True)
            if done.returncode != 0:
                raise ToolboxError(f"`go clean {flag}` failed: {done.stderr.strip()}",
                                   hint=f"remove {path} by hand")
            click.echo(f"removed the {label} ({size})")
