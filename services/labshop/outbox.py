"""orders with its own PostgreSQL database, telling inventory about each order through a transactional outbox.

Switched on by ORDERS_DATABASE_URL (or PGHOST; see labshop.db for how the two combine with PGUSER/PGPASSWORD
from a Secret). Without either, orders keeps its orders in memory and calls inventory synchronously
(labshop.orders).

POST /orders        {"sku", "quantity", "id" (optional, chosen by the client)} -> 201 the order, accepted; the
                    same id again with the same contents -> 200 the first answer; with other contents -> 409.
                    404 unknown product, 503 when the database cannot be reached
GET  /orders/{id}   the order, and where its event is (pending, published, by which relay)
GET  /outbox        how many events wait, were published, or were refused

Each order produces the event `order.placed` (id `placed-<order id>`), which inventory applies to its stock:
eventual consistency, instead of a call inventory must answer before the order can be taken. How the event
leaves orders is ORDERS_PUBLISH:

- `outbox` (the default): the order row and the event's outbox row are written in ONE transaction, so both exist
  or neither does. A relay publishes what the outbox holds: it claims unpublished rows with
  `SELECT ... FOR UPDATE SKIP LOCKED`, sends each to inventory's POST /events (the event id as Idempotency-Key),
  and marks them published in the same transaction as the claim. Two relays never claim the same row; a relay
  that dies mid-batch leaves its rows unpublished (its transaction rolls back) and another sends them again,
  which inventory, deduplicating by event id, applies once.
- `direct`: the order is committed, then the event is sent. This is the dual write: when inventory cannot be
  reached at that moment (or orders dies in between) the order exists and the event is lost for good.

The relay runs inside every orders replica (OUTBOX_RELAY, default on) rather than as a service of its own: the
outbox lives in orders' database, which only orders may reach (its NetworkPolicy admits orders' pods), and with
two replicas the shop runs two relays side by side, which is what SKIP LOCKED is for.

Environment: ORDERS_DATABASE_URL, PG*, ORDERS_PUBLISH (outbox | direct), OUTBOX_RELAY (on | off),
OUTBOX_BATCH_SIZE (default 10), OUTBOX_INTERVAL_SECONDS (how often an idle relay looks, default 0.5),
OUTBOX_BACKOFF_MAX_SECONDS (the longest wait after failures, default 5), INVENTORY_URL and its call policy
(INVENTORY_TIMEOUT_SECONDS, INVENTORY_RETRIES, INVENTORY_BACKOFF_SECONDS; labshop.calls), plus what every
service reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from prometheus_client import Counter, Gauge
from psycopg.types.json import Jsonb
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from labshop import logs
from labshop.calls import CallPolicy, Dependency, DependencyError
from labshop.config import Common, ConfigError, Env
from labshop.data import Catalog
from labshop.db import (
    Database,
    DatabaseReadiness,
    DatabaseUnavailable,
    create_schema,
    failure,
    prepare,
    wait_or_stop,
)
from labshop.web import Built, create_app, json_body, json_error

NAME = "orders"
DATABASE_VARIABLE = "ORDERS_DATABASE_URL"
EVENT_TYPE = "order.placed"
ORDER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
# Answers that will not change however often the same event is sent again: the event is set aside.
PERMANENT = frozenset(range(400, 500)) - {408, 409, 425, 429}

PUBLISHED = Counter("labshop_outbox_published_total", "Outbox events this instance's relay published.")
PUBLISH_FAILURES = Counter("labshop_outbox_publish_failures_total",
                           "Attempts to publish an outbox event that failed: retry (sent again later) or "
                           "permanent (set aside, never sent again).", ["kind"])
PENDING = Gauge("labshop_outbox_pending", "Events in the outbox waiting to be published, as last counted.")
LOST = Counter("labshop_events_lost_total",
               "Events orders could not send right after committing the order (ORDERS_PUBLISH=direct): "
               "nothing sends them again.")

SCHEMA = """
CREATE TABLE IF NOT EXISTS orders (
    id          text PRIMARY KEY,
    sku         text NOT NULL,
    quantity    integer NOT NULL CHECK (quantity > 0),
    total_cents integer NOT NULL,
    status      text NOT NULL DEFAULT 'accepted',
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS outbox (
    seq          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id     text NOT NULL UNIQUE,
    type         text NOT NULL,
    aggregate_id text NOT NULL,
    payload      jsonb NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    attempts     integer NOT NULL DEFAULT 0,
    last_error   text,
    published_at timestamptz,
    published_by text,
    failed_at    timestamptz
);
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (seq) WHERE published_at IS NULL AND failed_at IS NULL;
"""
SCHEMA_LOCK = 0x6F7264657273  # "orders": one advisory lock id for every replica creating the tables

# The relay's claim: the oldest unpublished rows that no other relay holds right now. SKIP LOCKED passes over
# rows another transaction has locked instead of waiting for it, so two relays take different rows at once.
CLAIM = """
SELECT seq, payload FROM outbox
 WHERE published_at IS NULL AND failed_at IS NULL
 ORDER BY seq
 LIMIT %s
 FOR UPDATE SKIP LOCKED
"""


class PublishFailed(Exception):
    """An event was not accepted; `permanent` when sending it again cannot help."""

    def __init__(self, reason: str, *, permanent: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent


Publish = Callable[[dict], Awaitable[None]]


def order_placed(order: dict) -> dict:
    """The event an order produces. Its id follows from the order's, so it is unique per order and anyone
    holding the order id can find its effect (GET /reservations/{order id} on inventory)."""
    return {"id": f"placed-{order['id']}", "type": EVENT_TYPE, "order_id": order["id"], "sku": order["sku"],
            "quantity": order["quantity"]}


def http_publisher(inventory: Dependency) -> Publish:
    """Send an event to inventory's POST /events, with its id as the Idempotency-Key."""

    async def publish(event: dict) -> None:
        try:
            response = await inventory.call("POST", "/events", json=event, idempotency_key=event["id"])
        except DependencyError as e:
            raise PublishFailed(str(e)) from None
        if not 200 <= response.status_code < 300:
            raise PublishFailed(f"inventory answered {response.status_code}: {response.text[:200]}",
                                permanent=response.status_code in PERMANENT)

    return publish


# -- the store -------------------------------------------------------------------------------------------------

class OrderConflict(Exception):
    """An order with this id exists with other contents."""


async def create_tables(conn: psycopg.AsyncConnection) -> None:
    await create_schema(conn, SCHEMA, SCHEMA_LOCK)


async def insert_order(conn: psycopg.AsyncConnection, order: dict, *, with_event: bool) -> tuple[dict, bool]:
    """Store `order` and, `with_event`, its event in the outbox, in one transaction: (the stored order, whether
    it is new). An order id seen before returns the stored order unchanged (OrderConflict if it differs)."""
    async with conn.transaction():
        cur = await conn.execute(
            "INSERT INTO orders (id, sku, quantity, total_cents) VALUES (%s, %s, %s, %s)"
            " ON CONFLICT (id) DO NOTHING",
            (order["id"], order["sku"], order["quantity"], order["total_cents"]))
        if cur.rowcount == 0:
            stored = await fetch_order(conn, order["id"])
            assert stored is not None  # the conflict was on this very id, and orders are never deleted
            if (stored["sku"], stored["quantity"]) != (order["sku"], order["quantity"]):
                raise OrderConflict(f"order {order['id']} exists with other contents")
            return stored, False
        if with_event:
            event = order_placed(order)
            await conn.execute(
                "INSERT INTO outbox (event_id, type, aggregate_id, payload) VALUES (%s, %s, %s, %s)",
                (event["id"], event["type"], order["id"], Jsonb(event)))
    stored = await fetch_order(conn, order["id"])
    assert stored is not None
    return stored, True


async def fetch_order(conn: psycopg.AsyncConnection, order_id: str) -> dict | None:
    cur = await conn.execute(
        "SELECT o.id, o.sku, o.quantity, o.total_cents, o.status, o.created_at,"
        "       e.event_id, e.published_at, e.published_by, e.attempts, e.last_error, e.failed_at"
        "  FROM orders o LEFT JOIN outbox e ON e.aggregate_id = o.id AND e.type = %s"
        " WHERE o.id = %s", (EVENT_TYPE, order_id))
    row = await cur.fetchone()
    if row is None:
        return None
    (oid, sku, quantity, total, status, created, event_id, published_at, published_by, attempts, last_error,
     failed_at) = row
    order: dict[str, Any] = {"id": oid, "sku": sku, "quantity": quantity, "total_cents": total, "status": status,
                             "created_at": created.isoformat()}
    if event_id is None:
        order["event"] = None
    else:
        state = "published" if published_at else "failed" if failed_at else "pending"
        order["event"] = {"id": event_id, "state": state, "attempts": attempts,
                          "published_at": published_at.isoformat() if published_at else None,
                          "published_by": published_by, "last_error": last_error}
    return order


async def outbox_counts(conn: psycopg.AsyncConnection) -> dict:
    cur = await conn.execute(
        "SELECT count(*) FILTER (WHERE published_at IS NULL AND failed_at IS NULL),"
        "       count(*) FILTER (WHERE published_at IS NOT NULL),"
        "       count(*) FILTER (WHERE failed_at IS NOT NULL),"
        "       extract(epoch FROM now() - min(created_at) FILTER (WHERE published_at IS NULL AND failed_at IS NULL))"
        "  FROM outbox")
    pending, published, failed, oldest = await cur.fetchone()  # type: ignore[misc]
    return {"pending": pending, "published": published, "failed": failed,
            "oldest_pending_seconds": round(float(oldest), 1) if oldest is not None else None}


# -- the relay -------------------------------------------------------------------------------------------------

@dataclass
class Relay:
    """Publishes what the outbox holds, batch by batch, each batch in one transaction with its claim."""

    db: Database
    publish: Publish
    log: logging.Logger
    name: str = ""
    batch_size: int = 10
    interval_seconds: float = 0.5
    backoff_max_seconds: float = 5.0

    def __post_init__(self) -> None:
        self.name = self.name or f"relay/{socket.gethostname()}/{os.getpid()}"

    async def run_batch(self, conn: psycopg.AsyncConnection) -> tuple[int, int, bool]:
        """Claim, publish and mark one batch: (rows claimed, rows published, whether no publish has to be
        tried again).

        Publishing stops at the first event that fails for a reason that may pass (inventory down): it and the
        rest stay unpublished, in order, for the next try. An event refused for good is set aside (failed_at).
        """
        published: list[int] = []
        async with conn.transaction():
            cur = await conn.execute(CLAIM, (self.batch_size,))
            rows = await cur.fetchall()
            for seq, event in rows:
                try:
                    await self.publish(event)
                except PublishFailed as e:
                    PUBLISH_FAILURES.labels("permanent" if e.permanent else "retry").inc()
                    if e.permanent:
                        self.log.error("event refused, set aside", extra={"event": event.get("id"), "reason": e.reason})
                        await conn.execute("UPDATE outbox SET failed_at = now(), attempts = attempts + 1,"
                                           " last_error = %s WHERE seq = %s", (e.reason, seq))
                        continue
                    self.log.warning("publish failed, will retry", extra={"event": event.get("id"), "reason": e.reason})
                    await conn.execute("UPDATE outbox SET attempts = attempts + 1, last_error = %s WHERE seq = %s",
                                       (e.reason, seq))
                    await self._mark(conn, published)
                    return len(rows), len(published), False
                published.append(seq)
            await self._mark(conn, published)
        return len(rows), len(published), True

    async def _mark(self, conn: psycopg.AsyncConnection, published: list[int]) -> None:
        if published:
            await conn.execute("UPDATE outbox SET published_at = now(), published_by = %s,"
                               " attempts = attempts + 1, last_error = NULL WHERE seq = ANY(%s)",
                               (self.name, published))

    async def run(self, stop: asyncio.Event, ready: asyncio.Event | None = None) -> None:
        """Relay until `stop` is set (checked between batches, so a batch is finished, not abandoned)."""
        while ready is not None and not ready.is_set():  # the tables first; give up at once when stopping
            if stop.is_set():
                return
            await wait_or_stop(stop, 0.2)
        conn: psycopg.AsyncConnection | None = None
        wait, last_problem = self.interval_seconds, ""
        self.log.info("relay started", extra={"relay": self.name, "batch_size": self.batch_size})
        try:
            while not stop.is_set():
                ok, claimed = True, 0
                try:
                    if conn is None or conn.closed:
                        conn = await self.db.connect(self.name)
                    claimed, published, ok = await self.run_batch(conn)
                    PUBLISHED.inc(published)
                    PENDING.set((await outbox_counts(conn))["pending"])
                    last_problem = ""
                except (DatabaseUnavailable, psycopg.Error) as e:
                    ok = False
                    problem = failure(e)
                    if problem != last_problem:
                        self.log.warning("relay cannot use the database", extra={"reason": problem})
                        last_problem = problem
                    if conn is not None:
                        await conn.close()
                        conn = None
                except Exception:  # a relay that dies quietly would leave every later event in the outbox
                    ok = False
                    self.log.exception("relay batch failed")
                    if conn is not None:
                        await conn.close()
                        conn = None
                if ok and claimed == self.batch_size:
                    wait = self.interval_seconds
                    continue  # a full batch: there may be more right away
                wait = self.interval_seconds if ok else min(self.backoff_max_seconds, max(wait, 0.25) * 2)
                await wait_or_stop(stop, wait)
        finally:
            if conn is not None:
                await conn.close()
            self.log.info("relay stopped", extra={"relay": self.name})


# -- the service -----------------------------------------------------------------------------------------------

def create(env: Env) -> Built:
    """orders backed by its own database (ORDERS_DATABASE_URL / PG*), configured from `env`."""
    common = Common.from_env(env)
    log = logs.setup(NAME, common.log_level)
    db = Database.from_env(env, DATABASE_VARIABLE)
    mode = env.text("ORDERS_PUBLISH", "outbox").lower()
    if mode not in ("outbox", "direct"):
        raise ConfigError(f"ORDERS_PUBLISH must be outbox or direct, got {mode!r}")
    relay_switch = env.text("OUTBOX_RELAY", "on").lower()
    if relay_switch not in ("on", "off"):
        raise ConfigError(f"OUTBOX_RELAY must be on or off, got {relay_switch!r}")
    inventory_url = env.url("INVENTORY_URL")
    relay_on = mode == "outbox" and relay_switch == "on"
    if (relay_on or mode == "direct") and not inventory_url:
        raise ConfigError("INVENTORY_URL must be set: orders publishes its events to inventory's POST /events")
    inventory = Dependency("inventory", inventory_url, CallPolicy.from_env(env, "INVENTORY")) if inventory_url else None
    publish = http_publisher(inventory) if inventory else None
    batch_size = env.integer("OUTBOX_BATCH_SIZE", 10, minimum=1, maximum=1000)
    interval = max(0.05, env.seconds("OUTBOX_INTERVAL_SECONDS", 0.5, maximum=60))
    backoff_max = env.seconds("OUTBOX_BACKOFF_MAX_SECONDS", 5.0, maximum=300)
    relay = Relay(db, publish, log, batch_size=batch_size, interval_seconds=interval,
                  backoff_max_seconds=backoff_max) if relay_on and publish else None
    if db.password_in_url:
        log.warning(f"{DATABASE_VARIABLE} carries a password: keep it in a Secret and pass it as PGPASSWORD")
    catalog = Catalog()
    readiness = DatabaseReadiness(common.not_ready_file)
    tables_ready = asyncio.Event()
    stop = asyncio.Event()
    preparing: list[asyncio.Task] = []
    relaying: list[asyncio.Task] = []
    app_name = f"orders/{socket.gethostname()}"

    async def place(request: Request) -> JSONResponse:
        body = await json_body(request, sku=str, quantity=int)
        order_id = body.get("id")
        if order_id is None:
            order_id = os.urandom(6).hex()
        elif not isinstance(order_id, str) or not ORDER_ID.match(order_id):
            return json_error(422, "id must be 1 to 64 letters, digits, - or _, starting with a letter or digit")
        product = catalog.get(body["sku"])
        if product is None:
            return json_error(404, f"no product {body['sku']!r}")
        order = {"id": order_id, "sku": body["sku"], "quantity": body["quantity"],
                 "total_cents": product["price_cents"] * body["quantity"]}
        try:
            async with db.session(app_name) as conn:
                stored, new = await insert_order(conn, order, with_event=mode == "outbox")
        except OrderConflict as e:
            return json_error(409, str(e))
        except (DatabaseUnavailable, psycopg.Error) as e:
            # Nothing was stored: the order and its event were one transaction, and it rolled back.
            log.error("storing the order failed", extra={"order": order_id, "reason": failure(e)})
            return json_error(503, f"the order was not stored: {failure(e)}", target="database")
        if new:
            log.info("order placed", extra={"order": order_id, "sku": order["sku"], "quantity": order["quantity"],
                                            "publish": mode})
            if mode == "direct" and publish is not None:
                await publish_now(publish, order)
        return JSONResponse(stored, status_code=201 if new else 200)

    async def publish_now(send: Publish, order: dict) -> None:
        # The dual write: the order is committed; if this send fails, nothing will ever send the event again.
        event = order_placed(order)
        try:
            await send(event)
        except PublishFailed as e:
            LOST.inc()
            log.error("event lost", extra={"event": event["id"], "order": order["id"], "reason": e.reason})

    async def get_order(request: Request) -> JSONResponse:
        try:
            async with db.session(app_name) as conn:
                order = await fetch_order(conn, request.path_params["id"])
        except (DatabaseUnavailable, psycopg.Error) as e:
            return json_error(503, failure(e), target="database")
        if order is None:
            return json_error(404, "no such order")
        return JSONResponse(order)

    async def outbox(request: Request) -> JSONResponse:
        try:
            async with db.session(app_name) as conn:
                counts = await outbox_counts(conn)
        except (DatabaseUnavailable, psycopg.Error) as e:
            return json_error(503, failure(e), target="database")
        return JSONResponse({**counts, "publish": mode, "relay": relay.name if relay else None})

    async def start() -> None:
        preparing.append(asyncio.create_task(prepare(db, create_tables, readiness, tables_ready, log,
                                                     application_name=app_name)))
        if relay is not None:
            relaying.append(asyncio.create_task(relay.run(stop, tables_ready)))
        log.info("orders keeps its data in PostgreSQL", extra={"database": db.describe(), "publish": mode,
                                                               "relay": relay.name if relay else None})

    async def finish() -> None:
        stop.set()
        for task in preparing:
            task.cancel()
        # The relay finishes the batch in hand (bounded by its calls' timeouts), then stops.
        if relaying:
            _, running = await asyncio.wait(relaying, timeout=common.shutdown_timeout_seconds)
            for task in running:
                task.cancel()
        for task in preparing + relaying:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if inventory is not None:
            await inventory.close()

    routes = [
        Route("/orders", place, methods=["POST"]),
        Route("/orders/{id}", get_order),
        Route("/outbox", outbox),
    ]
    app = create_app(NAME, common, routes, readiness=readiness, log=log, on_startup=[start], on_shutdown=[finish])
    return Built(app, common, readiness, log)
