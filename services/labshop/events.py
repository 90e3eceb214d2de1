"""Events between the shop's services over Redis Streams: orders publishes OrderPlaced; inventory and
notifications consume it, each in a consumer group of its own, so each of them receives every event.

Why Redis Streams: consumer groups, the pending entries list (XPENDING, XAUTOCLAIM) and the delivery count
kept for every entry are exactly what reliable consumers are made of, and `redis-cli` shows each of them
(XINFO GROUPS, XPENDING, XRANGE orders.dlq); the append-only file on a PersistentVolume keeps the stream
through a broker restart. One Debian package, redis-server, runs the broker in the cluster and in the tests;
the client is redis-py.

How a consumer works (delivery is at least once):
- XREADGROUP hands each new entry to one consumer of the group. The entry stays in the group's pending entries
  list until that consumer acknowledges it (XACK), which it does only after handling it.
- A consumer that dies mid-message never acknowledges. Once the entry has waited EVENTS_CLAIM_IDLE_SECONDS,
  another consumer of the group (or the same one, after a failed attempt) takes it over with XAUTOCLAIM and
  handles it again. Without a claim time the entry stays pending for ever: Redis itself never redelivers.
- Every delivery is counted. An entry delivered EVENTS_MAX_ATTEMPTS times without success (a poison message:
  an unknown product, a malformed event) is copied to the dead-letter stream `<stream>.dlq` with the reason,
  and acknowledged, in one transaction; it stops costing attempts and waits there for a person.
- Since an event can arrive twice, handlers are idempotent: each remembers the ids of the events it applied,
  in the same place and at the same moment as the effect itself, and an event seen before changes nothing.

An entry's fields: id (the event's own id, the idempotency key), type (OrderPlaced), time, source, data (JSON).

Environment (every service that publishes or consumes):
  EVENTS_REDIS_URL              redis://HOST:PORT[/DB]; unset: the service neither publishes nor consumes
  EVENTS_STREAM                 the stream (default orders)
  EVENTS_GROUP                  the consumer group (default: the service's name)
  EVENTS_CONSUMER               this consumer's name in its group (default: the host name, i.e. the pod's name)
  EVENTS_CLAIM_IDLE_SECONDS     take over entries left unacknowledged this long (default 0: never)
  EVENTS_MAX_ATTEMPTS           deliveries before an entry goes to the dead-letter stream (default 0: no limit)
  EVENTS_HANDLER_DELAY_SECONDS  wait before handling each event, to watch a consumer die mid-message (default 0)
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from prometheus_client import Counter
from redis.exceptions import RedisError, ResponseError
from starlette.responses import JSONResponse

from labshop.config import ConfigError, Env
from labshop.data import OutOfStock, Stock, UnknownProduct
from labshop.web import Readiness, json_error

ORDER_PLACED = "OrderPlaced"
# Streams are trimmed (approximately, which is cheap) so the broker's memory stays bounded; far more than a
# lab produces, so no entry a group still needs is trimmed away.
MAX_STREAM_LENGTH = 100_000
# A consumer waits this long for new entries per read, then looks for entries to take over.
BLOCK_SECONDS = 1.0
# How long to wait before trying again when the broker cannot be reached.
RETRY_SECONDS = 1.0

PUBLISHED = Counter("events_published_total", "Events written to a stream, by stream and type.", ["stream", "type"])
CONSUMED = Counter(
    "events_consumed_total",
    "Entries a consumer group finished and acknowledged, by outcome: processed (applied now), duplicate "
    "(applied before: nothing changed), ignored (a type the group does not handle).",
    ["stream", "group", "outcome"])
FAILED = Counter("events_failed_total", "Deliveries whose handling failed; the entry stays pending.",
                 ["stream", "group"])
CLAIMED = Counter("events_claimed_total", "Entries taken over after waiting EVENTS_CLAIM_IDLE_SECONDS unacknowledged.",
                  ["stream", "group"])
DEAD_LETTERED = Counter("events_dead_lettered_total",
                        "Entries moved to the dead-letter stream after EVENTS_MAX_ATTEMPTS deliveries.",
                        ["stream", "group"])


class CannotHandle(Exception):
    """A handler cannot apply this event (this attempt fails; the entry stays pending)."""


class Malformed(CannotHandle):
    """The entry is not an event this code understands: fields missing or of the wrong type."""


@dataclass(frozen=True)
class Event:
    """One event: its own id (the idempotency key), type, when and where it happened, and its data."""

    id: str
    type: str
    data: dict[str, Any]
    time: str = ""
    source: str = ""
    entry_id: str = ""  # where it sits in the stream (a new one each time the same event is published)

    def fields(self) -> dict[str, str]:
        return {"id": self.id, "type": self.type, "time": self.time, "source": self.source,
                "data": json.dumps(self.data, separators=(",", ":"), sort_keys=True)}

    @classmethod
    def from_entry(cls, entry_id: str, fields: Mapping[str, str]) -> Event:
        """The event a stream entry holds; Malformed when it holds none."""
        missing = [name for name in ("id", "type", "data") if not fields.get(name)]
        if missing:
            raise Malformed(f"the entry has no {', '.join(missing)}")
        try:
            data = json.loads(fields["data"])
        except ValueError:
            raise Malformed("data is not JSON") from None
        if not isinstance(data, dict):
            raise Malformed("data is not a JSON object")
        return cls(fields["id"], fields["type"], data, fields.get("time", ""), fields.get("source", ""), entry_id)


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _short(e: BaseException) -> str:
    text = str(e) or type(e).__name__
    return text.splitlines()[0][:200]


# -- configuration ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class EventsConfig:
    """Where the events are and how this service consumes them (see the module's docstring)."""

    url: str
    stream: str = "orders"
    group: str = ""
    consumer: str = ""
    claim_idle_seconds: float = 0.0
    max_attempts: int = 0
    handler_delay_seconds: float = 0.0

    @property
    def dead_letters(self) -> str:
        return f"{self.stream}.dlq"

    @classmethod
    def from_env(cls, env: Env, service: str) -> EventsConfig | None:
        """The configuration, or None when EVENTS_REDIS_URL is unset (events are off)."""
        url = env.raw("EVENTS_REDIS_URL")
        if not url:
            return None
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss") or not parts.hostname:
            raise ConfigError(f"EVENTS_REDIS_URL must be a redis:// URL with a host, such as redis://redis:6379, "
                              f"got {url!r}")
        names = {}
        for name, default in (("EVENTS_STREAM", "orders"), ("EVENTS_GROUP", service),
                              ("EVENTS_CONSUMER", socket.gethostname())):
            value = env.text(name, default)
            if any(c.isspace() for c in value):
                raise ConfigError(f"{name} must be one word, got {value!r}")
            names[name] = value
        return cls(
            url=url,
            stream=names["EVENTS_STREAM"],
            group=names["EVENTS_GROUP"],
            consumer=names["EVENTS_CONSUMER"],
            claim_idle_seconds=env.seconds("EVENTS_CLAIM_IDLE_SECONDS", 0.0, maximum=3600),
            max_attempts=env.integer("EVENTS_MAX_ATTEMPTS", 0, minimum=0, maximum=100),
            handler_delay_seconds=env.seconds("EVENTS_HANDLER_DELAY_SECONDS", 0.0, maximum=300),
        )


def connect(url: str, *, timeout: float) -> aioredis.Redis:
    """A client with deadlines: a broker that is down costs a caller `timeout`, never a hung request."""
    return aioredis.Redis.from_url(url, decode_responses=True, socket_connect_timeout=min(timeout, 2.0),
                                   socket_timeout=timeout)


# -- publishing -------------------------------------------------------------------------------------------------

class Publisher:
    """Appends events to one stream (XADD)."""

    def __init__(self, client: aioredis.Redis, stream: str, source: str) -> None:
        self.client = client
        self.stream = stream
        self.source = source

    async def publish(self, type: str, data: dict[str, Any], *, event_id: str | None = None) -> Event:
        """Append the event; it carries its entry id afterwards. RedisError when the broker cannot take it."""
        event = Event(event_id or uuid.uuid4().hex, type, data, now(), self.source)
        entry_id = await self.client.xadd(self.stream, event.fields(), maxlen=MAX_STREAM_LENGTH, approximate=True)
        PUBLISHED.labels(self.stream, type).inc()
        return replace(event, entry_id=entry_id)

    async def close(self) -> None:
        await self.client.aclose()


class OrderEvents:
    """orders with EVENTS_REDIS_URL set: placing an order is announcing it. orders records the order and
    publishes OrderPlaced, answering 202 Accepted; it calls nobody, and inventory and notifications react."""

    def __init__(self, publisher: Publisher, log: logging.Logger) -> None:
        self.publisher = publisher
        self.log = log

    @classmethod
    def from_env(cls, env: Env, service: str, log: logging.Logger) -> OrderEvents | None:
        config = EventsConfig.from_env(env, service)
        if config is None:
            return None
        return cls(Publisher(connect(config.url, timeout=2.0), config.stream, service), log)

    async def place(self, order_id: str, sku: str, quantity: int, orders: dict[str, dict]) -> JSONResponse:
        """Publish OrderPlaced for a new order; 202 with the order, or 503 when the broker did not take it."""
        try:
            event = await self.publisher.publish(ORDER_PLACED, {"order_id": order_id, "sku": sku,
                                                                "quantity": quantity})
        except RedisError as e:
            # Nothing is recorded: an order nobody heard of must not look placed.
            self.log.error("cannot publish", extra={"order": order_id, "reason": _short(e)})
            return json_error(503, f"cannot publish {ORDER_PLACED}: {_short(e)}", target="events")
        order = {"id": order_id, "sku": sku, "quantity": quantity, "status": "placed", "event": event.id,
                 "stream": self.publisher.stream, "entry": event.entry_id}
        orders[order_id] = order
        self.log.info("order placed", extra={"order": order_id, "sku": sku, "quantity": quantity,
                                             "event": event.id, "entry": event.entry_id})
        return JSONResponse(order, status_code=202)

    async def close(self) -> None:
        await self.publisher.close()


# -- consuming --------------------------------------------------------------------------------------------------

# A handler applies one event: True when it changed something, False when the event had been applied before.
# CannotHandle (or any other exception) fails the attempt.
Handler = Callable[[Event], Awaitable[bool]]


class Consumer:
    """One consumer of a group: reads new entries, takes over idle ones, acknowledges what it handled, and
    dead-letters what keeps failing."""

    def __init__(self, client: aioredis.Redis, config: EventsConfig, handlers: Mapping[str, Handler],
                 log: logging.Logger, *, block_seconds: float = BLOCK_SECONDS, batch: int = 10) -> None:
        self.client = client
        self.config = config
        self.handlers = handlers  # looked up for each event: a service may add its handlers after creating this
        self.log = log
        self.block_ms = max(1, int(block_seconds * 1000))
        self.batch = batch
        self._last_claim = 0.0
        self.stream, self.group, self.name = config.stream, config.group, config.consumer
        # Every series exists from the start, at 0, so a graph or a check sees "none yet" rather than nothing.
        for outcome in ("processed", "duplicate", "ignored"):
            CONSUMED.labels(self.stream, self.group, outcome)
        for metric in (FAILED, CLAIMED, DEAD_LETTERED):
            metric.labels(self.stream, self.group)

    def _fields(self, **more: Any) -> dict[str, Any]:
        return {"stream": self.stream, "group": self.group, "consumer": self.name, **more}

    async def ensure_group(self) -> None:
        """Create the group (and the stream) unless it exists. A new group starts at the stream's first entry:
        a subscriber added later still sees every event the stream holds."""
        try:
            await self.client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise
        else:
            self.log.info("consumer group created", extra=self._fields())

    async def step(self) -> int:
        """One round: take over entries idle for too long, then read new ones (waiting up to a second for
        them). The number of entries handled."""
        handled = 0
        idle = self.config.claim_idle_seconds
        if idle and time.monotonic() - self._last_claim >= min(1.0, idle / 2):
            handled += await self._claim()
        reply = await self.client.xreadgroup(self.group, self.name, {self.stream: ">"}, count=self.batch,
                                             block=self.block_ms)
        for _, entries in reply or []:
            for entry_id, fields in entries:
                # ">" hands out entries never delivered to anyone: this is their first delivery.
                await self._process(entry_id, fields or {}, deliveries=1)
                handled += 1
        return handled

    async def run(self, stopping: Callable[[], bool] = lambda: False) -> None:
        """Consume until cancelled or `stopping()` says so (a draining pod takes no new entries). Broker
        outages are waited out; a group the broker lost (it restarted without its data) is created again."""
        group_ready = False
        unreachable = False
        while not stopping():
            try:
                if not group_ready:
                    await self.ensure_group()
                    group_ready = True
                await self.step()
                if unreachable:
                    unreachable = False
                    self.log.info("broker reachable again", extra=self._fields())
            except ResponseError as e:
                if "NOGROUP" in str(e):
                    self.log.warning("the consumer group is gone (did the broker lose its data?): creating it again",
                                     extra=self._fields())
                    group_ready = False
                else:
                    self.log.error("the broker refused a command", extra=self._fields(reason=_short(e)))
                    await asyncio.sleep(RETRY_SECONDS)
            except (RedisError, OSError) as e:
                if not unreachable:
                    unreachable = True
                    self.log.warning("cannot reach the broker", extra=self._fields(reason=_short(e)))
                await asyncio.sleep(RETRY_SECONDS)
            except Exception:
                # A defect must not end consuming quietly: say so, and go on with the next round.
                self.log.exception("consumer round failed", extra=self._fields())
                await asyncio.sleep(RETRY_SECONDS)

    async def _claim(self) -> int:
        self._last_claim = time.monotonic()
        idle_ms = int(self.config.claim_idle_seconds * 1000)
        start, handled = "0-0", 0
        while True:
            reply = await self.client.xautoclaim(self.stream, self.group, self.name, min_idle_time=idle_ms,
                                                 start_id=start, count=self.batch)
            start, entries = reply[0], reply[1]
            for entry_id, fields in entries:
                CLAIMED.labels(self.stream, self.group).inc()
                deliveries = await self._deliveries(entry_id)
                self.log.info("entry taken over", extra=self._fields(entry=entry_id, attempt=deliveries,
                                                                     event=(fields or {}).get("id")))
                await self._process(entry_id, fields or {}, deliveries)
                handled += 1
            if start == "0-0":
                return handled

    async def _deliveries(self, entry_id: str) -> int:
        rows = await self.client.xpending_range(self.stream, self.group, min=entry_id, max=entry_id, count=1)
        return int(rows[0]["times_delivered"]) if rows else 1

    async def _process(self, entry_id: str, fields: Mapping[str, str], deliveries: int) -> None:
        limit = self.config.max_attempts
        if limit and deliveries > limit:
            # More deliveries than attempts allowed: the consumers that held it died (a message that crashes its
            # consumer never reaches the failure path) or were stopped before dead-lettering it. Not tried again.
            await self._dead_letter(entry_id, fields, deliveries,
                                    f"delivered {deliveries} times, more than EVENTS_MAX_ATTEMPTS ({limit})")
            return
        try:
            event = Event.from_entry(entry_id, fields)
            handler = self.handlers.get(event.type)
            if handler is None:
                outcome = "ignored"  # other types are other services' business: acknowledged, not failed
            else:
                if self.config.handler_delay_seconds:
                    await asyncio.sleep(self.config.handler_delay_seconds)
                outcome = "processed" if await handler(event) else "duplicate"
        except Exception as e:
            FAILED.labels(self.stream, self.group).inc()
            reason = _short(e) if isinstance(e, CannotHandle) else f"{type(e).__name__}: {_short(e)}"
            self.log.warning("event handling failed", extra=self._fields(
                entry=entry_id, event=fields.get("id"), type=fields.get("type"), attempt=deliveries,
                max_attempts=limit or None, reason=reason))
            if limit and deliveries >= limit:
                await self._dead_letter(entry_id, fields, deliveries, reason)
            return
        await self.client.xack(self.stream, self.group, entry_id)
        CONSUMED.labels(self.stream, self.group, outcome).inc()
        self.log.info("event handled", extra=self._fields(entry=entry_id, event=event.id, type=event.type,
                                                          outcome=outcome, attempt=deliveries))

    async def _dead_letter(self, entry_id: str, fields: Mapping[str, str], deliveries: int, reason: str) -> None:
        """Copy the entry to the dead-letter stream and acknowledge it, both or neither."""
        letter = {**fields, "dlq_entry": entry_id, "dlq_group": self.group, "dlq_consumer": self.name,
                  "dlq_deliveries": str(deliveries), "dlq_reason": reason, "dlq_time": now()}
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.xadd(self.config.dead_letters, letter, maxlen=MAX_STREAM_LENGTH, approximate=True)
            pipe.xack(self.stream, self.group, entry_id)
            await pipe.execute()
        DEAD_LETTERED.labels(self.stream, self.group).inc()
        self.log.error("event dead-lettered", extra=self._fields(
            entry=entry_id, event=fields.get("id"), type=fields.get("type"), attempts=deliveries, reason=reason,
            dead_letters=self.config.dead_letters))


class Consuming:
    """A service's consumer, run as the web app's start-up and shutdown hooks (none when events are off)."""

    def __init__(self, consumer: Consumer | None, readiness: Readiness, *, grace_seconds: float = 5.0) -> None:
        self.consumer = consumer
        self.readiness = readiness
        self.grace_seconds = grace_seconds
        self._stop = False
        self._task: asyncio.Task | None = None
        self.on_startup = [self.start] if consumer else []
        self.on_shutdown = [self.stop] if consumer else []

    @classmethod
    def from_env(cls, env: Env, service: str, handlers: Mapping[str, Handler], readiness: Readiness,
                 log: logging.Logger) -> Consuming:
        config = EventsConfig.from_env(env, service)
        if config is None:
            return cls(None, readiness)
        # The read blocks for up to BLOCK_SECONDS: the socket deadline leaves room for that.
        client = connect(config.url, timeout=BLOCK_SECONDS + 5)
        return cls(Consumer(client, config, handlers, log), readiness)

    @property
    def client(self) -> aioredis.Redis | None:
        return self.consumer.client if self.consumer else None

    async def start(self) -> None:
        assert self.consumer is not None
        c = self.consumer.config
        self.consumer.log.info("consuming", extra={
            "stream": c.stream, "group": c.group, "consumer": c.consumer,
            "claim_idle_seconds": c.claim_idle_seconds or None, "max_attempts": c.max_attempts or None})
        self._task = asyncio.create_task(self.consumer.run(lambda: self._stop or self.readiness.draining))

    async def stop(self) -> None:
        """Stop taking entries and let the one in hand finish (briefly); what is left unacknowledged is
        redelivered to another consumer later, as after a crash."""
        assert self.consumer is not None
        self._stop = True
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, self.grace_seconds)
            except TimeoutError:
                pass  # wait_for cancelled it
        await self.consumer.client.aclose()


