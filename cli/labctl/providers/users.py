"""Whose cluster it is: under `sudo`, the kubeconfig and state belong to the person who ran sudo.

Root is needed to run a real node, but the learner's own kubectl must see the cluster afterwards, so files
labctl writes go to `SUDO_USER`'s home and are owned by that user.
"""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping


@dataclass(frozen=True)
class TargetUser:
    """The person files are written for."""

    name: str
    home: Path
    uid: int
    gid: int
    via_sudo: bool  # True when that person is not the effective user (labctl runs under sudo)


def decide_target_user(env: Mapping[str, str], euid: int,
                       lookup_name: Callable[[str], pwd.struct_passwd],
                       lookup_uid: Callable[[int], pwd.struct_passwd]) -> TargetUser:
    """Pure decision: SUDO_USER when root runs on someone's behalf, else the effective user."""
    sudo_user = env.get("SUDO_USER", "")
    if euid == 0 and sudo_user and sudo_user != "root":
        try:
            entry = lookup_name(sudo_user)
        except KeyError:
            entry = None
        if entry is not None:
            uid = int(env.get("SUDO_UID") or entry.pw_uid)
            gid = int(env.get("SUDO_GID") or entry.pw_gid)
            return TargetUser(sudo_user, Path(entry.pw_dir), uid, gid, via_sudo=True)
    try:
        entry = lookup_uid(euid)
        name, home, gid = entry.pw_name, entry.pw_dir, entry.pw_gid
    except KeyError:  # a uid without a passwd entry (some containers)
        name, home, gid = str(euid), env.get("HOME", "/"), os.getegid()
    return TargetUser(name, Path(env.get("HOME") or home), euid, gid, via_sudo=False)


def target_user() -> TargetUser:
    """The person this run of labctl writes kubeconfig and state for."""
    return decide_target_user(os.environ, os.geteuid(), pwd.getpwnam, pwd.getpwuid)


def decide_state_root(env: Mapping[str, str], user: TargetUser) -> Path:
    """Pure decision of labctl's state directory ($LABCTL_STATE_DIR, else XDG, in the target user's home)."""
    if env.get("LABCTL_STATE_DIR"):
        return Path(env["LABCTL_STATE_DIR"])
    xdg = env.get("XDG_STATE_HOME")
    # Under sudo, root's XDG_STATE_HOME (if any survived) points into root's home, not the learner's.
    if xdg and (not user.via_sudo or Path(xdg).is_relative_to(user.home)):
        return Path(xdg) / "labctl"
    return user.home / ".local" / "state" / "labctl"


def state_root() -> Path:
    """labctl's state directory for the target user."""
    return decide_state_root(os.environ, target_user())


def give(path: Path, user: TargetUser | None = None, *, recursive: bool = False) -> None:
    """Make `path` (and with `recursive`, everything under it) owned by the target user when running for them."""
    user = user or target_user()
    if not user.via_sudo:
        return
    paths = [path]
    if recursive and path.is_dir():
        paths += list(path.rglob("*"))
    for p in paths:
        try:
            os.chown(p, user.uid, user.gid, follow_symlinks=False)
        except FileNotFoundError:
            pass  # a component removed its temporary file meanwhile


def make_dirs(path: Path, user: TargetUser | None = None) -> Path:
    """`mkdir -p` whose new directories belong to the target user."""
    user = user or target_user()
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    path.mkdir(parents=True, exist_ok=True)
    for p in reversed(missing):
        give(p, user)
    return path
