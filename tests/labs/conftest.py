"""A small valid lab written to a temporary folder, independent of the labs shipped in the repository."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from labctl.labs import SCHEMA_COMMENT

DEPLOYMENT = {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"}
SERVICE = {"apiVersion": "v1", "kind": "Service", "name": "web"}

VALID: dict[str, Any] = {
    "format_version": 1,
    "title": "Demo",
    "difficulty": "Beginner",
    "minutes": 20,
    "summary": "Deploy one web server and put a Service in front of it.",
    "objectives": ["Write a Deployment", "Expose it with a Service"],
    "prerequisites": [],
    "images": [{"name": "labctl.local/demo:1.0", "context": "app"}],
    "values": {"replicas": 1},
    "deploy": ["templates/app.yaml.j2"],
    "solution": ["solution/app.yaml"],
    "checks": [
        {"id": "web-exists", "title": "Deployment web exists", "type": "exists", "target": DEPLOYMENT,
         "hints": ["Create it."]},
        {"id": "old-gone", "title": "Deployment old is gone", "type": "absent",
         "target": {**DEPLOYMENT, "name": "old"}, "hints": ["Delete it."]},
        {"id": "web-image", "title": "web runs demo 1.0", "type": "matches", "target": DEPLOYMENT,
         "subset": {"spec": {"template": {"spec": {
             "containers": [{"name": "web", "image": "labctl.local/demo:1.0"}]}}}},
         "hints": ["Set the image."]},
        {"id": "two-replicas", "title": "Two replicas", "type": "expression", "target": DEPLOYMENT,
         "expr": "spec.replicas", "equals": 2, "message": "one replica is one point of failure",
         "hints": ["Scale it."]},
        {"id": "available", "title": "web is Available", "type": "condition", "target": DEPLOYMENT,
         "condition": "Available", "status": "True", "hints": ["Wait."]},
        {"id": "web-ready", "title": "web is ready", "type": "ready", "target": DEPLOYMENT, "replicas": 2,
         "hints": ["Look at the pods."]},
        {"id": "web-endpoints", "title": "Service web has 2 endpoints", "type": "endpoints", "target": SERVICE,
         "count": 2, "hints": ["Check the selector."]},
        {"id": "pod-count", "title": "Two web pods", "type": "count", "apiVersion": "v1", "kind": "Pod",
         "selector": {"app": "web"}, "min": 2, "max": 3, "hints": ["Scale it."]},
        {"id": "web-probes", "title": "Probes", "type": "probes", "target": DEPLOYMENT, "container": "web",
         "hints": ["Add probes."]},
        {"id": "web-resources", "title": "Resources", "type": "resources", "target": DEPLOYMENT,
         "hints": ["Add requests and limits."]},
        {"id": "web-security", "title": "Restricted", "type": "security", "target": DEPLOYMENT,
         "require": ["runAsNonRoot", "seccompRuntimeDefault"], "hints": ["Add a securityContext."]},
        {"id": "web-pinned", "title": "Pinned", "type": "image-pinned", "target": DEPLOYMENT,
         "hints": ["Use a version tag."]},
        {"id": "web-answers", "title": "GET / answers", "type": "http", "needs": "running", "service": "web",
         "port": 80, "path": "/", "expect": {"status": 200, "json": {"version": "1.0"}, "max_ms": 500},
         "hints": ["Ask it yourself."]},
        {"id": "web-behaves", "title": "web restarts cleanly", "type": "ready", "needs": "running",
         "target": DEPLOYMENT, "hints": ["Read the logs."]},
    ],
    "interview": [{"question": "Why?", "answer": "Because."}],
}


def _valid_doc() -> dict[str, Any]:
    return copy.deepcopy(VALID)


def _write_lab(root: Path, doc: Any = None, *, name: str = "03-demo", text: str | None = None) -> Path:
    """Write a lab folder under `root` (its files included) and return the folder."""
    folder = root / name
    for sub in ("templates", "solution", "app"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    (folder / "templates" / "app.yaml.j2").write_text("kind: Deployment\n")
    (folder / "solution" / "app.yaml").write_text("kind: Deployment\n")
    (folder / "app" / "Dockerfile").write_text("FROM scratch\n")
    if text is None:
        body = yaml.safe_dump(_valid_doc() if doc is None else doc, sort_keys=False)
        text = f"{SCHEMA_COMMENT}\n{body}"
    (folder / "lab.yaml").write_text(text)
    return folder


@pytest.fixture(scope="session")
def valid_doc() -> Callable[[], dict[str, Any]]:
    """valid_doc() gives a fresh copy of the valid lab, safe to mutate."""
    return _valid_doc


@pytest.fixture(scope="session")
def write_lab() -> Callable[..., Path]:
    """write_lab(root, doc=None, name="03-demo", text=None) writes a lab folder and returns it."""
    return _write_lab


@pytest.fixture
def lab_root(tmp_path: Path) -> Path:
    root = tmp_path / "labs"
    root.mkdir()
    return root


@pytest.fixture
def make_lab(lab_root: Path) -> Callable[..., Path]:
    """make_lab(doc=None, name="03-demo", text=None) writes a lab and returns its folder."""

    def make(doc: Any = None, *, name: str = "03-demo", text: str | None = None) -> Path:
        return _write_lab(lab_root, doc, name=name, text=text)

    return make
