"""Real images without a registry: a debootstrap base image imported into a real containerd, and real BuildKit
builds FROM it (a small Dockerfile with its rebuild cache, pip through the CA secret, the lab 9 app).

containerd and buildkitd run here as the local provider runs them (containerd worker, `k8s.io` namespace,
host network for RUN steps), from the toolbox's binaries, in a private folder. Needs root and Linux.
Timings are printed (run with -s to see them).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest

from labctl.errors import LabError, ToolboxError, UsageError
from labctl.images import archive, base
from labctl.images.build import BuildKitBuilder
from labctl.images.ensure import ensure_images

pytestmark = [pytest.mark.local, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
LAB9 = REPO / "labs" / "09-containerization"


def _wait_for(path: Path, proc: subprocess.Popen, what: str, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return
        if proc.poll() is not None:
            pytest.fail(f"{what} exited with {proc.returncode}: {log.read_text()[-2000:]}")
        time.sleep(0.1)
    pytest.fail(f"{what} did not create {path} within {timeout} s: {log.read_text()[-2000:]}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def tools(unavailable):
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        unavailable("containerd and debootstrap need root on Linux")
    from labctl.toolbox import binary

    try:
        found = {n: binary(n) for n in ("containerd", "containerd-shim-runc-v2", "ctr", "buildkitd", "buildctl")}
    except ToolboxError as e:
        unavailable(f"{e.message} ({e.hint})")
    if shutil.which("runc") is None or shutil.which("debootstrap") is None:
        unavailable("runc and debootstrap are needed (apt-get install runc debootstrap)")
    return found


@pytest.fixture(scope="session")
def node(tools, tmp_path_factory):
    """containerd + buildkitd (containerd worker) in a private folder; torn down and unmounted at the end."""
    d = tmp_path_factory.mktemp("node")
    sock = d / "containerd.sock"
    (d / "containerd.toml").write_text(f"""\
version = 3
root = "{d}/containerd"
state = "{d}/run"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.cri.v1.runtime", "io.containerd.cri.v1.images"]
[grpc]
  address = "{sock}"
