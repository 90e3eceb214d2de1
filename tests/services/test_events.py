"""Events over a real Redis (the Debian package's redis-server, started here): orders publishes OrderPlaced,
inventory and notifications consume it in their own groups. At-least-once delivery with a consumer killed
mid-message, idempotency under redelivery, dead-lettering after N failed deliveries, fan-out to two groups,
and a stream that outlives a broker restart only when the broker keeps an append-only file."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from labshop.config import ConfigError, Env
from labshop.events import Event, EventsConfig, Malformed, order_fields

from tests.services.conftest import free_port, until

pytestmark = pytest.mark.unit

REDIS_PACKAGE = "redis-server"




class RedisServer:
    """redis-server on 127.0.0.1 with its data in `folder`; append-only unless told otherwise."""

    def __init__(self, binary: str, folder: Path, *, port: int | None = None, append_only: bool = True) -> None:
        self.binary = binary
        self.folder = folder
        self.port = port or free_port()
        self.append_only = append_only
        self.proc: subprocess.Popen | None = None

    def start(self) -> RedisServer:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder),
             "--appendonly", "yes" if self.append_only else "no", "--save", "", "--daemonize", "no",
             "--logfile", str(self.folder / "redis.log")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        probe = redis.Redis(port=self.port, socket_connect_timeout=1)
        try:
            until(lambda: self._pong(probe), 20, f"redis-server on port {self.port} answering PING")
        finally:
            probe.close()
        return self

    def _pong(self, probe: redis.Redis) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"redis-server exited with {self.proc.returncode}:\n{self.log()}")
        try:
            return bool(probe.ping())
        except redis.RedisError:
            return False

    def log(self) -> str:
        path = self.folder / "redis.log"
        return path.read_text() if path.exists() else ""

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def client(self, db: int = 0) -> redis.Redis:
        return redis.Redis(port=self.port, db=db, decode_responses=True, socket_timeout=5)

    def stop(self) -> None:
        """SIGTERM: redis-server flushes its append-only file and exits."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def redis_binary() -> str:
    binary = shutil.which("redis-server") or next(
        (p for p in ("/usr/bin/redis-server", "/usr/sbin/redis-server") if os.access(p, os.X_OK)), None)
    if binary is None:
        reason = f"redis-server is not installed (Debian package {REDIS_PACKAGE})"
        if os.environ.get("LABCTL_REQUIRE_CLUSTER") == "1":
            pytest.fail(f"LABCTL_REQUIRE_CLUSTER=1 but {reason}", pytrace=False)
        pytest.skip(reason)
    return binary


