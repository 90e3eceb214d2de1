"""An orchestrated saga: steps run in order, each with a compensating action, recorded in a durable log.

A distributed transaction across services cannot hold locks or roll back the way one database does. A saga
runs a sequence of local transactions instead (create the order, reserve the stock, charge the payment,
confirm the order), and when one of them fails it undoes the ones already done by running their
compensations in reverse order (refund, release, cancel). The orchestrator below decides what runs next;
the participants only answer.

The log is written ahead: "step-started" is recorded before a step is sent and its outcome after it answers,
so an orchestrator that crashes anywhere finds, on its next start, every saga that had not ended and the step
that was in flight. Recovery then either resumes (sends the in-flight step again and carries on) or
compensates (undoes everything that may have happened). Either way a step may reach its participant twice,
so every call carries an idempotency key, `<saga id>:<step>`, and the participant does the work once per key:
the action at most once, its compensation at most once, and a compensation that arrives before its action
blocks that action for good.

An outcome is one of three: done (the participant did it), refused (it said no, or said it did nothing: no
compensation needed), unknown (no answer: it may or may not have happened, so it is compensated too, which
is safe because compensating something that never happened does nothing).

This module is the engine on plain callables and SQLite; labshop.checkout gives it HTTP participants.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

_log = logging.getLogger("labshop.saga")

# Saga states kept in the log. The first two are unfinished: recovery drives them on.
RUNNING, COMPENSATING, COMPLETED, COMPENSATED = "running", "compensating", "completed", "compensated"
UNFINISHED = (RUNNING, COMPENSATING)

RECOVERY_POLICIES = ("resume", "compensate")


class Outcome(str, Enum):
    DONE = "done"
    REFUSED = "refused"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Answer:
    """What one call to a participant came to; `result` (done) is merged into the saga's context."""

    outcome: Outcome
    result: Mapping[str, Any] = field(default_factory=dict)
    reason: str = ""


# A step's action or compensation: (idempotency key, the saga's context) -> Answer.
Call = Callable[[str, Mapping[str, Any]], Awaitable[Answer]]


@dataclass(frozen=True)
class Step:
    name: str
    action: Call
    compensation: Call | None = None


class KeyReused(Exception):
    """A saga id (a client's idempotency key) was used before for a different request."""


class LogError(Exception):
    """The saga log cannot be opened or written."""


def idempotency_key(saga_id: str, step: str) -> str:
    """The key an action and its compensation carry: the same for every attempt, from every orchestrator."""
    return f"{saga_id}:{step}"