""")
    # containerd finds its shim on PATH; runc comes from the Debian package.
    shim_dir = tools["containerd-shim-runc-v2"].parent
    env = {**os.environ, "PATH": f"{shim_dir}:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin"}
    logs = []
    procs = []
    try:
        log = d / "containerd.log"
        logs.append(open(log, "w"))
        procs.append(subprocess.Popen([str(tools["containerd"]), "--config", str(d / "containerd.toml")],
                                      stdout=logs[-1], stderr=subprocess.STDOUT, env=env, start_new_session=True))
        _wait_for(sock, procs[-1], "containerd", log)
        bk_sock = d / "buildkitd.sock"
        log = d / "buildkitd.log"
        logs.append(open(log, "w"))
        procs.append(subprocess.Popen(
            [str(tools["buildkitd"]), "--oci-worker=false", "--containerd-worker=true",
             f"--containerd-worker-addr={sock}", "--containerd-worker-namespace=k8s.io",
             "--containerd-worker-net=host", f"--root={d / 'buildkit'}", f"--addr=unix://{bk_sock}",
             f"--otel-socket-path={d / 'buildkit' / 'otel.sock'}", "--cdi-disabled"],
            stdout=logs[-1], stderr=subprocess.STDOUT, env=env, start_new_session=True))
        _wait_for(bk_sock, procs[-1], "buildkitd", log)
        yield SimpleNamespace(dir=d, containerd=str(sock), buildkit=f"unix://{bk_sock}", ctr=str(tools["ctr"]))
    finally:
        for proc in reversed(procs):
            _stop(proc)
        for f in logs:
            f.close()
        base.remove_tree(d)


@pytest.fixture(scope="session")
def python_image(tools, tmp_path_factory):
    """The Python base image built cold (an empty cache of its own), timed; then asked for again, warm."""
    root = tmp_path_factory.mktemp("images")
    started = time.monotonic()
    cold = base.python_base(root=root)
    cold_s = time.monotonic() - started
    started = time.monotonic()
    warm = base.python_base(root=root)
    warm_s = time.monotonic() - started
    print(f"\n[measure] base image {cold.tag}: cold build {cold_s:.1f} s ({cold.size / 2**20:.0f} MB tar), "
          f"warm (cached tar) {warm_s * 1000:.0f} ms")
    yield SimpleNamespace(cold=cold, warm=warm, cold_s=cold_s, warm_s=warm_s, root=root)
    shutil.rmtree(root, ignore_errors=True)  # a quarter of a gigabyte that pytest would keep for three runs


@pytest.fixture(scope="session")
def builder(node, python_image):
    return BuildKitBuilder(node.buildkit, node.containerd, "k8s.io", base_root=python_image.root)


def _ctr_run(node, image: str, *argv: str, env: dict[str, str] | None = None, timeout: float = 60) -> str:
    name = f"t{time.monotonic_ns()}"
    cmd = [node.ctr, "-a", node.containerd, "-n", "k8s.io", "run", "--rm", "--net-host"]
    for k, v in (env or {}).items():
        cmd += ["--env", f"{k}={v}"]
    done = subprocess.run([*cmd, image, name, *argv], capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_base_image_is_built_once_and_reused(python_image):
    cold, warm = python_image.cold, python_image.warm
    assert cold.built and not warm.built
    assert warm.tar == cold.tar and warm.image_id == cold.image_id
    assert cold.tag == "labctl.local/python:3.11"  # bookworm's Python, named for what it is
    assert python_image.warm_s < 1.0
    assert cold.meta["suite"] == "bookworm" and "python3" in cold.meta["packages"]


def test_base_image_archive_is_sound(python_image):
    import hashlib
    import tarfile

    entry = archive.read_archive(python_image.cold.tar)
    assert entry["RepoTags"] == ["labctl.local/python:3.11"]
    config = entry["config"]
    assert "LANG=C.UTF-8" in config["config"]["Env"] and config["config"]["Cmd"] == ["python3"]
    with tarfile.open(python_image.cold.tar) as outer:
        (layer_name,) = entry["Layers"]
        layer = outer.extractfile(layer_name)
        digest = hashlib.sha256()
        for chunk in iter(lambda: layer.read(1 << 20), b""):
            digest.update(chunk)
        assert config["rootfs"]["diff_ids"] == [f"sha256:{digest.hexdigest()}"]
        layer = outer.extractfile(layer_name)
        with tarfile.open(fileobj=layer, mode="r|") as inner:
            names = {m.name for m in inner}
    assert {"usr/bin/python3", "usr/bin/pip", "usr/bin/python", "etc/ssl/certs/ca-certificates.crt"} <= names
    assert not any(n.startswith("var/lib/apt/lists/") and n.endswith("_Packages") for n in names)
    assert not any(n.endswith(".deb") for n in names)
    assert "etc/resolv.conf" not in names and "usr/lib/python3.11/EXTERNALLY-MANAGED" not in names
    assert python_image.cold.size < 300 * 2**20


def test_base_image_runs_in_containerd(node, builder, python_image):
    tag = python_image.cold.tag
    started = time.monotonic()
    builder.import_archive(python_image.cold.tar)
    print(f"\n[measure] ctr images import of {tag}: {time.monotonic() - started:.1f} s")
    assert builder.has_image(tag)
    out = _ctr_run(node, tag, "python3", "-c", "import sys, ssl, pip; print(sys.version_info[:2], pip.__version__)")
    assert out.startswith("(3, 11)")


def test_an_image_of_one_static_binary_runs(node, builder, tools, tmp_path):
    # ctr is a static Go binary: the same kind of image as the node's pause and CoreDNS images.
    tar = tmp_path / "static.tar"
    info = archive.write_image(tar, "labctl.local/static:1.0", {"/bin/ctr": tools["ctr"]},
                               entrypoint=["/bin/ctr"], cmd=["--version"], user="65532:65532")
    builder.import_archive(tar)
    assert builder.has_image("labctl.local/static:1.0")
    done = subprocess.run([node.ctr, "-a", node.containerd, "-n", "k8s.io", "images", "ls"],
                          capture_output=True, text=True, check=True)
    assert "labctl.local/static:1.0" in done.stdout
    assert "2.4.2" in _ctr_run(node, "labctl.local/static:1.0")
    assert info.image_id.startswith("sha256:")


SMALL = """\
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1
WORKDIR /app
RUN python3 -c "import json, sys; json.dump({'python': sys.version.split()[0]}, open('/app/meta.json', 'w'))"
COPY app.py /app/app.py
USER 10001:10001
CMD ["python3", "/app/app.py"]
"""


def test_small_dockerfile_builds_and_rebuilds_from_cache(node, builder, tmp_path):
    (tmp_path / "Dockerfile").write_text(SMALL)
    app = tmp_path / "app.py"
    app.write_text("import json, os\nprint('v1', json.load(open('/app/meta.json'))['python'], os.getuid())\n")
    tag = "labctl.local/small:1.0"

    first = builder.build(tmp_path, tag)
    assert builder.has_image(tag)
    assert _ctr_run(node, tag).split() == ["v1", "3.11.2", "10001"]

    app.write_text(app.read_text().replace("'v1'", "'v2'"))  # a one-line change
    second = builder.build(tmp_path, tag)
    print(f"\n[measure] small Dockerfile: first build {first.seconds:.2f} s, rebuild after a one-line change "
          f"{second.seconds:.2f} s; {second.summary}")
    names = [s.name for s in second.steps]
    assert len(names) == 3 and names[-1].endswith("COPY app.py /app/app.py"), names
    # Every layer before the changed file is reused; only the COPY runs again.
    assert [s.cached for s in second.steps] == [True, True, False], second.steps
    assert _ctr_run(node, tag).split()[0] == "v2"


def test_pip_inside_a_build_trusts_the_host_ca_bundle(node, builder, tmp_path):
    (tmp_path / "requirements.txt").write_text("six==1.16.0\n")
    (tmp_path / "Dockerfile").write_text("""\
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}
COPY requirements.txt /tmp/requirements.txt
RUN --mount=type=secret,id=cacert \\
    if [ -f /run/secrets/cacert ]; then export PIP_CERT=/run/secrets/cacert; fi; \\
    pip install --no-cache-dir --disable-pip-version-check -r /tmp/requirements.txt
