import pwd
from pathlib import Path

import pytest

from labctl.providers.users import TargetUser, decide_state_root, decide_target_user

pytestmark = pytest.mark.unit


def entry(name, uid, gid, home):
    return pwd.struct_passwd((name, "x", uid, gid, "", home, "/bin/sh"))


USERS = {"alice": entry("alice", 1000, 1000, "/home/alice"), "root": entry("root", 0, 0, "/root")}
BY_UID = {e.pw_uid: e for e in USERS.values()}


def decide(env, euid):
    return decide_target_user(env, euid, USERS.__getitem__, BY_UID.__getitem__)


def test_sudo_writes_for_the_invoking_user():
    user = decide({"SUDO_USER": "alice", "SUDO_UID": "1000", "SUDO_GID": "1000", "HOME": "/root"}, 0)
    assert user == TargetUser("alice", Path("/home/alice"), 1000, 1000, via_sudo=True)


def test_plain_root_is_root():
    user = decide({"HOME": "/root"}, 0)
    assert user == TargetUser("root", Path("/root"), 0, 0, via_sudo=False)


def test_sudo_to_root_from_root_is_root():
    assert decide({"SUDO_USER": "root", "HOME": "/root"}, 0).via_sudo is False


def test_sudo_user_set_but_not_root_is_ignored():
    # SUDO_USER leaks into child shells; only an effective root acts on someone's behalf.
    user = decide({"SUDO_USER": "root", "HOME": "/home/alice"}, 1000)
    assert user == TargetUser("alice", Path("/home/alice"), 1000, 1000, via_sudo=False)


def test_unknown_sudo_user_falls_back_to_root():
    assert decide({"SUDO_USER": "ghost", "HOME": "/root"}, 0).name == "root"


def test_uid_without_passwd_entry():
    user = decide({"HOME": "/tmp/h"}, 4242)
    assert user.name == "4242" and user.home == Path("/tmp/h") and user.via_sudo is False


ALICE_SUDO = TargetUser("alice", Path("/home/alice"), 1000, 1000, via_sudo=True)
ALICE = TargetUser("alice", Path("/home/alice"), 1000, 1000, via_sudo=False)


def test_state_root_override_wins():
    assert decide_state_root({"LABCTL_STATE_DIR": "/s"}, ALICE_SUDO) == Path("/s")


def test_state_root_under_sudo_ignores_roots_xdg():
    assert decide_state_root({"XDG_STATE_HOME": "/root/.st"}, ALICE_SUDO) == Path("/home/alice/.local/state/labctl")
    assert decide_state_root({"XDG_STATE_HOME": "/home/alice/st"}, ALICE_SUDO) == Path("/home/alice/st/labctl")


def test_state_root_plain():
    assert decide_state_root({"XDG_STATE_HOME": "/x"}, ALICE) == Path("/x/labctl")
    assert decide_state_root({}, ALICE) == Path("/home/alice/.local/state/labctl")
