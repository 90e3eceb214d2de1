"""A service's own PostgreSQL database: where it is, connecting to it, creating its tables, and readiness.

Where: a URL in the service's own variable (ORDERS_DATABASE_URL, INVENTORY_DATABASE_URL), such as
postgresql://orders-db:5432/orders, and/or libpq's PG* variables (PGHOST, PGPORT, PGUSER, PGPASSWORD,
PGDATABASE). As in libpq, what the URL says wins and the PG* variables fill in the rest, so the URL can sit in a
ConfigMap while the user and password come from a Secret (`secretKeyRef`) as PGUSER and PGPASSWORD.

A connection is opened per unit of work (and one long-lived one for the outbox relay): the shop's load is
small, and a fresh connection needs no reconnect logic when the database restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass

import psycopg
from psycopg import conninfo

from labshop.config import ConfigError, Env
from labshop.web import Readiness

# libpq's environment variables, and the connection parameter each one stands for.
PG_ENV = {"PGHOST": "host", "PGPORT": "port", "PGUSER": "user", "PGPASSWORD": "password", "PGDATABASE": "dbname",
          "PGSSLMODE": "sslmode"}
CONNECT_TIMEOUT_SECONDS = 3


class DatabaseUnavailable(Exception):
    """The database could not be reached or refused the login; the message says why in one line."""


@dataclass(frozen=True)
class Database:
    """Connection parameters for one service's database (the password among them, never logged)."""

    params: Mapping[str, str]
    variable: str
    password_in_url: bool = False

    @classmethod
    def from_env(cls, env: Env, variable: str) -> Database:
        """From `variable` (a URL or key=value string) completed by the PG* variables; ConfigError if unusable."""
        url = env.raw(variable)
        try:
            from_url = conninfo.conninfo_to_dict(url) if url else {}
        except psycopg.ProgrammingError as e:
            raise ConfigError(f"{variable} is not a PostgreSQL URL or connection string: {one_line(e)}") from None
        params = {k: str(v) for k, v in from_url.items()}
        for name, param in PG_ENV.items():
            if param not in params and env.raw(name):
                params[param] = env.raw(name)
        if not params.get("host"):
            raise ConfigError(f"{variable} (or PGHOST) must name the database's host, "
                              f"e.g. postgresql://orders-db:5432/orders")
        return cls(params, variable, "password" in from_url)

    def describe(self) -> str:
        """host:port/dbname and the user, for logs and errors (never the password)."""
        p = self.params
        where = f"{p.get('host')}:{p.get('port', '5432')}/{p.get('dbname', p.get('user', ''))}"
        return f"{where} as {p['user']}" if p.get("user") else where

    @contextlib.asynccontextmanager
    async def session(self, application_name: str) -> AsyncIterator[psycopg.AsyncConnection]:
        """A connection for one unit of work, closed afterwards."""
        conn = await self.connect(application_name)
        try:
            yield conn
        finally:
            await conn.close()

    async def connect(self, application_name: str, *, autocommit: bool = True) -> psycopg.AsyncConnection:
        """A new connection (autocommit: each `conn.transaction()` block is one transaction), or
        DatabaseUnavailable when the database cannot be reached or refuses the login."""
        try:
            return await psycopg.AsyncConnection.connect(
                **self.params, application_name=application_name[:63], autocommit=autocommit,
                connect_timeout=CONNECT_TIMEOUT_SECONDS)
        except psycopg.OperationalError as e:
            raise DatabaseUnavailable(f"cannot connect to {self.describe()}: {one_line(e)}") from None


def failure(e: Exception) -> str:
    """What went wrong with the database, in one line, for an answer or a log record."""
    return str(e) if isinstance(e, DatabaseUnavailable) else one_line(e)


def one_line(e: BaseException) -> str:
    """The first line of a database error, the one that says what went wrong."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return (lines[0] if lines else type(e).__name__)[:200]


async def create_schema(conn: psycopg.AsyncConnection, statements: str, lock_id: int) -> None:
    """Run CREATE ... IF NOT EXISTS statements in one transaction. Every replica does so when it starts, and
    two concurrent `CREATE TABLE IF NOT EXISTS` can still collide in the catalog: an advisory lock takes turns."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock_id,))
        await conn.execute(statements)


class DatabaseReadiness(Readiness):
    """Readiness that also waits for the service's start-up work on its database (its tables exist).

    Later outages of the database do not make the pods unready: requests then fail one by one with 503 while
    the pods stay in the Service, so nothing has to wait for a readiness round trip once the database is back.
    """

    def __init__(self, not_ready_file: str = "") -> None:
        super().__init__(not_ready_file)
        self.database_ready = False

    def state(self) -> tuple[bool, str]:
        ready, reason = super().state()
        if ready and not self.database_ready:
            return False, "waiting for the database"
        return ready, reason


async def prepare(db: Database, work: Callable[[psycopg.AsyncConnection], Awaitable[None]],
                  readiness: DatabaseReadiness, done: asyncio.Event, log: logging.Logger, *,
                  application_name: str, max_wait_seconds: float = 5.0) -> None:
    """Retry `work` (creating tables) until it succeeds, then report ready. The database may well start after
    the service: exiting would only make Kubernetes restart a pod that has to wait anyway."""
    wait, last = 0.25, ""
    while True:
        try:
            conn = await db.connect(application_name)
            try:
                await work(conn)
            finally:
                await conn.close()
        except (DatabaseUnavailable, psycopg.Error) as e:
            reason = failure(e)
            if reason != last:  # once per distinct reason: a database that takes a minute is not 120 lines
                log.warning("database not ready", extra={"database": db.describe(), "reason": reason})
                last = reason
            await asyncio.sleep(wait)
            wait = min(max_wait_seconds, wait * 2)
            continue
        readiness.database_ready = True
        done.set()
        log.info("database ready", extra={"database": db.describe()})
        return


async def wait_or_stop(stop: asyncio.Event, seconds: float) -> None:
    """Sleep for `seconds`, or less when `stop` is set meanwhile."""
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except asyncio.TimeoutError:
        pass
