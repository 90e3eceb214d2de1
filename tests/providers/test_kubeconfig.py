from pathlib import Path

import pytest

from labctl.providers import kubeconfig as kc
from labctl.providers.users import TargetUser

pytestmark = pytest.mark.unit

ME = TargetUser("me", Path("/home/me"), 1000, 1000, via_sudo=False)


def other_config() -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "prod", "cluster": {"server": "https://prod:6443"}}],
        "users": [{"name": "prod-admin", "user": {"token": "t"}}],
        "contexts": [{"name": "prod", "context": {"cluster": "prod", "user": "prod-admin"}}],
        "current-context": "prod",
        "preferences": {"colors": True},
    }


def sim_config(server: str = "https://127.0.0.1:6443") -> dict:
    return kc.build("labctl-sim", server, b"CA", b"CERT", b"KEY")


def test_build_is_self_contained():
    cfg = sim_config()
    assert cfg["current-context"] == "labctl-sim"
    assert cfg["clusters"][0]["cluster"]["certificate-authority-data"] == "Q0E="
    assert cfg["users"][0]["user"] == {"client-certificate-data": "Q0VSVA==", "client-key-data": "S0VZ"}


def test_merge_keeps_other_entries_and_their_current_context():
    result = kc.merge(other_config(), sim_config())
    cfg = result.config
    assert kc.context_names(cfg) == ["prod", "labctl-sim"]
    assert [c["name"] for c in cfg["clusters"]] == ["prod", "labctl-sim"]
    assert [u["name"] for u in cfg["users"]] == ["prod-admin", "labctl-sim"]
    assert cfg["current-context"] == "prod"
    assert cfg["preferences"] == {"colors": True}
    assert result.set_current is False and result.current == "prod" and result.context == "labctl-sim"


def test_merge_sets_current_context_only_when_none():
    for target in ({}, kc.empty(), {**other_config(), "current-context": ""}):
        result = kc.merge(target, sim_config())
        assert result.set_current is True
        assert result.config["current-context"] == "labctl-sim"


def test_merge_replaces_entries_of_the_same_name():
    first = kc.merge(other_config(), sim_config("https://127.0.0.1:1111")).config
    second = kc.merge(first, sim_config("https://127.0.0.1:2222")).config
    servers = [c["cluster"]["server"] for c in second["clusters"] if c["name"] == "labctl-sim"]
    assert servers == ["https://127.0.0.1:2222"]
    assert kc.context_names(second) == ["prod", "labctl-sim"]


def test_merge_does_not_change_its_inputs():
    target, source = other_config(), sim_config()
    kc.merge(target, source)
    assert target == other_config() and source == sim_config()


def test_remove_takes_context_cluster_and_user_and_clears_current():
    merged = kc.merge(kc.empty(), sim_config()).config
    merged = kc.merge(merged, other_config()).config
    assert merged["current-context"] == "labctl-sim"
    cfg, removed = kc.remove(merged, "labctl-sim")
    assert removed is True
    assert kc.context_names(cfg) == ["prod"]
    assert [c["name"] for c in cfg["clusters"]] == ["prod"]
    assert [u["name"] for u in cfg["users"]] == ["prod-admin"]
    assert cfg["current-context"] == ""


def test_remove_keeps_a_cluster_another_context_still_uses():
    cfg = kc.merge(other_config(), sim_config()).config
    cfg["contexts"].append({"name": "mine", "context": {"cluster": "labctl-sim", "user": "prod-admin"}})
    out, removed = kc.remove(cfg, "labctl-sim")
    assert removed
    assert [c["name"] for c in out["clusters"]] == ["prod", "labctl-sim"]
    assert [u["name"] for u in out["users"]] == ["prod-admin"]
    assert out["current-context"] == "prod"


def test_remove_of_an_unknown_context_changes_nothing():
    out, removed = kc.remove(other_config(), "labctl-sim")
    assert removed is False and out == other_config()


def test_user_path_is_first_kubeconfig_entry_else_home():
    assert kc.decide_user_path({"KUBECONFIG": "/a/one:/b/two"}, ME) == Path("/a/one")
    assert kc.decide_user_path({"KUBECONFIG": ":/b/two"}, ME) == Path("/b/two")
    assert kc.decide_user_path({}, ME) == Path("/home/me/.kube/config")
    assert kc.decide_user_path({"KUBECONFIG": ""}, ME) == Path("/home/me/.kube/config")


def test_merge_into_user_file_round_trip(tmp_path):
    path = tmp_path / "sub" / "config"
    kc.write(path, other_config())
    assert path.stat().st_mode & 0o777 == 0o600
    written, result = kc.merge_into_user(sim_config(), path)
    assert written == path and not result.set_current
    on_disk = kc.read(path)
    assert kc.context_names(on_disk) == ["prod", "labctl-sim"] and on_disk["current-context"] == "prod"
    assert "current-context stays prod" in kc.merge_message(path, result)
    _, removed = kc.remove_from_user("labctl-sim", path)
    assert removed and kc.read(path) == other_config()
    assert [p.name for p in path.parent.iterdir()] == ["config"]  # no temporary file left behind


def test_merge_message_when_set_current(tmp_path):
    result = kc.merge(kc.empty(), sim_config())
    assert kc.merge_message(tmp_path / "c", result).endswith("and set as current-context")


def test_invalid_kubeconfig_is_one_clear_error(tmp_path):
    from labctl.errors import UsageError

    bad = tmp_path / "config"
    bad.write_text("clusters: [unclosed\n")
    with pytest.raises(UsageError, match="is not valid YAML"):
        kc.read(bad)
    bad.write_text("- a list\n")
    with pytest.raises(UsageError, match="not a kubeconfig"):
        kc.read(bad)