# -- inventory's handler ----------------------------------------------------------------------------------------

def order_fields(event: Event) -> tuple[str, str, int]:
    """(order id, sku, quantity) of an OrderPlaced event; Malformed otherwise."""
    order, sku, quantity = (event.data.get(k) for k in ("order_id", "sku", "quantity"))
    if not isinstance(order, str) or not order or not isinstance(sku, str) or not sku:
        raise Malformed("order_id and sku must be text")
    if not isinstance(quantity, int) or isinstance(quantity, bool) or quantity <= 0:
        raise Malformed("quantity must be a whole number above 0")
    return order, sku, quantity


def stock_handlers(stock: Stock) -> dict[str, Handler]:
    """inventory's reaction to OrderPlaced: take the ordered units from stock, once per event.

    The ids of applied events live next to the stock, in this process, and are recorded in the same step as
    the change (no await in between), so a redelivered event changes nothing. They must live with the effect:
    a record kept in the broker would outlive this in-memory stock and skip events a fresh pod must apply.
    """
    applied: set[str] = set()

    async def order_placed(event: Event) -> bool:
        _, sku, quantity = order_fields(event)
        if event.id in applied:
            return False
        try:
            stock.reserve(sku, quantity, key=f"event:{event.id}")
        except UnknownProduct:
            raise CannotHandle(f"no product {sku!r}") from None
        except OutOfStock as e:
            raise CannotHandle(f"not enough {sku}: {e.wanted} wanted, {e.available} left") from None
        applied.add(event.id)
        return True

    return {ORDER_PLACED: order_placed}
