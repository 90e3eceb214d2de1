"""Images without a registry: docker-archive tars written by labctl, Debian base images made by debootstrap,
and Dockerfiles built into the cluster's own image store (BuildKit on local, Docker + kind load on kind).

    from labctl.images import ensure_images, write_image, python_base, debian_image
"""

from __future__ import annotations

import importlib
from typing import Any

# Imported on first use: `labctl` loads this package for its `image` command group on every run.
_EXPORTS = {
    "ensure_images": "labctl.images.ensure",
    "write_image": "labctl.images.archive",
    "python_base": "labctl.images.base",
    "debian_image": "labctl.images.base",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
