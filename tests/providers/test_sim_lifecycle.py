"""A sim cluster of its own (not the session's): restart after a crash, stale pid files, and a clean `down`."""

import os
import signal
import subprocess
import sys

import pytest

from labctl.errors import ProviderError, ToolboxError
from labctl.providers import kubeconfig, procs
from labctl.providers.procs import ProcessRecord
from labctl.providers.sim import COMPONENTS, CONTEXT, SimProvider

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(240)]

OTHER = {
    "apiVersion": "v1", "kind": "Config",
    "clusters": [{"name": "prod", "cluster": {"server": "https://prod.example:6443"}}],
    "users": [{"name": "prod", "user": {"token": "secret"}}],
    "contexts": [{"name": "prod", "context": {"cluster": "prod", "user": "prod"}}],
    "current-context": "prod",
}


def _gone(rec: ProcessRecord) -> bool:
    """Neither running nor a zombie: /proc has no entry for the pid, or one that started at another time.

    (A busy machine reuses pids within seconds, as process or thread ids, so existence alone proves nothing.)
    """
    stat = procs.proc_stat(rec.pid)
    return stat is None or stat[1] != rec.start_ticks


@pytest.fixture
def toolbox_ready(unavailable):
    try:
        from labctl.toolbox import binary

        for name in COMPONENTS:
            binary(name)
    except (ImportError, ToolboxError) as e:
        unavailable(f"the sim binaries are not installed ({e})")


def test_crash_restart_stale_pid_files_and_down(tmp_path, toolbox_ready):
    user_kc = tmp_path / "kube" / "config"
    kubeconfig.write(user_kc, OTHER)
    sim = SimProvider(state_root=tmp_path / "state", user_kubeconfig=user_kc)
    messages: list[str] = []
    decoy = None
    try:
        sim.up(progress=messages.append)
        # kubectl's file: the other cluster kept, and still current
        merged = kubeconfig.read(user_kc)
        assert kubeconfig.context_names(merged) == ["prod", CONTEXT]
        assert merged["current-context"] == "prod"
        assert any("current-context stays prod" in m for m in messages)

        st = sim.status()
        assert st.healthy, st
        assert (st.nodes_ready, st.nodes_total) == (3, 3)
        assert all(c.pid and c.rss_bytes for c in st.components)

        from labctl.kube.client import Client

        api = Client.from_kubeconfig(sim.kubeconfig_path, CONTEXT)
        api.create({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": "survives", "namespace": "default"}, "data": {"k": "v"}})

        # A component crashes: status says so, `up` notices the stale pid file and restarts, data kept.
        kwok, apiserver = sim.procs.running("kwok"), sim.procs.running("kube-apiserver")
        os.kill(kwok.pid, signal.SIGKILL)
        assert procs.wait_for(lambda: sim.procs.running("kwok") is None, timeout=10)
        st = sim.status()
        assert not st.healthy
        assert {c.name: c.detail for c in st.components}["kwok"] == "not running"
        messages.clear()
        sim.up(progress=messages.append)
        assert "Starting what stopped: kwok" in messages, messages
        assert sim.procs.running("kube-apiserver") == apiserver  # the rest kept running
        assert sim.status().healthy

        # Every process gone at once (a reboot): all pid files are stale; `up` starts it again with its data.
        for name in COMPONENTS:
            os.kill(sim.procs.running(name).pid, signal.SIGKILL)
        assert procs.wait_for(lambda: not any(sim.procs.running(n) for n in COMPONENTS), timeout=10)
        assert "stopped" in sim.status().message
        messages.clear()
        sim.up(progress=messages.append)
        assert messages[0] == "Starting the sim cluster again, with its data", messages
        assert sim.status().healthy
        assert api.get("v1", "ConfigMap", "survives", "default")["data"] == {"k": "v"}

        # A pid file whose pid now belongs to an unrelated process must never get that process signalled.
        decoy = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        start = procs.proc_stat(decoy.pid)[1]
        sim.procs.pid_file("kube-old").write_text(
            ProcessRecord("kube-old", decoy.pid, ["/usr/bin/kube-apiserver"], start, "x").to_json())

        pids = {name: sim.procs.running(name) for name in COMPONENTS}
        assert all(pids.values())
        messages.clear()
        sim.down(progress=messages.append)
        for name, rec in pids.items():
            assert _gone(rec), f"{name} (pid {rec.pid}) is still there after down"
        assert decoy.poll() is None, "down signalled a process it did not start"
        assert not sim.dir.exists()
        after = kubeconfig.read(user_kc)
        assert kubeconfig.context_names(after) == ["prod"] and after["current-context"] == "prod"
        assert after["clusters"] == OTHER["clusters"] and after["users"] == OTHER["users"]
        assert messages[-1] == "The sim cluster is deleted"

        messages.clear()
        sim.down(progress=messages.append)
        assert messages == ["There is no sim cluster"]
    finally:
        sim.down()
        if decoy is not None:
            decoy.kill()
            decoy.wait()


def test_a_component_that_dies_at_start_is_named_with_its_log(tmp_path, toolbox_ready):
    sim = SimProvider(state_root=tmp_path / "state", user_kubeconfig=tmp_path / "kubeconfig")
    sim.dir.mkdir(parents=True)
    (sim.dir / "etcd").write_text("a file where etcd wants its data directory")
    try:
        with pytest.raises(ProviderError) as caught:
            sim.up()
        message = caught.value.message
        assert message.startswith("etcd exited while the sim cluster was starting; the end of ")
        assert str(sim.dir / "etcd.log") in message
        assert len(message.splitlines()) > 1  # the log lines follow
        # nothing left running after the failed start
        for name in COMPONENTS:
            assert sim.procs.running(name) is None
        assert sim.procs.names() == []
        assert not (tmp_path / "kubeconfig").exists()
    finally:
        sim.down()
