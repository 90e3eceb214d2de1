from pathlib import Path

import pytest
import yaml

from labctl.errors import ToolboxError
from labctl.providers.sim import (NODE_NAMES, SimProvider, explain_exit, kwok_stage_files, node_manifest,
                                  storage_class_manifest)

pytestmark = pytest.mark.unit

PORTS = {"etcd-client": 2379, "etcd-peer": 2380, "kube-apiserver": 6443, "kwok": 10247}


def test_node_manifest_is_a_kwok_node():
    node = node_manifest("sim-node-1")
    assert node["metadata"]["annotations"]["kwok.x-k8s.io/node"] == "fake"
    assert node["metadata"]["labels"]["type"] == "kwok"
    assert node["status"]["capacity"] == {"cpu": "8", "memory": "16Gi", "pods": "110"}
    assert node["status"]["allocatable"] == node["status"]["capacity"]
    assert len(NODE_NAMES) == 3


def test_shipped_kwok_stages():
    files = kwok_stage_files()
    stages = [yaml.safe_load(f.read_text()) for f in files]
    assert all(s["kind"] == "Stage" for s in stages)
    names = {s["metadata"]["name"] for s in stages}
    assert {"node-initialize", "node-heartbeat-with-lease", "pod-create", "pod-ready", "pod-complete",
            "pod-delete", "pod-init-container-running", "pod-init-container-completed", "pvc-provision",
            "pv-bind", "pv-delete", "pvc-delete"} == names
    for s in stages:
        if s["spec"]["resourceRef"]["kind"] == "Pod":
            assert "delay" not in s["spec"], s["metadata"]["name"]
    for f in files:
        assert "Apache License" in f.read_text().split("apiVersion:")[0]
        assert "kwok-volume" not in f.read_text()


def test_volume_stages_select_the_standard_class():
    for f in kwok_stage_files():
        if f.name.startswith(("pv-", "pvc-")):
            assert "self.spec.storageClassName == 'standard'" in f.read_text()


def test_storage_class_is_the_default_standard():
    sc = storage_class_manifest()
    assert sc["kind"] == "StorageClass" and sc["metadata"]["name"] == "standard"
    assert sc["metadata"]["annotations"]["storageclass.kubernetes.io/is-default-class"] == "true"


def test_port_in_use_names_component_and_port():
    tail = 'E1128 listen tcp 127.0.0.1:6443: bind: address already in use\nexit'
    err = explain_exit("kube-apiserver", tail, PORTS, Path("/s/kube-apiserver.log"))
    assert err.message == "kube-apiserver could not listen on 127.0.0.1:6443: the port is in use"
    assert "labctl up" in err.hint


def test_port_in_use_of_etcd_peer():
    tail = '{"level":"fatal","msg":"listen tcp 127.0.0.1:2380: bind: address already in use"}'
    assert "127.0.0.1:2380" in explain_exit("etcd", tail, PORTS, Path("/l")).message


def test_exit_shows_the_last_log_lines():
    tail = "\n".join(f"line {i}" for i in range(20))
    err = explain_exit("kwok", tail, PORTS, Path("/s/kwok.log"))
    first, *rest = err.message.splitlines()
    assert first == "kwok exited while the sim cluster was starting; the end of /s/kwok.log:"
    assert rest == [f"  line {i}" for i in range(12, 20)]
    assert "(it printed nothing)" in explain_exit("kwok", "", PORTS, Path("/l")).message


def test_missing_binaries_say_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("LABCTL_CACHE_DIR", str(tmp_path / "empty-cache"))
    sim = SimProvider(state_root=tmp_path / "state", user_kubeconfig=tmp_path / "kubeconfig")
    with pytest.raises(ToolboxError) as caught:
        sim.up()
    assert caught.value.hint == "run `labctl toolbox install`"
    assert not sim.dir.exists()
    assert not (tmp_path / "kubeconfig").exists()


def test_down_and_status_without_a_cluster(tmp_path):
    sim = SimProvider(state_root=tmp_path / "state", user_kubeconfig=tmp_path / "kubeconfig")
    messages: list[str] = []
    sim.down(progress=messages.append)
    assert messages == ["There is no sim cluster"]
    st = sim.status()
    assert not st.exists and not st.api_reachable and not st.healthy
    assert "labctl up --provider sim" in st.message
