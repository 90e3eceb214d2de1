"""What a stopped node leaves on the host unless it is removed, and how `down` removes it.

A node changes the host outside its state directory: the kubelet, kube-proxy, kube-router and the CNI plugins
add iptables and ip6tables chains (with jumps from the built-in chains) and ipsets; the CNI bridge and its veth
pairs are links; pod sandboxes pin network namespaces; the kubelet and containerd mount volumes, overlays and
namespaces under the state directory. `down` removes exactly what appeared while this cluster ran and is named
like what its components create: chains and ipsets are compared with the snapshot the host record took before
the node started, so a chain another program owned before `up` is never touched. With iptables-nft, the
nftables tables that iptables created for the node's rules are deleted too once they are bare.

The parsers (`parse_save`, `removal_script`, `parse_mountinfo`, `mounts_under`) are pure; the rest runs
`iptables-save`/`iptables-restore`, `ipset`, `ip` and `umount`.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

FAMILIES = ("iptables", "ip6tables")
# Chains and ipsets named like these are the kubelet's, kube-proxy's, kube-router's and the CNI plugins'.
OWNED_CHAIN_PREFIXES = ("KUBE-", "CNI-")
OWNED_IPSET_PREFIXES = ("KUBE-SRC-", "KUBE-DST-", "kube-router-", "TMP-", "inet6:KUBE-", "inet6:kube-router-")
_JUMPS = ("-j", "--jump", "-g", "--goto")
_TIMEOUT = 30


@dataclass
class SavedTable:
    """One table of `iptables-save` output: its chains (in order) and its rules as `-A CHAIN ...` lines."""

    name: str
    chains: list[str] = field(default_factory=list)
    rules: list[tuple[str, str]] = field(default_factory=list)


# -- iptables: pure ---------------------------------------------------------------------------------------------

def parse_save(text: str) -> dict[str, SavedTable]:
    """The tables, chains and rules of `iptables-save` output."""
    tables: dict[str, SavedTable] = {}
    current: SavedTable | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("*"):
            current = tables.setdefault(line[1:], SavedTable(line[1:]))
        elif line == "COMMIT":
            current = None
        elif current is None:
            continue
        elif line.startswith(":"):
            current.chains.append(line[1:].split()[0])
        elif line.startswith("-A "):
            current.rules.append((line.split()[1], line))
    return tables


def chain_set(tables: dict[str, SavedTable]) -> set[tuple[str, str]]:
    """Every (table, chain) in parsed `iptables-save` output."""
    return {(t.name, c) for t in tables.values() for c in t.chains}


def rule_target(rule: str) -> str | None:
    """The chain or verdict a rule jumps or goes to (`-j`/`-g`), or None."""
    try:
        tokens = shlex.split(rule)
    except ValueError:
        tokens = rule.split()
    for i, token in enumerate(tokens[:-1]):
        if token in _JUMPS:
            return tokens[i + 1]
    return None


def owned_chain(before: set[tuple[str, str]]) -> Callable[[str, str], bool]:
    """A predicate: is (table, chain) one a node component created since the snapshot `before`?"""
    def owned(table: str, chain: str) -> bool:
        return chain.startswith(OWNED_CHAIN_PREFIXES) and (table, chain) not in before
    return owned


def removal_script(tables: dict[str, SavedTable], remove: Callable[[str, str], bool]) -> str:
    """`iptables-restore --noflush` input deleting the chains `remove` selects and every jump into them.

    Jumps from the other chains go first, then every selected chain is flushed, then deleted, so no
    reference is left when a chain is deleted. Empty when there is nothing to remove.
    """
    out: list[str] = []
    for table in tables.values():
        doomed = [c for c in table.chains if remove(table.name, c)]
        if not doomed:
            continue
        doomed_set = set(doomed)
        out.append(f"*{table.name}")
        for chain, rule in table.rules:
            if chain not in doomed_set and rule_target(rule) in doomed_set:
                out.append("-D" + rule[2:])
        out += [f"-F {c}" for c in doomed]
        out += [f"-X {c}" for c in doomed]
        out.append("COMMIT")
    return "\n".join(out) + "\n" if out else ""


def owned_ipsets(names: Iterable[str], before: Iterable[str]) -> list[str]:
    """The ipsets kube-router created since the snapshot `before`."""
    existed = set(before)
    return [n for n in names if n.startswith(OWNED_IPSET_PREFIXES) and n not in existed]


def parse_nft_tables(text: str) -> list[str]:
    """"<family> <name>" of each table in `nft list tables` output."""
    return [line.split(None, 1)[1].strip() for line in text.splitlines() if line.startswith("table ")]


def nft_table_is_bare(listing: dict) -> bool:
    """True when an `nft -j list table` listing holds no rules, sets or maps and only base chains that accept.

    iptables-nft leaves such a table behind after its last rule and chain are gone.
    """
    for item in listing.get("nftables") or []:
        if any(key in item for key in ("rule", "set", "map", "element", "flowtable", "counter", "quota")):
            return False
        chain = item.get("chain")
        if chain is not None and ("hook" not in chain or chain.get("policy", "accept") != "accept"):
            return False
    return True


# -- mounts: pure -----------------------------------------------------------------------------------------------

_OCTAL = re.compile(r"\\([0-7]{3})")


def _unescape(field_text: str) -> str:
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field_text)


def parse_mountinfo(text: str) -> list[str]:
    """Mount points from /proc/self/mountinfo, in mount order (the kernel escapes spaces as \\040)."""
    points = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) > 4:
            points.append(_unescape(fields[4]))
    return points


def mounts_under(points: Iterable[str], root: Path | str) -> list[str]:
    """The mount points at or below `root`, most recent first (the order to unmount them in)."""
    base = str(root).rstrip("/")
    inside = [p for p in points if p == base or p.startswith(base + "/")]
    return list(reversed(inside))


# -- acting on the host -----------------------------------------------------------------------------------------

def _run(argv: list[str], *, stdin: str | None = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return subprocess.CompletedProcess(argv, 127, "", str(e))


def save(family: str) -> dict[str, SavedTable]:
    """The parsed `iptables-save` (or `ip6tables-save`) of the host; empty when it cannot be read."""
    done = _run([f"{family}-save"])
    return parse_save(done.stdout) if done.returncode == 0 else {}


def snapshot_chains() -> dict[str, list[list[str]]]:
    """Every chain that exists now, per family, as JSON-friendly [table, chain] pairs."""
    return {family: sorted([t, c] for t, c in chain_set(save(family))) for family in FAMILIES}


def remove_chains(family: str, before: set[tuple[str, str]]) -> list[str]:
    """Remove the chains created since `before`, with the jumps into them; returns the chains that remain."""
    owned = owned_chain(before)
    script = removal_script(save(family), owned)
    if script:
        done = _run([f"{family}-restore", "--noflush"], stdin=script)
        if done.returncode != 0:
            # One bad line fails the whole batch: apply the lines one by one so the rest still goes.
            table = "filter"
            for line in script.splitlines():
                if line.startswith("*"):
                    table = line[1:]
                elif line != "COMMIT":
                    _run([family, "-t", table, *shlex.split(line)])
    return [f"{t}/{c}" for t, c in sorted(chain_set(save(family))) if owned(t, c)]


def nft_tables() -> list[str]:
    """The host's nftables tables ("ip filter", ...); empty where `nft` is missing."""
    done = _run(["nft", "list", "tables"])
    return parse_nft_tables(done.stdout) if done.returncode == 0 else []


