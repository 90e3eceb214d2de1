"""A real build from Go modules: kind, the quickest of the toolbox's binaries to compile."""

import shutil
import subprocess

import pytest

from labctl.toolbox import binary, install, store

pytestmark = pytest.mark.skipif(shutil.which("go") is None, reason="needs Go on PATH (the build path)")


@pytest.mark.timeout(1200)  # seconds with a warm module cache; a cold one on a busy machine takes minutes
def test_kind_builds_from_its_module_and_reports_its_version(cache):
    lines: list[str] = []

    path = install(["kind"], method="build", progress=lines.append)["kind"]

    assert path == binary("kind")
    assert lines[0] == "building kind v0.33.0 from Go modules (takes minutes on a cold cache)"
    out = subprocess.run([path, "version"], capture_output=True, text=True, timeout=30).stdout
    assert out.startswith("kind v0.33.0 ")
    manifest = store.read_manifest("kind", "v0.33.0")
    assert manifest["how"] == "built" and manifest["source"] == "sigs.k8s.io/kind@v0.33.0"
    assert manifest["sha256"] == store.sha256_file(path)
