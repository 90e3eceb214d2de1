"""Background processes a cluster runs on the host: start, track, check and stop them safely.

Each process gets a pid file (JSON: pid, command line, start time in clock ticks since boot from
/proc/<pid>/stat, log path). A pid file is trusted only while the live process with that pid has the same
command line and start time, so a reused pid is never signalled. Processes run in their own session, so they
outlive labctl and a Ctrl-C in the terminal does not reach them.
"""

from __future__ import annotations

import atexit
import fcntl
import json
import os
import signal
import socket
import subprocess
import time
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping, Sequence

# Popen objects of the children this labctl process started, by pid: polling them reaps a child that exits,
# so neither a zombie nor a "still running" warning is left behind.
_children: dict[int, subprocess.Popen] = {}


def _release_children() -> None:
    """At exit: reap children that ended; let the rest (a cluster left running on purpose) go without a warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        for child in list(_children.values()):
            child.poll()
        _children.clear()


atexit.register(_release_children)

# Written to a log before each start, so the tail of a log shows the last run only.
_RUN_MARKER = "--- labctl started "


@dataclass(frozen=True)
class ProcessRecord:
    """What a pid file says about a process."""

    name: str
    pid: int
    argv: list[str]
    start_ticks: int
    log: str

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "ProcessRecord":
        data = json.loads(text)
        return cls(name=str(data["name"]), pid=int(data["pid"]), argv=[str(a) for a in data["argv"]],
                   start_ticks=int(data["start_ticks"]), log=str(data["log"]))


# -- /proc --------------------------------------------------------------------------------------------------

def parse_stat(text: str) -> tuple[str, int]:
    """(state, start time in clock ticks) from the text of /proc/<pid>/stat.

    The command name (field 2) may contain spaces and parentheses, so fields are counted from the last ')'.
    """
    rest = text[text.rindex(")") + 2:].split()
    return rest[0], int(rest[19])  # fields 3 (state) and 22 (starttime)


def proc_stat(pid: int) -> tuple[str, int] | None:
    try:
        return parse_stat(Path(f"/proc/{pid}/stat").read_text())
    except (FileNotFoundError, ProcessLookupError, ValueError, IndexError):
        return None


def proc_cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return [part.decode(errors="replace") for part in raw.split(b"\0")[:-1]]


def proc_rss_bytes(pid: int) -> int | None:
    """Resident set size of a process, from /proc/<pid>/status."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def proc_threads(pid: int) -> int:
    """How many threads a process has (0 when it is gone), from /proc/<pid>/status."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Threads:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, ValueError):
        return 0
    return 0


def record_matches(record: ProcessRecord, cmdline: Sequence[str] | None, stat: tuple[str, int] | None,
                   threads: int = 1) -> bool:
    """Pure check: is the live process (its cmdline, stat and thread count) the one the pid file recorded?

    The pid and its start time identify a process (a pid is reused only after the counter wraps); the command
    line guards against the rest. While a process exits, its first thread may already show as a zombie with
    other threads still running, and its command line reads empty once its memory is released but not yet its
    files and sockets: it still counts as running until it is a zombie alone.
    """
    if stat is None:
        return False
    state, start = stat
    if start != record.start_ticks or state == "X":
        return False
    if state == "Z":
        return threads > 1
    return not cmdline or list(cmdline) == list(record.argv)


def is_running(record: ProcessRecord) -> bool:
    """True when the recorded process is alive and is really the one recorded."""
    child = _children.get(record.pid)
    if child is not None:  # our own child: waitpid is authoritative (and reaps it), /proc may lag behind
        if child.poll() is not None:
            del _children[record.pid]
            return False
        stat = proc_stat(record.pid)
        return stat is not None and stat[1] == record.start_ticks
    return record_matches(record, proc_cmdline(record.pid), proc_stat(record.pid), proc_threads(record.pid))


# -- ports --------------------------------------------------------------------------------------------------

def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when nothing listens on host:port (binding it succeeds)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_ports(count: int, host: str = "127.0.0.1", avoid: Iterable[int] = ()) -> list[int]:
    """`count` distinct ports the kernel reports free on host right now."""
    taken = set(avoid)
    socks, ports = [], []
    try:
        while len(ports) < count:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(s)  # held open until all are chosen, so the kernel never hands out one twice
            s.bind((host, 0))
            port = s.getsockname()[1]
            if port not in taken:
                taken.add(port)
                ports.append(port)
    finally:
        for s in socks:
            s.close()
    return ports


def choose_ports(wanted: Mapping[str, int | None], host: str = "127.0.0.1",
                 is_free: Callable[[int, str], bool] = port_free) -> dict[str, int]:
    """A port for each name: the one asked for when it is still free, else a new free one (all distinct)."""
    chosen: dict[str, int] = {}
    for name, port in wanted.items():
        if port and port not in chosen.values() and is_free(port, host):
            chosen[name] = port
    missing = [name for name in wanted if name not in chosen]
    for name, port in zip(missing, free_ports(len(missing), host, avoid=chosen.values())):
        chosen[name] = port
    return {name: chosen[name] for name in wanted}


# -- the registry -------------------------------------------------------------------------------------------

class ProcessRegistry:
    """The processes of one cluster: `<name>.pid` and `<name>.log` files in one directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def pid_file(self, name: str) -> Path:
        return self.directory / f"{name}.pid"

    def log_file(self, name: str) -> Path:
        return self.directory / f"{name}.log"

    def start(self, name: str, argv: Sequence[str], *, env: Mapping[str, str] | None = None,
              cwd: Path | None = None) -> ProcessRecord:
        """Start `argv` in its own session, output appended to `<name>.log`, and write its pid file."""
        self.directory.mkdir(parents=True, exist_ok=True)
        log_path = self.log_file(name)
        with open(log_path, "ab") as log:
            log.write(f"{_RUN_MARKER}{time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(argv)}\n".encode())
            log.flush()
            child = subprocess.Popen(
                list(argv), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, env=dict(env) if env is not None else None, cwd=cwd,
            )
        _children[child.pid] = child
        stat = proc_stat(child.pid)
        # The kernel records the start time at fork; if the child already exited it cannot be read, and the
        # record then matches nothing, which is what a dead process should look like.
        record = ProcessRecord(name, child.pid, list(argv), stat[1] if stat else -1, str(log_path))
        tmp = self.pid_file(name).with_suffix(".pid.tmp")
        tmp.write_text(record.to_json())
        os.replace(tmp, self.pid_file(name))
        return record

    def read(self, name: str) -> ProcessRecord | None:
        """The record in `<name>.pid`, or None when there is none or it is unreadable."""
        try:
            return ProcessRecord.from_json(self.pid_file(name).read_text())
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return None

    def names(self) -> list[str]:
        return sorted(p.stem for p in self.directory.glob("*.pid")) if self.directory.is_dir() else []

    def running(self, name: str) -> ProcessRecord | None:
        """The record of `name` if its process is alive and is the one recorded."""
        record = self.read(name)
        return record if record is not None and is_running(record) else None

    def clean_stale(self) -> list[str]:
        """Remove pid files whose process is gone or is now a different process; returns their names."""
        stale = []
        for name in self.names():
            if self.running(name) is None:
                self.pid_file(name).unlink(missing_ok=True)
                stale.append(name)
        return stale

    def stop(self, names: Iterable[str] | None = None, timeout: float = 10.0) -> list[str]:
        """Stop processes (all by default): SIGTERM together, SIGKILL after `timeout`; returns names stopped.

        A pid file whose pid now belongs to another process is removed without signalling anything.
        """
        names = list(self.names() if names is None else names)
        live: dict[str, ProcessRecord] = {}
        for name in names:
            record = self.running(name)
            if record is not None:
                live[name] = record
                _signal(record.pid, signal.SIGTERM)
            else:
                self.pid_file(name).unlink(missing_ok=True)
        deadline = time.monotonic() + timeout
        pending = dict(live)
        killed = False
        while True:
            pending = {n: r for n, r in pending.items() if is_running(r)}
            if not pending:
                break
            now = time.monotonic()
            if now > deadline:
                if killed:
                    break  # stuck in the kernel (uninterruptible): keep its pid file so it is not forgotten
                for record in pending.values():
                    _signal(record.pid, signal.SIGKILL)
                killed, deadline = True, now + 5.0
            time.sleep(0.05)
        for name in live:
            if name not in pending:
                self.pid_file(name).unlink(missing_ok=True)
        return [name for name in live if name not in pending]

    def tail(self, name: str, lines: int = 12) -> str:
        """The last lines of a process's log (its last run only)."""
        try:
            text = self.log_file(name).read_text(errors="replace")
        except FileNotFoundError:
            return ""
        run = text.splitlines()
        starts = [i for i, line in enumerate(run) if line.startswith(_RUN_MARKER)]
        if starts:
            run = run[starts[-1] + 1:]
        return "\n".join(line for line in run[-lines:])


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.1,
             check: Callable[[], None] | None = None) -> bool:
    """Poll `predicate` every `interval` until it holds (True) or `timeout` passes (False).

    `check` runs before each poll and may raise to abort early (a component that died, say).
    """
    deadline = time.monotonic() + timeout
    while True:
        if check is not None:
            check()
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


@contextmanager
def exclusive(lock_file: Path, what: str, on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold an exclusive lock on `lock_file` (created if needed), so two `up`/`down` never race."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait(f"Waiting for another labctl working on {what}")
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