def remove_bare_nft_tables(before: Iterable[str]) -> list[str]:
    """Delete the tables created since `before` (by iptables-nft for the node's rules) that are now bare.

    Returns the new tables that remain because something else still has rules in them.
    """
    existed = set(before)
    left = []
    for table in nft_tables():
        if table in existed:
            continue
        done = _run(["nft", "-j", "list", "table", *table.split()])
        try:
            bare = done.returncode == 0 and nft_table_is_bare(json.loads(done.stdout))
        except ValueError:
            bare = False
        if not (bare and _run(["nft", "delete", "table", *table.split()]).returncode == 0):
            left.append(table)
    return left


def ipset_names() -> list[str]:
    done = _run(["ipset", "list", "-n"])
    return done.stdout.split() if done.returncode == 0 else []


def destroy_ipsets(before: Iterable[str]) -> list[str]:
    """Destroy the ipsets kube-router created since `before`; returns those that remain."""
    for _ in range(3):  # a set referenced by another set can only go after it
        doomed = owned_ipsets(ipset_names(), before)
        if not doomed:
            return []
        for name in doomed:
            _run(["ipset", "destroy", name])
    return owned_ipsets(ipset_names(), before)


def mount_points() -> list[str]:
    try:
        return parse_mountinfo(Path("/proc/self/mountinfo").read_text())
    except OSError:
        return []


