import functools
import http.server
import sys
import threading
from pathlib import Path

import pytest

from labctl.errors import ToolboxError
from labctl.toolbox import gobuild

pytestmark = pytest.mark.unit


def test_a_failed_step_names_the_command_and_shows_the_last_lines(tmp_path: Path):
    log = tmp_path / "build.log"
    cmd = [sys.executable, "-c", "import sys\nfor i in range(1, 31): print('line', i)\nsys.exit(3)"]

    with pytest.raises(ToolboxError) as err:
        gobuild._run(cmd, tmp_path, log, "building kind v0.33.0")

    message = str(err.value)
    assert message.startswith("building kind v0.33.0: `")
    assert sys.executable in message and "exited with 3" in message
    shown = [line for line in message.splitlines() if line.startswith("line ")]
    assert shown == [f"line {i}" for i in range(16, 31)]
    assert err.value.hint == f"full output in {log}"
    assert "line 1\n" in log.read_text()


def test_proxy_list_keeps_the_fallback_kind_of_each_entry():
    assert gobuild._proxy_list("https://a,https://b|direct") == [
        ("https://a", False), ("https://b", True), ("direct", False)]
    assert gobuild._proxy_list("off") == [("off", False)]


@pytest.fixture
def proxy(tmp_path: Path):
    """A module proxy that knows one module version (file layout as the GOPROXY protocol asks)."""
    (tmp_path / "example.com" / "!big" / "@v").mkdir(parents=True)
    (tmp_path / "example.com" / "!big" / "@v" / "v1.0.0.info").write_text('{"Version":"v1.0.0"}')
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=tmp_path))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_module_reachable_follows_goproxy_like_go(proxy, tmp_path: Path):
    def reachable(goproxy: str, version: str = "v1.0.0", cache: str = "") -> bool:
        return gobuild.module_reachable("example.com/Big", version, {"GOPROXY": goproxy, "GOMODCACHE": cache},
                                        timeout=2)

    assert reachable(proxy)
    assert not reachable(proxy, "v9.9.9")
    assert reachable(f"{proxy},direct", "v9.9.9")          # not found: Go moves on to the next entry
    refused = "http://127.0.0.1:9"
    assert not reachable(f"{refused},direct")               # a network error stops Go after a ","
    assert reachable(f"{refused}|{proxy}")                  # ... but not after a "|"
    assert not reachable("off")
    zip_in_cache = tmp_path / "modcache" / "cache" / "download" / "example.com" / "!big" / "@v" / "v2.0.0.zip"
    zip_in_cache.parent.mkdir(parents=True)
    zip_in_cache.write_bytes(b"")
    assert reachable("off", "v2.0.0", str(tmp_path / "modcache"))