@pytest.fixture(scope="module")
def broker(redis_binary, tmp_path_factory):
    """One append-only redis-server for the module; each test takes a database of its own (see `db`)."""
    server = RedisServer(redis_binary, tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


_databases = itertools.count(1)


@pytest.fixture
def db(broker):
    """(url, client) of a database no other test uses: streams, groups and keys start empty."""
    number = next(_databases)
    assert number < 16, "redis-server has 16 databases by default"
    client = broker.client(number)
    yield broker.url(number), client
    client.close()


@pytest.fixture
def start(start_service):
    """start_service, but the processes stop when the test ends: idle consumers still poll the broker."""
    started = []

    def go(name: str, env: dict[str, str], *, wait: bool = True):
        service = start_service(name, env, wait=wait)
        started.append(service)
        return service

    yield go
    for service in started:
        service.terminate()
    for service in started:
        service.stop()


def consumer_env(url: str, **more: str) -> dict[str, str]:
    return {"EVENTS_REDIS_URL": url, **{f"EVENTS_{k.upper()}": str(v) for k, v in more.items()}}


def place(http, orders, sku: str, quantity: int) -> dict:
    answer = http.post(f"{orders.url}/orders", json={"sku": sku, "quantity": quantity})
    assert answer.status_code == 202, answer.text
    return answer.json()


def stock(http, inventory, sku: str) -> int:
    return http.get(f"{inventory.url}/stock/{sku}").json()["available"]


def group_info(client: redis.Redis, stream: str = "orders") -> dict[str, dict]:
    """The stream's consumer groups by name (none before a consumer has created the stream)."""
    if not client.exists(stream):
        return {}
    return {g["name"]: g for g in client.xinfo_groups(stream)}


# -- fan-out ----------------------------------------------------------------------------------------------------

def test_an_order_reaches_both_groups_and_is_applied_once_by_each(start, db, http):
    url, client = db
    orders = start("orders", consumer_env(url), wait=False)
    inventory = start("inventory", consumer_env(url, consumer="inventory-1"), wait=False)
    notifications = start("notifications", consumer_env(url, consumer="notifications-1"), wait=False)
    for s in (orders, inventory, notifications):
        s.wait_ready()
    until(lambda: set(group_info(client)) == {"inventory", "notifications"}, 10, "both groups created")
    before = stock(http, inventory, "mug")

    order = place(http, orders, "mug", 2)
    assert order["status"] == "placed" and order["event"] and order["entry"]

    until(lambda: stock(http, inventory, "mug") == before - 2, 10, "inventory took 2 mugs")
    sent = until(lambda: http.get(f"{notifications.url}/notifications").json()["notifications"], 10,
                 "a notification")
    assert [(n["order"], n["event"], n["sku"], n["quantity"]) for n in sent] == [
        (order["id"], order["event"], "mug", 2)]
    # Each group read the entry and acknowledged it: nothing pending, nothing lagging.
    groups = group_info(client)
    assert {name: (g["pending"], g["last-delivered-id"]) for name, g in groups.items()} == {
        "inventory": (0, order["entry"]), "notifications": (0, order["entry"])}
    for service, group in ((inventory, "inventory"), (notifications, "notifications")):
        assert service.metric("events_consumed_total", group=group, outcome="processed") == 1
    assert orders.metric("events_published_total", stream="orders", type="OrderPlaced") >= 1
    assert http.get(f"{orders.url}/orders/{order['id']}").json() == order


def test_consumers_sharing_one_group_compete_instead_of_both_receiving(start, db, http):
    url, client = db
    orders = start("orders", consumer_env(url), wait=False)
    inventory = start("inventory", consumer_env(url, group="shop", consumer="inventory-1"), wait=False)
    notifications = start("notifications", consumer_env(url, group="shop", consumer="notifications-1"),
                                  wait=False)
    for s in (orders, inventory, notifications):
        s.wait_ready()
    until(lambda: "shop" in group_info(client), 10, "group shop created")
    for _ in range(8):
        place(http, orders, "tea", 1)

    def handled() -> tuple[float, float]:
        return (inventory.metric("events_consumed_total", group="shop", outcome="processed"),
                notifications.metric("events_consumed_total", group="shop", outcome="processed"))

    until(lambda: sum(handled()) == 8, 10, "8 events handled in group shop")
    time.sleep(0.5)
    took, told = handled()
    # One group: every event went to exactly one of the two, so neither saw all of them.
    assert took + told == 8 and took < 8 and told < 8
    assert stock(http, inventory, "tea") == 40 - took
    assert len(http.get(f"{notifications.url}/notifications").json()["notifications"]) == told


# -- at-least-once: a consumer killed mid-message ---------------------------------------------------------------

def test_an_entry_held_by_a_killed_consumer_is_claimed_and_handled_by_another(start, db, http):
    url, client = db
    orders = start("orders", consumer_env(url), wait=False)
    # The first consumer takes 30 s over each event: it will be killed while holding one.
    slow = start("inventory", consumer_env(url, consumer="inventory-a", claim_idle_seconds=1,
                                                   handler_delay_seconds=30), wait=False)
    orders.wait_ready()
    slow.wait_ready()
    until(lambda: "inventory" in group_info(client), 10, "group inventory created")
    order = place(http, orders, "coffee", 3)

    held = until(lambda: client.xpending_range("orders", "inventory", "-", "+", 10), 10, "the entry delivered")
    assert [(p["message_id"], p["consumer"], p["times_delivered"]) for p in held] == [
        (order["entry"], "inventory-a", 1)]
    slow.proc.kill()  # SIGKILL: no shutdown, no acknowledgement
    slow.proc.wait()

    other = start("inventory", consumer_env(url, consumer="inventory-b", claim_idle_seconds=1))
    until(lambda: stock(http, other, "coffee") == 25 - 3, 15, "the other consumer took 3 coffees")
    record = other.wait_for_record(msg="event handled", event=order["event"])
    assert record["attempt"] == 2 and record["outcome"] == "processed"
    assert other.metric("events_claimed_total", group="inventory") == 1
    until(lambda: group_info(client)["inventory"]["pending"] == 0, 5, "nothing pending")


def _delivered_to_a_killed_consumer(start, http, url, client, sku):
    """One order whose entry is delivered to a slow inventory consumer, then SIGKILLed while it holds it."""
    orders = start("orders", consumer_env(url), wait=False)
    slow = start("inventory", consumer_env(url, consumer="inventory-a", handler_delay_seconds=30), wait=False)
    orders.wait_ready()
    slow.wait_ready()
    until(lambda: "inventory" in group_info(client), 10, "group inventory created")
    order = place(http, orders, sku, 1)
    until(lambda: group_info(client)["inventory"]["pending"] == 1, 10, "the entry delivered")
    slow.proc.kill()
    slow.proc.wait()
    return order


def test_without_a_claim_time_a_killed_consumers_entry_stays_pending(start, db, http):
    url, client = db
    order = _delivered_to_a_killed_consumer(start, http, url, client, "coffee")

    other = start("inventory", consumer_env(url, consumer="inventory-b"))
    time.sleep(3)
    # Redis never redelivers by itself: without XAUTOCLAIM the entry waits for a consumer that is gone.
    assert stock(http, other, "coffee") == 25
    held = client.xpending_range("orders", "inventory", "-", "+", 10)
    assert [(p["message_id"], p["consumer"]) for p in held] == [(order["entry"], "inventory-a")]
    assert other.metric("events_consumed_total", group="inventory", outcome="processed") == 0


# -- idempotency ------------------------------------------------------------------------------------------------

def test_a_redelivered_event_changes_nothing(start, db, http):
    url, client = db
    orders = start("orders", consumer_env(url), wait=False)
    inventory = start("inventory", consumer_env(url, consumer="inventory-1"), wait=False)
    notifications = start("notifications", consumer_env(url, consumer="notifications-1"), wait=False)
    for s in (orders, inventory, notifications):
        s.wait_ready()
    until(lambda: set(group_info(client)) == {"inventory", "notifications"}, 10, "both groups created")
    order = place(http, orders, "kettle", 1)
    until(lambda: stock(http, inventory, "kettle") == 2, 10, "inventory took the kettle")
    until(lambda: len(http.get(f"{notifications.url}/notifications").json()["notifications"]) == 1, 10,
          "one notification")

    # The same event again, as a publisher retrying after a lost answer would send it: same id, new entry.
    (entry_id, fields), = client.xrange("orders", order["entry"], order["entry"])
    client.xadd("orders", fields)
    # And every entry once more, as the broker hands them out after the group is rewound.
    client.xgroup_setid("orders", "inventory", "0")
    client.xgroup_setid("orders", "notifications", "0")

    for service, group in ((inventory, "inventory"), (notifications, "notifications")):
        until(lambda: service.metric("events_consumed_total", group=group, outcome="duplicate") == 3, 10,
              f"{group} saw the event three more times")
        assert service.metric("events_consumed_total", group=group, outcome="processed") == 1
    assert stock(http, inventory, "kettle") == 2
    sent = http.get(f"{notifications.url}/notifications").json()["notifications"]
    assert [n["event"] for n in sent] == [order["event"]]
    assert {name: g["pending"] for name, g in group_info(client).items()} == {"inventory": 0, "notifications": 0}


# -- poison messages --------------------------------------------------------------------------------------------

def test_a_poison_message_goes_to_the_dead_letter_stream_after_max_attempts(start, db, http):
    url, client = db
    orders = start("orders", consumer_env(url), wait=False)
    inventory = start("inventory", consumer_env(url, consumer="inventory-1", claim_idle_seconds=0.5,
                                                        max_attempts=3), wait=False)
    orders.wait_ready()
    inventory.wait_ready()
    until(lambda: "inventory" in group_info(client), 10, "group inventory created")

    poison = place(http, orders, "caviar", 1)  # orders accepts it; inventory has no such product
    client.xadd("orders", {"type": "OrderPlaced", "note": "no id, no data"})  # and one that is not an event
    letters = until(lambda: (lambda got: got if len(got) == 2 else None)(client.xrange("orders.dlq")), 15,
                    "two entries in orders.dlq")
    by_reason = {fields["dlq_reason"]: fields for _, fields in letters}
    caviar = by_reason["no product 'caviar'"]
    assert (caviar["id"], caviar["dlq_entry"], caviar["dlq_group"], caviar["dlq_deliveries"]) == (
        poison["event"], poison["entry"], "inventory", "3")
    assert json.loads(caviar["data"]) == {"order_id": poison["id"], "sku": "caviar", "quantity": 1}
    assert by_reason["the entry has no id, data"]["dlq_deliveries"] == "3"
    assert inventory.metric("events_failed_total", group="inventory") == 6  # 3 attempts each
    assert inventory.metric("events_dead_lettered_total", group="inventory") == 2
    assert group_info(client)["inventory"]["pending"] == 0

    # Dead-lettered, they cost nothing more, and the events behind them flow.
    place(http, orders, "mug", 1)
    until(lambda: stock(http, inventory, "mug") == 9, 10, "the next order applied")
    time.sleep(1.5)
    assert inventory.metric("events_failed_total", group="inventory") == 6
    assert len(client.xrange("orders.dlq")) == 2


def test_an_entry_delivered_more_often_than_allowed_is_dead_lettered_without_another_attempt(start, db,
                                                                                             http):
    # A message that kills its consumer never reaches the failure path: only the delivery count can stop it.
    url, client = db
    order = _delivered_to_a_killed_consumer(start, http, url, client, "tea")

    strict = start("inventory", consumer_env(url, consumer="inventory-b", claim_idle_seconds=0.5,
                                                     max_attempts=1))
    (_, letter), = until(lambda: client.xrange("orders.dlq"), 10, "an entry in orders.dlq")
    assert (letter["id"], letter["dlq_deliveries"], letter["dlq_consumer"]) == (order["event"], "2", "inventory-b")
    assert letter["dlq_reason"] == "delivered 2 times, more than EVENTS_MAX_ATTEMPTS (1)"
    assert strict.metric("events_failed_total", group="inventory") == 0
    assert stock(http, strict, "tea") == 40


def test_without_max_attempts_a_poison_message_is_retried_for_ever(start, db, http):
    url, client = db
    orders = start("orders", consumer_env(url), wait=False)
    inventory = start("inventory", consumer_env(url, consumer="inventory-1", claim_idle_seconds=0.3),
                              wait=False)
    orders.wait_ready()
    inventory.wait_ready()
    until(lambda: "inventory" in group_info(client), 10, "group inventory created")
    poison = place(http, orders, "caviar", 1)
    until(lambda: inventory.metric("events_failed_total", group="inventory") >= 5, 15, "five failed attempts")
    held = client.xpending_range("orders", "inventory", "-", "+", 10)
    assert [p["message_id"] for p in held] == [poison["entry"]] and held[0]["times_delivered"] >= 5
    assert client.exists("orders.dlq") == 0


# -- the broker's own durability ---------------------------------------------------------------------------------

@pytest.mark.parametrize("append_only", [True, False], ids=["append-only", "in-memory"])
def test_the_stream_outlives_a_broker_restart_only_with_an_append_only_file(append_only, start, http,
                                                                            redis_binary, tmp_path):
    server = RedisServer(redis_binary, tmp_path / "redis", append_only=append_only).start()
    try:
        url = server.url(0)
        orders = start("orders", consumer_env(url), wait=False)
        notifications = start("notifications", consumer_env(url, consumer="notifications-1"),
                                      wait=False)
        orders.wait_ready()
        notifications.wait_ready()
        first = place(http, orders, "tea", 1)
        until(lambda: len(http.get(f"{notifications.url}/notifications").json()["notifications"]) == 1, 10,
              "the first notification")

        server.stop()
        assert http.get(f"{notifications.url}/notifications").status_code == 503
        server.start()
        client = server.client(0)
        try:
            kept = [e for e, _ in client.xrange("orders")] if client.exists("orders") else []
            assert kept == ([first["entry"]] if append_only else [])
            # The consumer reconnects by itself; a group the broker forgot is created again.
            second = until(lambda: (lambda a: a.json() if a.status_code == 202 else None)(
                http.post(f"{orders.url}/orders", json={"sku": "tea", "quantity": 2})), 10, "an order after restart")
            sent = until(lambda: (lambda ns: ns if ns and ns[0]["order"] == second["id"] else None)(
                http.get(f"{notifications.url}/notifications").json().get("notifications")), 15,
                "the notification of the order after the restart")
            assert [n["order"] for n in sent] == ([second["id"], first["id"]] if append_only else [second["id"]])
            if not append_only:
                notifications.wait_for_record(msg="the consumer group is gone (did the broker lose its data?): "
                                                  "creating it again")
        finally:
            client.close()
    finally:
        server.stop()


def test_orders_answers_503_when_the_broker_is_down(start, http, redis_binary, tmp_path):
    server = RedisServer(redis_binary, tmp_path / "redis").start()
    orders = start("orders", consumer_env(server.url(0)))
    server.stop()
    answer = http.post(f"{orders.url}/orders", json={"sku": "tea", "quantity": 1})
    assert answer.status_code == 503 and answer.json()["error"].startswith("cannot publish OrderPlaced")


# -- pure pieces ------------------------------------------------------------------------------------------------

def test_events_config_reads_the_environment():
    assert EventsConfig.from_env(Env({}), "inventory") is None
    config = EventsConfig.from_env(Env({"EVENTS_REDIS_URL": "redis://redis:6379", "EVENTS_CLAIM_IDLE_SECONDS": "5",
                                        "EVENTS_MAX_ATTEMPTS": "3", "EVENTS_CONSUMER": "inventory-0"}), "inventory")
    assert (config.stream, config.group, config.consumer, config.claim_idle_seconds, config.max_attempts,
            config.dead_letters) == ("orders", "inventory", "inventory-0", 5.0, 3, "orders.dlq")


@pytest.mark.parametrize("env, words", [
    ({"EVENTS_REDIS_URL": "http://redis:6379"}, "must be a redis:// URL"),
    ({"EVENTS_REDIS_URL": "redis://"}, "must be a redis:// URL"),
    ({"EVENTS_REDIS_URL": "redis://redis", "EVENTS_GROUP": "two words"}, "EVENTS_GROUP must be one word"),
    ({"EVENTS_REDIS_URL": "redis://redis", "EVENTS_MAX_ATTEMPTS": "-1"}, "EVENTS_MAX_ATTEMPTS must be between"),
    ({"EVENTS_REDIS_URL": "redis://redis", "EVENTS_CLAIM_IDLE_SECONDS": "soon"}, "must be a number of seconds"),
])
def test_events_config_refuses_what_cannot_work(env, words):
    with pytest.raises(ConfigError, match=words):
        EventsConfig.from_env(Env(env), "inventory")


@pytest.mark.parametrize("fields, words", [
    ({"type": "OrderPlaced"}, "the entry has no id, data"),
    ({"id": "e1", "type": "OrderPlaced", "data": "{"}, "data is not JSON"),
    ({"id": "e1", "type": "OrderPlaced", "data": "[1]"}, "data is not a JSON object"),
])
def test_an_entry_that_is_no_event_is_malformed(fields, words):
    with pytest.raises(Malformed, match=words):
        Event.from_entry("1-0", fields)


@pytest.mark.parametrize("data", [
    {"sku": "tea", "quantity": 1},
    {"order_id": "o1", "sku": "tea", "quantity": "1"},
    {"order_id": "o1", "sku": "tea", "quantity": 0},
    {"order_id": "o1", "sku": "tea", "quantity": True},
])
def test_an_order_placed_event_needs_its_fields(data):
    with pytest.raises(Malformed):
        order_fields(Event("e1", "OrderPlaced", data))


def test_an_event_survives_its_round_trip_through_entry_fields():
    event = Event("e1", "OrderPlaced", {"order_id": "o1", "sku": "tea", "quantity": 2}, "t", "orders")
    again = Event.from_entry("5-0", event.fields())
    assert again == Event("e1", "OrderPlaced", event.data, "t", "orders", "5-0")
    assert order_fields(again) == ("o1", "tea", 2)