CMD ["python3", "-c", "import os, six; print(six.__version__, os.path.exists('/run/secrets/cacert'))"]
""")
    result = builder.build(tmp_path, "labctl.local/pipdemo:1.0")
    print(f"\n[measure] pip install through the cacert secret: {result.seconds:.1f} s")
    assert _ctr_run(node, "labctl.local/pipdemo:1.0").split() == ["1.16.0", "False"]


def test_a_base_from_a_registry_is_refused_with_the_way_out(builder, tmp_path):
    (tmp_path / "Dockerfile").write_text("FROM python:3.12-slim\nCMD [\"python3\"]\n")
    with pytest.raises(UsageError, match="FROM python:3.12-slim") as e:
        builder.build(tmp_path, "labctl.local/registry:1.0")
    assert "ARG BASE_IMAGE" in e.value.hint


def test_a_failing_step_is_one_line_with_the_log(builder, tmp_path):
    (tmp_path / "Dockerfile").write_text("ARG BASE_IMAGE=python:3.11-slim\nFROM ${BASE_IMAGE}\n"
                                         "RUN python3 -c 'raise SystemExit(3)'\n")
    with pytest.raises(LabError) as e:
        builder.build(tmp_path, "labctl.local/broken:1.0")
    assert "exit code: 3" in e.value.message and "\n" not in e.value.message
    assert Path(e.value.hint.removeprefix("the full build log is ")).is_file()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_lab9_app_image_is_ensured_once_and_serves(node, builder, tmp_path, monkeypatch):
    from labctl.labs import load_lab

    monkeypatch.setenv("LABCTL_STATE_DIR", str(tmp_path / "state"))
    lab = load_lab(LAB9)
    target = SimpleNamespace(provider="local", pods_run=True)
    started = time.monotonic()
    assert ensure_images(lab, target, builder=builder) == [i.name for i in lab.images]
    built_s = time.monotonic() - started
    started = time.monotonic()
    assert ensure_images(lab, target, builder=builder) == []
    skip_s = time.monotonic() - started
    print(f"\n[measure] lab 9 app: ensure_images built it in {built_s:.1f} s; next call skipped in "
          f"{skip_s * 1000:.0f} ms")
    assert skip_s < 2.0

    tag = lab.images[0].name
    port = _free_port()
    name = f"hello{port}"
    run = subprocess.Popen([node.ctr, "-a", node.containerd, "-n", "k8s.io", "run", "--rm", "--net-host",
                            "--env", f"PORT={port}", "--env", "STARTUP_SECONDS=0", tag, name],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as resp:
                    body = json.loads(resp.read())
                break
            except OSError:
                if time.monotonic() > deadline or run.poll() is not None:
                    raise
                time.sleep(0.2)
        assert body["message"] == "Hello from hello" and body["version"] == "1.0"
    finally:
        # SIGTERM: the app drains and exits 0, as a pod's container does when it is deleted.
        subprocess.run([node.ctr, "-a", node.containerd, "-n", "k8s.io", "tasks", "kill", name],
                       capture_output=True)
        try:
            output, _ = run.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            run.kill()
            output, _ = run.communicate()
    assert run.returncode == 0, output
    records = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    assert [r["msg"] for r in records if r["msg"] in ("listening", "stopped")] == ["listening", "stopped"], output
