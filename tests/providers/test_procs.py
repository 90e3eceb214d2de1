import os
import socket
import sys
import time

import pytest

from labctl.providers import procs
from labctl.providers.procs import ProcessRecord, ProcessRegistry

pytestmark = pytest.mark.unit

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]


def gone(rec: ProcessRecord) -> bool:
    """No process (nor zombie) left: /proc has no such pid, or the pid was reused by a later process or thread."""
    stat = procs.proc_stat(rec.pid)
    return stat is None or stat[1] != rec.start_ticks


def test_parse_stat_with_spaces_and_parens_in_the_name():
    text = "4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10"
    assert procs.parse_stat(text) == ("S", 987654)


def record(**kw):
    base = dict(name="etcd", pid=10, argv=["/bin/etcd", "--x"], start_ticks=500, log="/l")
    return ProcessRecord(**{**base, **kw})


@pytest.mark.parametrize(("cmdline", "stat", "expected"), [
    (["/bin/etcd", "--x"], ("S", 500), True),
    ([], ("Z", 500), False),                     # exited, awaiting its reaper
    (["/bin/etcd", "--x"], ("R", 500), True),
    (["/bin/etcd", "--x"], ("S", 501), False),   # pid reused by a later process with the same command
    (["/bin/bash"], ("S", 500), False),          # pid reused by something else
    (None, None, False),                         # gone
    ([], ("S", 500), True),                      # in the middle of exec or exit: pid and start time match
    ([], ("S", 7), False),                       # a kernel thread that got the pid
])
def test_record_matches(cmdline, stat, expected):
    assert procs.record_matches(record(), cmdline, stat) is expected


def test_a_zombie_leader_with_live_threads_is_still_exiting():
    # During exit_group the first thread can be a zombie while the others still hold files and sockets.
    assert procs.record_matches(record(), [], ("Z", 500), threads=4) is True
    assert procs.record_matches(record(), [], ("Z", 500), threads=1) is False
    assert procs.record_matches(record(), [], ("Z", 499), threads=4) is False


def test_record_json_round_trip():
    r = record()
    assert ProcessRecord.from_json(r.to_json()) == r


def test_free_ports_are_distinct_and_bindable():
    ports = procs.free_ports(5)
    assert len(set(ports)) == 5
    for port in ports:
        assert procs.port_free(port)


def test_port_free_sees_a_listener():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert procs.port_free(port) is False
        chosen = procs.choose_ports({"apiserver": port, "etcd": None})
    assert chosen["apiserver"] != port
    assert len(set(chosen.values())) == 2


def test_choose_ports_keeps_free_wishes_and_never_repeats():
    free = lambda port, host: port != 3000  # noqa: E731
    chosen = procs.choose_ports({"a": 2000, "b": 2000, "c": 3000, "d": None}, is_free=free)
    assert chosen["a"] == 2000
    assert len(set(chosen.values())) == 4
    assert chosen["c"] != 3000


def test_start_records_the_live_process_and_stop_leaves_nothing(tmp_path):
    reg = ProcessRegistry(tmp_path)
    rec = reg.start("sleeper", SLEEPER)
    assert reg.running("sleeper") == rec
    assert not gone(rec)
    assert os.getsid(rec.pid) == rec.pid  # its own session: a Ctrl-C in labctl's terminal does not reach it
    assert reg.stop() == ["sleeper"]
    assert gone(rec)
    assert not reg.pid_file("sleeper").exists()


def test_stop_kills_what_ignores_sigterm(tmp_path):
    reg = ProcessRegistry(tmp_path)
    stubborn = [sys.executable, "-c",
                "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); "
                "time.sleep(60)"]
    rec = reg.start("stubborn", stubborn)
    assert procs.wait_for(lambda: "ready" in reg.tail("stubborn"), timeout=10)
    started = time.monotonic()
    assert reg.stop(timeout=0.5) == ["stubborn"]
    assert time.monotonic() - started < 5
    assert gone(rec)


def test_stale_pid_files_are_detected_and_never_signalled(tmp_path):
    reg = ProcessRegistry(tmp_path)
    # 1. a process that has exited
    gone = reg.start("gone", [sys.executable, "-c", "pass"])
    assert procs.wait_for(lambda: reg.running("gone") is None, timeout=10)
    # 2. a live process, but not the recorded command (the pid was reused by something else)
    me = os.getpid()
    stat = procs.proc_stat(me)
    assert stat is not None
    reg.pid_file("reused").write_text(ProcessRecord("reused", me, ["/usr/bin/etcd"], stat[1], "x").to_json())
    # 3. the recorded command line, but a different start time
    live = reg.start("restarted", SLEEPER)
    reg.pid_file("restarted").write_text(
        ProcessRecord("restarted", live.pid, live.argv, live.start_ticks - 1, live.log).to_json())
    # 4. garbage
    reg.pid_file("garbage").write_text("not json")

    assert reg.running("reused") is None and reg.running("restarted") is None
    assert sorted(reg.clean_stale()) == ["garbage", "gone", "restarted", "reused"]
    assert reg.names() == []
    assert reg.stop() == []  # nothing to stop; above all, this test process was not signalled
    assert procs.is_running(live)  # the "restarted" process was never signalled either
    os.kill(live.pid, 15)
    assert procs.wait_for(lambda: not procs.is_running(live), timeout=10)
    assert gone.pid not in procs._children


def test_tail_shows_the_last_run_only(tmp_path):
    reg = ProcessRegistry(tmp_path)
    reg.start("talker", [sys.executable, "-c", "print('first run')"])
    assert procs.wait_for(lambda: "first run" in reg.tail("talker"), timeout=10)
    reg.start("talker", [sys.executable, "-c", "print('line1'); print('line2'); print('line3')"])
    assert procs.wait_for(lambda: "line3" in reg.tail("talker"), timeout=10)
    assert reg.tail("talker") == "line1\nline2\nline3"
    assert reg.tail("talker", lines=2) == "line2\nline3"
    assert reg.tail("nobody") == ""


def test_rss_of_a_live_process():
    rss = procs.proc_rss_bytes(os.getpid())
    assert rss is not None and rss > 1_000_000
