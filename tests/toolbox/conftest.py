"""Toolbox fixtures: a private cache dir, a local release server, fake release binaries."""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading
from pathlib import Path

import pytest

from labctl.toolbox.components import host_platform


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """LABCTL_CACHE_DIR pointed at a fresh directory; no download source override leaks in from outside."""
    root = tmp_path / "cache"
    monkeypatch.setenv("LABCTL_CACHE_DIR", str(root))
    for var in ("LABCTL_TOOLBOX_MIRROR", "LABCTL_K8S_URL", "LABCTL_GITHUB_URL", "LABCTL_GITHUB_API_URL",
                "LABCTL_HELM_URL", "LABCTL_TOOLBOX_METHOD"):
        monkeypatch.delenv(var, raising=False)
    return root


class ReleaseServer:
    """Files under `root` served over HTTP on 127.0.0.1; `requests` records every path asked for."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: list[str] = []
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args) -> None:
                server.requests.append(self.path)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=root))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def publish(self, relpath: str, content: bytes | str) -> str:
        """Put a file on the server; return its sha256."""
        data = content.encode() if isinstance(content, str) else content
        path = self.root / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return hashlib.sha256(data).hexdigest()


@pytest.fixture
def release_server(tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch):
    """A mirror laid out by host (see labctl.toolbox.download) and LABCTL_TOOLBOX_MIRROR pointing at it."""
    root = tmp_path / "mirror"
    root.mkdir()
    srv = ReleaseServer(root)
    srv.thread.start()
    monkeypatch.setenv("LABCTL_TOOLBOX_MIRROR", srv.url)
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


def _script(output: str) -> str:
    return f"#!/bin/sh\ncat <<'EOF'\n{output}\nEOF\n"


@pytest.fixture
def fake_binary():
    """Make a stand-in release binary: a script printing what the real one prints for its version command."""
    return _script


@pytest.fixture
def platform_names() -> tuple[str, str]:
    return host_platform()