# --- the log -----------------------------------------------------------------------------------------------

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sagas (
    id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    input TEXT NOT NULL,
    steps TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    saga_id TEXT NOT NULL REFERENCES sagas (id),
    at REAL NOT NULL,
    kind TEXT NOT NULL,
    step TEXT,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_saga ON events (saga_id, seq);
CREATE INDEX IF NOT EXISTS sagas_by_status ON sagas (status, updated_at);
"""


@dataclass(frozen=True)
class Event:
    seq: int
    at: float
    kind: str
    step: str | None
    data: dict

    def to_json(self) -> dict:
        return {"seq": self.seq, "at": round(self.at, 3), "kind": self.kind, "step": self.step, **(
            {"data": self.data} if self.data else {})}


@dataclass(frozen=True)
class Record:
    id: str
    status: str
    input: dict
    steps: list[str]
    created_at: float
    updated_at: float


class SagaLog:
    """Sagas and their events in one SQLite file, each write committed (and synced) before it returns.

    One writer at a time: the orchestrator owning the file. SQLite's own locking keeps the file consistent,
    but two orchestrators driving the same sagas would each send their steps (see labshop.checkout's lock).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Autocommit mode: every statement is its own transaction unless BEGIN says otherwise.
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA busy_timeout = 5000")
            # WAL: a commit appends to the write-ahead file; FULL: and waits until it is on disk, so a record
            # that was written survives a crash of the process, the pod and the node.
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = FULL")
            self._db.executescript(_SCHEMA)
            self._db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('created_at', ?)", (str(time.time()),))
            row = self._db.execute("SELECT value FROM meta WHERE key = 'created_at'").fetchone()
        except (OSError, sqlite3.Error) as e:
            raise LogError(f"cannot open the saga log {self.path}: {e}") from e
        self.created_at = float(row[0])

    def close(self) -> None:
        self._db.close()

    def _write(self, statements: Sequence[tuple[str, tuple]]) -> None:
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for sql, args in statements:
                    self._db.execute(sql, args)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        except sqlite3.Error as e:
            raise LogError(f"cannot write the saga log {self.path}: {e}") from e

    def create(self, saga_id: str, input: Mapping[str, Any], steps: Sequence[str]) -> bool:
        """Record a new saga; False when one with this id exists already."""
        if self.record(saga_id) is not None:
            return False
        now = time.time()
        self._write([
            ("INSERT INTO sagas (id, status, input, steps, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)",
             (saga_id, RUNNING, json.dumps(dict(input), sort_keys=True), json.dumps(list(steps)), now, now)),
            ("INSERT INTO events (saga_id, at, kind, step, data) VALUES (?, ?, 'saga-started', NULL, ?)",
             (saga_id, now, json.dumps({"input": dict(input), "steps": list(steps)}))),
        ])
        return True

    def append(self, saga_id: str, kind: str, step: str | None = None, data: Mapping[str, Any] | None = None,
               *, status: str | None = None) -> None:
        """One event, and the saga's new status when it changes, in one transaction."""
        now = time.time()
        statements = [("INSERT INTO events (saga_id, at, kind, step, data) VALUES (?, ?, ?, ?, ?)",
                       (saga_id, now, kind, step, json.dumps(dict(data or {}), sort_keys=True)))]
        if status is not None:
            statements.append(("UPDATE sagas SET status = ?, updated_at = ? WHERE id = ?", (status, now, saga_id)))
        else:
            statements.append(("UPDATE sagas SET updated_at = ? WHERE id = ?", (now, saga_id)))
        self._write(statements)

    def record(self, saga_id: str) -> Record | None:
        row = self._db.execute("SELECT id, status, input, steps, created_at, updated_at FROM sagas WHERE id = ?",
                               (saga_id,)).fetchone()
        return _record(row) if row else None

    def events(self, saga_id: str) -> list[Event]:
        rows = self._db.execute("SELECT seq, at, kind, step, data FROM events WHERE saga_id = ? ORDER BY seq",
                                (saga_id,)).fetchall()
        return [Event(seq, at, kind, step, json.loads(data)) for seq, at, kind, step, data in rows]

    def unfinished(self) -> list[str]:
        """The sagas that have not ended, oldest first."""
        rows = self._db.execute("SELECT id FROM sagas WHERE status IN (?, ?) ORDER BY created_at",
                                UNFINISHED).fetchall()
        return [r[0] for r in rows]

    def recent(self, limit: int = 20, status: str | None = None) -> list[Record]:
        """The newest sagas first (optionally of one status)."""
        sql = "SELECT id, status, input, steps, created_at, updated_at FROM sagas"
        args: tuple = ()
        if status:
            sql, args = sql + " WHERE status = ?", (status,)
        rows = self._db.execute(sql + " ORDER BY created_at DESC, rowid DESC LIMIT ?", (*args, limit)).fetchall()
        return [_record(r) for r in rows]

    def counts(self) -> dict[str, int]:
        rows = self._db.execute("SELECT status, COUNT(*) FROM sagas GROUP BY status").fetchall()
        return {status: n for status, n in rows}


def _record(row: tuple) -> Record:
    saga_id, status, input, steps, created_at, updated_at = row
    return Record(saga_id, status, json.loads(input), json.loads(steps), created_at, updated_at)


# --- a saga's state, replayed from its events --------------------------------------------------------------

@dataclass
class StepState:
    name: str
    status: str = "pending"  # pending, in-flight, done, refused, unknown, compensating, compensated
    sent: int = 0            # how often the action was sent ("step-started": once, again after a crash)
    result: dict | None = None
    reason: str = ""
    compensation: dict | None = None

    @property
    def may_have_happened(self) -> bool:
        """Done, or sent without an answer we can trust: it must be compensated if the saga turns back."""
        return self.status in ("done", "unknown", "in-flight", "compensating")

    def to_json(self) -> dict:
        out: dict[str, Any] = {"name": self.name, "status": self.status, "sent": self.sent}
        if self.result is not None:
            out["result"] = self.result
        if self.reason:
            out["reason"] = self.reason
        if self.compensation is not None:
            out["compensation"] = self.compensation
        return out


@dataclass
class Saga:
    id: str
    status: str
    input: dict
    steps: list[StepState]
    created_at: float
    updated_at: float
    reason: str = ""     # why it turned back
    blocked: str = ""    # why its compensation cannot go on (until the configuration is fixed)
    events: list[Event] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.status not in UNFINISHED

    def step(self, name: str) -> StepState:
        return next(s for s in self.steps if s.name == name)

    @property
    def context(self) -> dict:
        """What each step is sent: the input, the saga id and every result so far, in step order."""
        ctx: dict[str, Any] = {**self.input, "saga_id": self.id}
        for s in self.steps:
            if s.result:
                ctx.update(s.result)
        return ctx

    def to_json(self, *, events: bool = False) -> dict:
        out: dict[str, Any] = {
            "id": self.id, "status": self.status, "input": self.input,
            "steps": [s.to_json() for s in self.steps],
            "created_at": round(self.created_at, 3), "updated_at": round(self.updated_at, 3),
        }
        if self.reason:
            out["reason"] = self.reason
        if self.blocked:
            out["blocked"] = self.blocked
        if events:
            out["log"] = [e.to_json() for e in self.events]
        return out


def replay(record: Record, events: Sequence[Event]) -> Saga:
    """A saga's state from its log: what each step came to, and why it turned back if it did."""
    steps = {name: StepState(name) for name in record.steps}
    saga = Saga(record.id, record.status, record.input, list(steps.values()), record.created_at,
                record.updated_at, events=list(events))
    for e in events:
        s = steps.get(e.step or "")
        if e.kind == "step-started" and s:
            s.status, s.sent = "in-flight", s.sent + 1
        elif e.kind == "step-done" and s:
            s.status, s.result, s.reason = "done", e.data.get("result", {}), ""
        elif e.kind == "step-failed" and s:
            s.status, s.reason = e.data.get("outcome", "unknown"), e.data.get("reason", "")
        elif e.kind == "compensation-started" and s:
            s.status = "compensating"
            saga.blocked = ""
        elif e.kind == "compensation-done" and s:
            s.status, s.compensation = "compensated", e.data.get("result", {})
        elif e.kind == "compensation-failed" and s:
            s.status, s.compensation = "compensating", {"error": e.data.get("reason", "")}
        elif e.kind == "compensating":
            saga.reason = e.data.get("reason", "")
        elif e.kind == "compensation-blocked":
            saga.blocked = e.data.get("reason", "")
    if saga.status in (COMPLETED, COMPENSATED):
        saga.blocked = ""
    return saga


# --- the orchestrator --------------------------------------------------------------------------------------

class Orchestrator:
    """Runs sagas over `steps`, one driver per saga at a time, recording every move in `log` first.

    `recovery` says what happens, after a restart, to a saga that was running: "resume" sends the step that
    was in flight again (with its key: the participant answers as the first time if it got there) and goes
    on; "compensate" turns it back. `pause_seconds` waits after each call has answered and before its
    outcome is logged: a test hook that opens the worst moment for a crash.
    """

    def __init__(self, log: SagaLog, steps: Sequence[Step], *, recovery: str = "resume",
                 pause_seconds: float = 0.0, logger: logging.Logger | None = None) -> None:
        if recovery not in RECOVERY_POLICIES:
            raise ValueError(f"recovery must be one of {', '.join(RECOVERY_POLICIES)}, got {recovery!r}")
        names = [s.name for s in steps]
        if len(set(names)) != len(names):
            raise ValueError(f"step names must be unique, got {names}")
        self.log = log
        self.steps = {s.name: s for s in steps}
        self.order = names
        self.recovery = recovery
        self.pause_seconds = pause_seconds
        self.logger = logger or _log
        self._locks: dict[str, asyncio.Lock] = {}

    def get(self, saga_id: str) -> Saga | None:
        record = self.log.record(saga_id)
        return replay(record, self.log.events(saga_id)) if record else None

    def busy(self, saga_id: str) -> bool:
        lock = self._locks.get(saga_id)
        return lock is not None and lock.locked()

    async def start(self, saga_id: str, input: Mapping[str, Any]) -> tuple[Saga, bool]:
        """Run a new saga to its end; for an id seen before, that saga (driven on if it has not ended).
        The flag says whether this call created it."""
        created = self.log.create(saga_id, input, self.order)
        if not created:
            record = self.log.record(saga_id)
            assert record is not None
            if record.input != json.loads(json.dumps(dict(input), sort_keys=True)):
                raise KeyReused(f"saga {saga_id} was started for a different request")
        else:
            self.logger.info("saga started", extra={"saga": saga_id, "steps": self.order})
        return await self.drive(saga_id), created

    async def recover(self) -> list[Saga]:
        """Drive every saga the log holds unfinished (at start-up: those a crash interrupted)."""
        done = []
        for saga_id in self.log.unfinished():
            saga = self.get(saga_id)
            if saga is None:
                continue
            if saga.status == RUNNING and self.recovery == "compensate":
                flying = [s.name for s in saga.steps if s.status == "in-flight"]
                reason = "the orchestrator restarted" + (f" while {flying[0]} was in flight" if flying else "")
                self.log.append(saga_id, "compensating", data={"reason": reason}, status=COMPENSATING)
            self.logger.info("recovering saga", extra={"saga": saga_id, "status": saga.status,
                                                        "policy": self.recovery})
            done.append(await self.drive(saga_id))
        return done

    async def drive(self, saga_id: str) -> Saga:
        """Take the saga as far as it can go now: to its end, or to a compensation that must be retried."""
        lock = self._locks.setdefault(saga_id, asyncio.Lock())
        async with lock:
            saga = self.get(saga_id)
            assert saga is not None, saga_id
            if saga.status == RUNNING:
                saga = await self._forward(saga)
            if saga.status == COMPENSATING:
                saga = await self._backward(saga)
        if saga.finished:
            self._locks.pop(saga_id, None)
        return saga

    async def _forward(self, saga: Saga) -> Saga:
        for name in [s.name for s in saga.steps]:
            state = saga.step(name)
            if state.status == "done":
                continue
            step = self.steps.get(state.name)
            if step is None:
                return self._turn_back(saga, f"step {state.name} is not configured any more")
            key = idempotency_key(saga.id, state.name)
            # Written before the call: after a crash the log shows this step may have reached its participant.
            self.log.append(saga.id, "step-started", state.name, {"key": key, "sent": state.sent + 1})
            answer = await _safely(step.action, key, saga.context)
            await self._pause()
            if answer.outcome is Outcome.DONE:
                self.log.append(saga.id, "step-done", state.name, {"result": dict(answer.result)})
                self.logger.info("step done", extra={"saga": saga.id, "step": state.name})
                saga = self._reload(saga)
                continue
            self.log.append(saga.id, "step-failed", state.name, {"outcome": answer.outcome.value,
                                                                 "reason": answer.reason})
            self.logger.warning("step failed", extra={"saga": saga.id, "step": state.name,
                                                      "outcome": answer.outcome.value, "reason": answer.reason})
            return self._turn_back(saga, f"{state.name} {answer.outcome.value}: {answer.reason}")
        self.log.append(saga.id, "saga-completed", status=COMPLETED)
        self.logger.info("saga completed", extra={"saga": saga.id})
        return self._reload(saga)

    def _turn_back(self, saga: Saga, reason: str) -> Saga:
        self.log.append(saga.id, "compensating", data={"reason": reason}, status=COMPENSATING)
        return self._reload(saga)

    async def _backward(self, saga: Saga) -> Saga:
        for name in reversed([s.name for s in saga.steps]):
            state = saga.step(name)
            if not state.may_have_happened:
                continue
            step = self.steps.get(state.name)
            if step is None or step.compensation is None:
                why = (f"step {state.name} is not configured any more" if step is None
                       else f"{state.name} has no compensation configured: what it did cannot be undone")
                if saga.blocked != why:
                    self.log.append(saga.id, "compensation-blocked", state.name, {"reason": why})
                    self.logger.error("saga cannot be compensated", extra={"saga": saga.id, "reason": why})
                return self._reload(saga)
            key = idempotency_key(saga.id, state.name)
            self.log.append(saga.id, "compensation-started", state.name, {"key": key})
            answer = await _safely(step.compensation, key, saga.context)
            await self._pause()
            if answer.outcome is not Outcome.DONE:
                # A compensation must succeed in the end; the saga stays "compensating" and is driven again.
                self.log.append(saga.id, "compensation-failed", state.name, {"outcome": answer.outcome.value,
                                                                             "reason": answer.reason})
                self.logger.warning("compensation failed", extra={"saga": saga.id, "step": state.name,
                                                                  "reason": answer.reason})
                return self._reload(saga)
            self.log.append(saga.id, "compensation-done", state.name, {"result": dict(answer.result)})
            self.logger.info("step compensated", extra={"saga": saga.id, "step": state.name})
        self.log.append(saga.id, "saga-compensated", status=COMPENSATED)
        self.logger.info("saga compensated", extra={"saga": saga.id})
        return self._reload(saga)

    def _reload(self, saga: Saga) -> Saga:
        found = self.get(saga.id)
        assert found is not None
        return found

    async def _pause(self) -> None:
        if self.pause_seconds:
            await asyncio.sleep(self.pause_seconds)


async def _safely(call: Call, key: str, context: Mapping[str, Any]) -> Answer:
    """A call that raised is a call whose outcome nobody knows."""
    try:
        return await call(key, dict(context))
    except asyncio.CancelledError:
        raise
    except Exception as e:  # a participant's client failing in a way we did not foresee
        _log.exception("call raised")
        return Answer(Outcome.UNKNOWN, reason=f"{type(e).__name__}: {e}")

