"""inventory with its own PostgreSQL database, applying orders' events to its stock exactly once.

Switched on by INVENTORY_DATABASE_URL (or PGHOST; see labshop.db). Without either, inventory keeps its stock in
memory and takes reservations by call (labshop.inventory).

GET  /stock/{sku}              {"sku", "available", "served_by": "inventory", "pod"}; 404 for an unknown SKU
POST /events                   an event, its id in the body's "id" and/or the Idempotency-Key header -> 201
                               {"id", "duplicate": false, "outcome"} the first time, 200 {"duplicate": true}
                               for every later delivery of the same id; 422 for a malformed event
GET  /reservations/{order_id}  what an order's event did to the stock, and how often it was delivered
GET  /events/{id}              one processed event: its type and deliveries

Events arrive at least once: a relay that dies after sending but before recording that it sent will send again.
The inbox makes that harmless. Each event id is inserted into `processed_events` (primary key) in the same
transaction as the stock change it causes, so a second delivery finds the id taken and changes nothing: it only
counts the delivery. This holds across inventory replicas, because the check is the database's, not a replica's
memory.

`order.placed` {"order_id", "sku", "quantity"} reserves that many units: outcome `reserved`, or `out-of-stock`
/ `unknown-product`, recorded all the same (sending it again would not change the answer; a saga would tell
orders to cancel). Other event types are recorded as `ignored`.

Environment: INVENTORY_DATABASE_URL, PG*, plus what every service reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

import psycopg
from prometheus_client import Counter
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from labshop import logs
from labshop.config import Common, Env
from labshop.data import INITIAL_STOCK
from labshop.db import Database, DatabaseReadiness, DatabaseUnavailable, create_schema, failure, prepare
from labshop.web import Built, create_app, json_error

NAME = "inventory"
DATABASE_VARIABLE = "INVENTORY_DATABASE_URL"
EVENT_ID_MAX = 128

EVENTS = Counter("labshop_inbox_events_total", "Events delivered to inventory, by outcome (duplicate: a "
                 "delivery of an event already applied, changing nothing).", ["outcome"])

SCHEMA = """
CREATE TABLE IF NOT EXISTS stock (
    sku   text PRIMARY KEY,
    units integer NOT NULL CHECK (units >= 0)
);
CREATE TABLE IF NOT EXISTS processed_events (
    event_id          text PRIMARY KEY,
    type              text NOT NULL,
    outcome           text NOT NULL,
    deliveries        integer NOT NULL DEFAULT 1,
    first_received_at timestamptz NOT NULL DEFAULT now(),
    last_received_at  timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS reservations (
    order_id   text PRIMARY KEY,
    event_id   text NOT NULL REFERENCES processed_events (event_id),
    sku        text NOT NULL,
    quantity   integer NOT NULL,
    status     text NOT NULL,
    remaining  integer,
    created_at timestamptz NOT NULL DEFAULT now()
);
"""
SCHEMA_LOCK = 0x696E76656E74  # "invent": one advisory lock id for every replica creating the tables


class Malformed(ValueError):
    """An event inventory cannot read (422): sending it again will not help."""


def parse_event(body: object, header_id: str) -> dict:
    """The event with its id (from the body, the Idempotency-Key header, or both if they agree)."""
    if not isinstance(body, dict):
        raise Malformed("the body must be a JSON object")
    body_id = body.get("id")
    if body_id is not None and not isinstance(body_id, str):
        raise Malformed("id must be text")
    if body_id and header_id and body_id != header_id:
        raise Malformed(f"the Idempotency-Key {header_id!r} differs from the event's id {body_id!r}")
    event_id = body_id or header_id
    if not event_id or len(event_id) > EVENT_ID_MAX:
        raise Malformed(f"an event needs an id (the body's \"id\" or an Idempotency-Key header) of at most "
                        f"{EVENT_ID_MAX} characters")
    kind = body.get("type")
    if not isinstance(kind, str) or not kind:
        raise Malformed("type must be text, e.g. order.placed")
    event = {**body, "id": event_id}
    if kind == "order.placed":
        if not isinstance(event.get("order_id"), str) or not event["order_id"]:
            raise Malformed("order.placed needs order_id (text)")
        if not isinstance(event.get("sku"), str) or not event["sku"]:
            raise Malformed("order.placed needs sku (text)")
        quantity = event.get("quantity")
        if not isinstance(quantity, int) or isinstance(quantity, bool) or quantity <= 0:
            raise Malformed("order.placed needs quantity, a whole number above 0")
    return event


async def create_tables(conn: psycopg.AsyncConnection) -> None:
    await create_schema(conn, SCHEMA, SCHEMA_LOCK)
    # The shop's opening stock, once: later starts find the rows and leave what events made of them.
    await conn.execute("INSERT INTO stock (sku, units) SELECT * FROM unnest(%s::text[], %s::integer[])"
                       " ON CONFLICT (sku) DO NOTHING", (list(INITIAL_STOCK), list(INITIAL_STOCK.values())))


async def apply_event(conn: psycopg.AsyncConnection, event: dict) -> dict:
    """Apply `event` once: {"id", "duplicate", "outcome", ...}. The processed-event row and the stock change
    commit together, so an event is either applied and recorded, or neither."""
    async with conn.transaction():
        cur = await conn.execute(
            "INSERT INTO processed_events (event_id, type, outcome) VALUES (%s, %s, 'processing')"
            " ON CONFLICT (event_id) DO NOTHING", (event["id"], event["type"]))
        if cur.rowcount == 0:
            # Delivered before (or being applied right now by another replica, whose commit this insert waited
            # for): count the delivery, change nothing.
            cur = await conn.execute(
                "UPDATE processed_events SET deliveries = deliveries + 1, last_received_at = now()"
                " WHERE event_id = %s RETURNING outcome, deliveries", (event["id"],))
            outcome, deliveries = await cur.fetchone()  # type: ignore[misc]
            return {"id": event["id"], "duplicate": True, "outcome": outcome, "deliveries": deliveries}
        result: dict = {"id": event["id"], "duplicate": False}
        if event["type"] == "order.placed":
            result.update(await _reserve(conn, event))
        else:
            result["outcome"] = "ignored"
        await conn.execute("UPDATE processed_events SET outcome = %s WHERE event_id = %s",
                           (result["outcome"], event["id"]))
    return result


async def _reserve(conn: psycopg.AsyncConnection, event: dict) -> dict:
    order_id, sku, quantity = event["order_id"], event["sku"], event["quantity"]
    cur = await conn.execute(
        "INSERT INTO reservations (order_id, event_id, sku, quantity, status) VALUES (%s, %s, %s, %s, 'processing')"
        " ON CONFLICT (order_id) DO NOTHING", (order_id, event["id"], sku, quantity))
    if cur.rowcount == 0:
        # Another event (another id) already reserved for this order: the order must not take stock twice.
        return {"outcome": "already-reserved", "order_id": order_id}
    cur = await conn.execute("UPDATE stock SET units = units - %s WHERE sku = %s AND units >= %s RETURNING units",
                             (quantity, sku, quantity))
    row = await cur.fetchone()
    if row is not None:
        status, remaining = "reserved", row[0]
    else:
        cur = await conn.execute("SELECT units FROM stock WHERE sku = %s", (sku,))
        found = await cur.fetchone()
        status, remaining = ("out-of-stock", found[0]) if found else ("unknown-product", None)
    await conn.execute("UPDATE reservations SET status = %s, remaining = %s WHERE order_id = %s",
                       (status, remaining, order_id))
    return {"outcome": status, "order_id": order_id, "sku": sku, "quantity": quantity, "remaining": remaining}


def create(env: Env) -> Built:
    """inventory backed by its own database (INVENTORY_DATABASE_URL / PG*), configured from `env`."""
    common = Common.from_env(env)
    log = logs.setup(NAME, common.log_level)
    db = Database.from_env(env, DATABASE_VARIABLE)
    if db.password_in_url:
        log.warning(f"{DATABASE_VARIABLE} carries a password: keep it in a Secret and pass it as PGPASSWORD")
    pod = socket.gethostname()
    app_name = f"inventory/{pod}"
    readiness = DatabaseReadiness(common.not_ready_file)
    tables_ready = asyncio.Event()
    preparing: list[asyncio.Task] = []

    async def query(sql: str, params: tuple) -> tuple | None:
        async with db.session(app_name) as conn:
            cur = await conn.execute(sql, params)
            return await cur.fetchone()

    async def get_stock(request: Request) -> JSONResponse:
        sku = request.path_params["sku"]
        try:
            row = await query("SELECT units FROM stock WHERE sku = %s", (sku,))
        except (DatabaseUnavailable, psycopg.Error) as e:
            return json_error(503, failure(e), target="database")
        if row is None:
            return json_error(404, f"no product {sku!r}")
        return JSONResponse({"sku": sku, "available": row[0], "served_by": NAME, "pod": pod})

    async def receive(request: Request) -> JSONResponse:
        try:
            body = await request.json()
        except ValueError:
            return json_error(422, "the body must be a JSON object")
        try:
            event = parse_event(body, request.headers.get("idempotency-key", ""))
        except Malformed as e:
            return json_error(422, str(e))
        try:
            async with db.session(app_name) as conn:
                result = await apply_event(conn, event)
        except (DatabaseUnavailable, psycopg.Error) as e:
            # Nothing was applied (the transaction rolled back): the sender may try again.
            log.error("applying an event failed", extra={"event": event["id"], "reason": failure(e)})
            return json_error(503, f"the event was not applied: {failure(e)}", target="database")
        EVENTS.labels("duplicate" if result["duplicate"] else result["outcome"]).inc()
        log.info("event duplicate" if result["duplicate"] else "event applied",
                 extra={"event": event["id"], "type": event["type"], "outcome": result["outcome"]})
        return JSONResponse({**result, "served_by": NAME, "pod": pod}, status_code=200 if result["duplicate"] else 201)

    async def get_reservation(request: Request) -> JSONResponse:
        order_id = request.path_params["order_id"]
        try:
            row = await query(
                "SELECT r.event_id, r.sku, r.quantity, r.status, r.remaining, e.deliveries"
                "  FROM reservations r JOIN processed_events e USING (event_id) WHERE r.order_id = %s", (order_id,))
        except (DatabaseUnavailable, psycopg.Error) as e:
            return json_error(503, failure(e), target="database")
        if row is None:
            return json_error(404, f"no reservation for order {order_id!r}: its event has not arrived (yet)")
        event_id, sku, quantity, status, remaining, deliveries = row
        return JSONResponse({"order_id": order_id, "event_id": event_id, "sku": sku, "quantity": quantity,
                             "status": status, "remaining": remaining, "deliveries": deliveries})

    async def get_event(request: Request) -> JSONResponse:
        event_id = request.path_params["id"]
        try:
            row = await query("SELECT type, outcome, deliveries, first_received_at, last_received_at"
                              "  FROM processed_events WHERE event_id = %s", (event_id,))
        except (DatabaseUnavailable, psycopg.Error) as e:
            return json_error(503, failure(e), target="database")
        if row is None:
            return json_error(404, f"no event {event_id!r} has arrived")
        kind, outcome, deliveries, first, last = row
        return JSONResponse({"id": event_id, "type": kind, "outcome": outcome, "deliveries": deliveries,
                             "first_received_at": first.isoformat(), "last_received_at": last.isoformat()})

    async def start() -> None:
        preparing.append(asyncio.create_task(prepare(db, create_tables, readiness, tables_ready, log,
                                                     application_name=app_name)))
        log.info("inventory keeps its data in PostgreSQL", extra={"database": db.describe()})

    async def finish() -> None:
        for task in preparing:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    routes = [
        Route("/stock/{sku}", get_stock),
        Route("/events", receive, methods=["POST"]),
        Route("/events/{id}", get_event),
        Route("/reservations/{order_id}", get_reservation),
    ]
    app = create_app(NAME, common, routes, readiness=readiness, log=log, on_startup=[start], on_shutdown=[finish])
    return Built(app, common, readiness, log)