def unmount_under(root: Path) -> list[str]:
    """Unmount everything mounted at or below `root` (lazily when busy); returns what is still mounted."""
    for point in mounts_under(mount_points(), root):
        if _run(["umount", point]).returncode != 0:
            _run(["umount", "-l", point])
    return mounts_under(mount_points(), root)


def link_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


def links_with_master(bridge: str) -> list[str]:
    """The interfaces attached to `bridge` (the host ends of the pods' veth pairs)."""
    done = _run(["ip", "-j", "link", "show", "master", bridge])
    if done.returncode != 0 or not done.stdout.strip():
        return []
    try:
        return [entry["ifname"] for entry in json.loads(done.stdout) if "ifname" in entry]
    except (ValueError, TypeError):
        return []


def delete_bridge(bridge: str) -> bool:
    """Delete the CNI bridge and the veths still attached to it; True when it is gone."""
    if not link_exists(bridge):
        return True
    for veth in links_with_master(bridge):
        _run(["ip", "link", "delete", veth])
    _run(["ip", "link", "delete", bridge])
    return not link_exists(bridge)


def remove_cni_results(network: str, results: Path = Path("/var/lib/cni/results")) -> None:
    """Remove the CNI library's cached results of `network` (left when a sandbox died without CNI DEL)."""
    for entry in results.glob(f"{network}-*") if results.is_dir() else []:
        entry.unlink(missing_ok=True)


def remove_log_links(pod_logs: Path, links: Path = Path("/var/log/containers")) -> None:
    """Remove the kubelet's links in /var/log/containers that point into this node's pod log folder."""
    prefix = str(pod_logs)
    for link in links.iterdir() if links.is_dir() else []:
        if link.is_symlink() and os.readlink(link).startswith(prefix):
            link.unlink(missing_ok=True)


def remove_new_empty_dirs(dirs: Iterable[str], existed: dict) -> None:
    """Remove the folders of `dirs` that did not exist before (`existed[d] is False`) once they are empty.

    `dirs` names children before their parents.
    """
    for d in dirs:
        if existed.get(d) is False:
            try:
                Path(d).rmdir()
            except OSError:
                pass


def remove_new_cgroups(now: Iterable[str], before: Iterable[str]) -> None:
    """Remove the cgroup folders created since `before`, children first; a cgroup still in use stays.

    cgroupfs folders are removed with rmdir, which the kernel refuses while a process is in one.
    """
    existed = set(before)
    for path in (Path(p) for p in now if p not in existed):
        children = sorted((c for c in path.rglob("*") if c.is_dir()), key=lambda c: len(c.parts), reverse=True)
        for folder in [*children, path]:
            try:
                folder.rmdir()
            except OSError:
                pass
