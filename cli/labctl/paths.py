"""Where labctl keeps things: XDG base directories, overridable by environment variables."""

from __future__ import annotations

import os
from pathlib import Path


def _xdg(var: str, default: str) -> Path:
    value = os.environ.get(var)
    return Path(value) if value else Path.home() / default


def cache_dir() -> Path:
    """Toolbox binaries and built images: expensive to make, safe to delete ($LABCTL_CACHE_DIR)."""
    override = os.environ.get("LABCTL_CACHE_DIR")
    return Path(override) if override else _xdg("XDG_CACHE_HOME", ".cache") / "labctl"


def state_dir() -> Path:
    """Clusters (pids, logs, certificates), progress and backups ($LABCTL_STATE_DIR)."""
    override = os.environ.get("LABCTL_STATE_DIR")
    return Path(override) if override else _xdg("XDG_STATE_HOME", ".local/state") / "labctl"


def data_dir() -> Path:
    """The labs and shared manifests: shipped inside the package, or the repository in a checkout."""
    here = Path(__file__).resolve().parent
    shipped = here / "_data"
    if shipped.is_dir():
        return shipped
    return here.parent.parent  # cli/labctl -> repository root


def labs_dir() -> Path:
    """The labs to offer; $LABCTL_LABS_DIR points at another folder of labs (for lab authors)."""
    override = os.environ.get("LABCTL_LABS_DIR")
    return Path(override) if override else data_dir() / "labs"


def manifests_dir() -> Path:
    return data_dir() / "manifests"
