"""A database per service against a real PostgreSQL 15 started here: orders' transactional outbox (the order and
its event commit together or not at all), the relay (each event published once, with two relays at once and one
killed mid-batch), inventory's inbox (a redelivered event applied once), and lab 08's PostgreSQL entrypoint.

The server is Debian's postgresql-15 (/usr/lib/postgresql/15/bin, or $LABCTL_PG_BIN). initdb refuses to run as
root, so as root the server runs as the `postgres` user (else `nobody`)."""

from __future__ import annotations

import asyncio
import itertools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from tests.services.conftest import free_port
from tests.services.conftest import until as wait_until

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
ENTRYPOINT = ROOT / "labs" / "08-data-management" / "postgres-image" / "postgres-entrypoint.sh"
PG_BIN = Path(os.environ.get("LABCTL_PG_BIN", "/usr/lib/postgresql/15/bin"))
SUPERUSER, PASSWORD = "labshop", "s3cret-for-tests"


def _missing_server() -> str | None:
    for tool in ("initdb", "postgres"):
        if not (PG_BIN / tool).is_file():
            return f"{PG_BIN / tool} is missing (install the Debian package postgresql-15)"
    return None


_free_port = free_port  # one registry of handed-out ports for the whole run


@dataclass(frozen=True)
class RunAs:
    """Who the server's processes run as: ourselves, or (as root) an unprivileged user."""

    uid: int
    gid: int

    @classmethod
    def pick(cls) -> RunAs:
        if os.geteuid() != 0:
            return cls(os.getuid(), os.getgid())
        for name in ("postgres", "nobody"):
            try:
                entry = pwd.getpwnam(name)
            except KeyError:
                continue
            return cls(entry.pw_uid, entry.pw_gid)
        raise RuntimeError("running as root, and neither a postgres nor a nobody user exists to run PostgreSQL as")

    def popen_args(self) -> dict:
        if os.geteuid() != 0:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": []}

    def folder(self, prefix: str) -> Path:
        """A new private folder this user owns (the pytest tmp folders are root's and closed to others)."""
        path = Path(tempfile.mkdtemp(prefix=prefix))
        os.chown(path, self.uid, self.gid)
        return path


class Postgres:
    """One PostgreSQL server on 127.0.0.1:<free port>, password (SCRAM) logins, for this module's tests."""

    def __init__(self, run_as: RunAs) -> None:
        self.run_as = run_as
        self.dir = run_as.folder("labshop-pg-")
        self.port = _free_port()
        self.log_path = self.dir / "server.log"
        self.proc: subprocess.Popen | None = None
        self._names = itertools.count(1)

    def start(self) -> Postgres:
        env = {"PATH": os.environ.get("PATH", ""), "LANG": "C.UTF-8"}
        # A file the server's user can open (a pipe from this process would be root's and closed to it).
        pwfile = self.dir / "pwfile"
        pwfile.write_text(PASSWORD + "\n")
        os.chown(pwfile, self.run_as.uid, self.run_as.gid)
        done = subprocess.run(
            [str(PG_BIN / "initdb"), "-D", str(self.dir / "data"), "-U", SUPERUSER, f"--pwfile={pwfile}",
             "--auth=scram-sha-256", "--encoding=UTF8", "--locale=C.UTF-8", "--no-sync"],
            capture_output=True, text=True, env=env, timeout=120, check=False, cwd=self.dir,
            **self.run_as.popen_args())
        pwfile.unlink()
        if done.returncode != 0:
            raise AssertionError(f"initdb failed:\n{done.stdout}{done.stderr}")
        with open(self.log_path, "w") as log:
            # fsync off: these databases live for a test run; a crash only has to leave them consistent
            # for the killed-relay test, which the server does without fsync as long as the host stays up.
            self.proc = subprocess.Popen(
                [str(PG_BIN / "postgres"), "-D", str(self.dir / "data"), "-p", str(self.port),
                 "-k", str(self.dir), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off",
                 "-c", "max_connections=200"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=self.dir,
                **self.run_as.popen_args())
        deadline = time.monotonic() + 60
        while True:
            try:
                self.connect("postgres").close()
                return self
            except psycopg.OperationalError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"PostgreSQL did not start:\n{self.log_path.read_text()}") from None
                time.sleep(0.1)

    def url(self, dbname: str) -> str:
        """The URL a service is given: no password in it (that comes as PGPASSWORD, as from a Secret)."""
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{dbname}"

    def connect(self, dbname: str, **kwargs):
        return psycopg.connect(host="127.0.0.1", port=self.port, user=SUPERUSER, password=PASSWORD,
                               dbname=dbname, connect_timeout=5, **kwargs)

    def database(self, prefix: str) -> str:
        """A new, empty database: each test starts from nothing."""
        name = f"{prefix}_{next(self._names)}"
        with self.connect("postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return name

    def query(self, dbname: str, sql: str, params: tuple = ()) -> list[tuple]:
        with self.connect(dbname) as conn:
            return conn.execute(sql, params).fetchall()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # fast shutdown
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def run_as() -> RunAs:
    missing = _missing_server()
    if missing:
        if os.environ.get("LABCTL_REQUIRE_CLUSTER") == "1":
            pytest.fail(f"LABCTL_REQUIRE_CLUSTER=1 but PostgreSQL 15 is not installed: {missing}", pytrace=False)
        pytest.skip(f"PostgreSQL 15 is not installed: {missing}")
    return RunAs.pick()


@pytest.fixture(scope="module")
def pg(run_as) -> Iterator[Postgres]:
    server = Postgres(run_as)
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
def shop(pg, start_service, http):
    """shop(relays=..., publish=..., ...) -> fresh databases and the services on them."""

    started = []

    class Shop:
        def __init__(self) -> None:
            self.orders_db = pg.database("orders")
            self.inventory_db = pg.database("inventory")

        def inventory(self, *, port: int | None = None, wait: bool = True, **env: str):
            full = {"INVENTORY_DATABASE_URL": pg.url(self.inventory_db), "PGPASSWORD": PASSWORD, **env}
            if port is None:
                service = start_service("inventory", full, wait=False)
            else:
                # A fixed port: "inventory comes back" at the address orders was configured with.
                service = start_service("inventory", {**full, "PORT": str(port)}, wait=False)
                service.port, service.url = port, f"http://127.0.0.1:{port}"
            started.append(service)
            return service.wait_ready() if wait else service

        def orders(self, inventory_url: str, *, wait: bool = True, **env: str):
            full = {"ORDERS_DATABASE_URL": pg.url(self.orders_db), "PGPASSWORD": PASSWORD,
                    "INVENTORY_URL": inventory_url, "INVENTORY_TIMEOUT_SECONDS": "2",
                    "OUTBOX_INTERVAL_SECONDS": "0.05", "OUTBOX_BACKOFF_MAX_SECONDS": "0.5", **env}
            service = start_service("orders", full, wait=wait)
            started.append(service)
            return service

        def outbox(self) -> list[tuple]:
            return pg.query(self.orders_db, "SELECT event_id, published_at IS NOT NULL, published_by, attempts"
                                            " FROM outbox ORDER BY seq")

        def processed(self) -> dict[str, int]:
            return dict(pg.query(self.inventory_db, "SELECT event_id, deliveries FROM processed_events"))

        def stock(self, sku: str) -> int:
            return pg.query(self.inventory_db, "SELECT units FROM stock WHERE sku = %s", (sku,))[0][0]

        def place(self, orders, n: int, sku_of: Callable[[int], str] = lambda i: "tea") -> list[str]:
            ids = []
            for i in range(n):
                answer = http.post(f"{orders.url}/orders", json={"sku": sku_of(i), "quantity": 1})
                assert answer.status_code == 201, answer.text
                ids.append(answer.json()["id"])
            return ids

    yield Shop
    # Each test's services stop with it: a module's worth of idle relays would poll their databases meanwhile.
    for service in started:
        service.terminate()
    for service in started:
        service.stop()


# -- the order and its event: together or not at all -------------------------------------------------------

def test_the_order_row_and_the_outbox_row_commit_together_or_not_at_all(shop, pg, http):
    s = shop()
    orders = s.orders("http://127.0.0.1:9", OUTBOX_RELAY="off")  # no relay: the outbox keeps what it gets
    ok = http.post(f"{orders.url}/orders", json={"sku": "tea", "quantity": 2})
    assert ok.status_code == 201, ok.text
    order = ok.json()
    assert order["status"] == "accepted" and order["total_cents"] == 1300
    assert order["event"] == {"id": f"placed-{order['id']}", "state": "pending", "attempts": 0,
                              "published_at": None, "published_by": None, "last_error": None}
    assert pg.query(s.orders_db, "SELECT payload->>'sku', (payload->>'quantity')::int FROM outbox"
                                 " WHERE aggregate_id = %s", (order["id"],)) == [("tea", 2)]

    # Make the second statement of the transaction fail (the outbox insert violates a constraint the order
    # insert before it satisfied): neither row may be left behind.
    with pg.connect(s.orders_db, autocommit=True) as conn:
        conn.execute("ALTER TABLE outbox ADD CONSTRAINT no_kettles CHECK (payload->>'sku' <> 'kettle')")
    failed = http.post(f"{orders.url}/orders", json={"id": "kettle-1", "sku": "kettle", "quantity": 1})
    assert failed.status_code == 503, failed.text
    assert "no_kettles" in failed.json()["error"]
    assert pg.query(s.orders_db, "SELECT count(*) FROM orders WHERE id = 'kettle-1'") == [(0,)]
    assert pg.query(s.orders_db, "SELECT count(*) FROM outbox WHERE aggregate_id = 'kettle-1'") == [(0,)]
    assert http.get(f"{orders.url}/orders/kettle-1").status_code == 404
    assert http.get(f"{orders.url}/outbox").json()["pending"] == 1


def test_the_store_function_rolls_back_the_order_when_its_event_cannot_be_written(shop, pg):
    """The same promise without HTTP in between: insert_order's one transaction, on a real connection."""
    from labshop import outbox

    s = shop()

    async def scenario() -> None:
        conn = await psycopg.AsyncConnection.connect(pg.url(s.orders_db), password=PASSWORD, autocommit=True)
        try:
            await outbox.create_tables(conn)
            # An event id taken already: the outbox insert fails on its unique key, after the order insert.
            await conn.execute("INSERT INTO outbox (event_id, type, aggregate_id, payload)"
                               " VALUES ('placed-o-2', 'order.placed', 'elsewhere', '{}')")
            order = {"id": "o-2", "sku": "mug", "quantity": 1, "total_cents": 1500}
            with pytest.raises(psycopg.errors.UniqueViolation):
                await outbox.insert_order(conn, order, with_event=True)
            cur = await conn.execute("SELECT count(*) FROM orders")
            assert await cur.fetchone() == (0,)
            stored, new = await outbox.insert_order(conn, {**order, "id": "o-3"}, with_event=True)
            assert new and stored["event"]["id"] == "placed-o-3"
            # The same order again is not a second order, and not a second event.
            again, new = await outbox.insert_order(conn, {**order, "id": "o-3"}, with_event=True)
            assert not new and again == stored
            with pytest.raises(outbox.OrderConflict):
                await outbox.insert_order(conn, {**order, "id": "o-3", "quantity": 5}, with_event=True)
            cur = await conn.execute("SELECT count(*) FROM outbox WHERE aggregate_id = 'o-3'")
            assert await cur.fetchone() == (1,)
        finally:
            await conn.close()

    asyncio.run(scenario())


def test_a_client_chosen_order_id_makes_placing_an_order_safe_to_repeat(shop, http):
    s = shop()
    orders = s.orders("http://127.0.0.1:9", OUTBOX_RELAY="off")
    first = http.post(f"{orders.url}/orders", json={"id": "check-1", "sku": "mug", "quantity": 1})
    again = http.post(f"{orders.url}/orders", json={"id": "check-1", "sku": "mug", "quantity": 1})
    other = http.post(f"{orders.url}/orders", json={"id": "check-1", "sku": "mug", "quantity": 3})
    bad = http.post(f"{orders.url}/orders", json={"id": "no spaces", "sku": "mug", "quantity": 1})
    unknown = http.post(f"{orders.url}/orders", json={"sku": "caviar", "quantity": 1})
    assert (first.status_code, again.status_code, other.status_code) == (201, 200, 409)
    assert again.json() == first.json()
    assert (bad.status_code, unknown.status_code) == (422, 404)
    assert [row[0] for row in s.outbox()] == ["placed-check-1"]


# -- eventual consistency, and the dual write it replaces ---------------------------------------------------

def test_the_outbox_delivers_once_inventory_is_back_where_a_direct_publish_loses_the_event(shop, http):
    s = shop()
    port = _free_port()
    down = f"http://127.0.0.1:{port}"  # nothing listens there yet
    direct = s.orders(down, ORDERS_PUBLISH="direct", INVENTORY_RETRIES="1", INVENTORY_BACKOFF_SECONDS="0.05")
    relayed = s.orders(down)
    lost = http.post(f"{direct.url}/orders", json={"id": "lost-1", "sku": "coffee", "quantity": 2})
    kept = http.post(f"{relayed.url}/orders", json={"id": "kept-1", "sku": "coffee", "quantity": 3})
    assert lost.status_code == 201 and kept.status_code == 201
    direct.wait_for_record(msg="event lost", event="placed-lost-1")
    assert direct.metric("labshop_events_lost_total") == 1
    wait_until(lambda: http.get(f"{relayed.url}/orders/kept-1").json()["event"]["attempts"] >= 1, 10,
               "the relay tried to publish while inventory was down")
    pending = http.get(f"{relayed.url}/orders/kept-1").json()["event"]
    assert pending["state"] == "pending" and "cannot connect" in pending["last_error"]

    inventory = s.inventory(port=port)
    reservation = wait_until(lambda: (r := http.get(f"{inventory.url}/reservations/kept-1")).status_code == 200
                             and r.json(), 15, "the outbox's event reached inventory")
    assert reservation["status"] == "reserved" and reservation["quantity"] == 3
    assert reservation["event_id"] == "placed-kept-1"
    assert http.get(f"{inventory.url}/stock/coffee").json()["available"] == 25 - 3
    published = wait_until(lambda: (e := http.get(f"{relayed.url}/orders/kept-1").json()["event"])["state"]
                           == "published" and e, 10, "the relay marked the event published")
    assert published["published_by"].startswith("relay/")
    # The direct publish's event never arrives: the order exists, inventory never heard of it.
    time.sleep(0.5)
    assert http.get(f"{inventory.url}/reservations/lost-1").status_code == 404
    assert http.get(f"{direct.url}/orders/lost-1").json()["event"] is None
    assert inventory.metric("labshop_inbox_events_total", outcome="reserved") == 1


# -- the relay: each event published once --------------------------------------------------------------------

def test_two_relays_side_by_side_publish_each_event_once(shop, pg, http):
    s = shop()
    # inventory answers slowly enough that neither relay can take every batch before the other starts.
    inventory = s.inventory(RESPONSE_DELAY_SECONDS="0.05")
    writer = s.orders(inventory.url, OUTBOX_RELAY="off")
    ids = s.place(writer, 60, lambda i: "coffee" if i % 2 else "tea")  # 30 of each; 25 coffees are in stock
    relays = [s.orders(inventory.url, wait=False, OUTBOX_BATCH_SIZE="5") for _ in range(2)]
    for relay in relays:
        relay.wait_ready()
    wait_until(lambda: all(published for _, published, _, _ in s.outbox()), 60, "every event was published")

    processed = s.processed()
    assert sorted(processed) == sorted(f"placed-{i}" for i in ids)
    assert set(processed.values()) == {1}, {k: v for k, v in processed.items() if v != 1}
    publishers = {by for _, _, by, _ in s.outbox()}
    assert len(publishers) == 2, publishers  # both relays took part, and never took the same row
    assert sum(relay.metric("labshop_outbox_published_total") for relay in relays) == 60
    assert (s.stock("tea"), s.stock("coffee")) == (40 - 30, 0)
    statuses = dict(pg.query(s.inventory_db, "SELECT status, count(*) FROM reservations GROUP BY status"))
    assert statuses == {"reserved": 55, "out-of-stock": 5}


def test_a_relay_killed_mid_batch_leaves_its_events_to_the_other_and_inventory_applies_them_once(shop, pg, http):
    s = shop()
    inventory = s.inventory(RESPONSE_DELAY_SECONDS="0.1")  # 10 events take a relay at least a second
    writer = s.orders(inventory.url, OUTBOX_RELAY="off")
    ids = s.place(writer, 40)
    doomed = s.orders(inventory.url, OUTBOX_BATCH_SIZE="10")
    survivor = s.orders(inventory.url, OUTBOX_BATCH_SIZE="10")

    with pg.connect(s.orders_db, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pgrowlocks")  # who holds which row lock (postgresql-15)

    def doomed_mid_batch() -> bool:
        # Mid-batch: among the outbox rows the doomed relay holds locked (claimed, not yet committed), at least
        # one has already reached inventory.
        held = pg.query(s.orders_db, "SELECT o.event_id FROM pgrowlocks('outbox') l JOIN outbox o ON o.ctid ="
                                     " l.locked_row JOIN pg_stat_activity a ON a.pid = ANY(l.pids)"
                                     " WHERE a.application_name LIKE %s", (f"relay/%/{doomed.proc.pid}",))
        return bool({event for (event,) in held} & set(s.processed()))

    wait_until(doomed_mid_batch, 30, "the doomed relay was in the middle of a batch", interval=0.02)
    doomed.proc.kill()  # SIGKILL: no clean-up, its connection drops, its transaction rolls back
    doomed.proc.wait()
    wait_until(lambda: all(published for _, published, _, _ in s.outbox()), 60, "every event was published")

    processed = s.processed()
    assert sorted(processed) == sorted(f"placed-{i}" for i in ids)
    # What the doomed relay sent in its last batch was sent again by the survivor: more deliveries than events,
    # yet every event was applied once (40 tea orders, 40 units: none short, none left).
    redelivered = {k: v for k, v in processed.items() if v > 1}
    assert redelivered, "the kill came after the doomed relay's batch was committed: nothing was sent twice"
    assert s.stock("tea") == 0
    reserved = pg.query(s.inventory_db, "SELECT count(*), sum(quantity) FROM reservations WHERE status = 'reserved'")
    assert reserved == [(40, 40)]
    assert inventory.metric("labshop_inbox_events_total", outcome="duplicate") == sum(processed.values()) - 40
    survivor_name = {by for _, _, by, _ in s.outbox()} - {None}
    assert any(by.endswith(f"/{survivor.proc.pid}") for by in survivor_name)


# -- inventory's inbox ------------------------------------------------------------------------------------------

def test_inventory_applies_an_event_once_however_often_and_wherever_it_is_delivered(shop, http):
    s = shop()
    replicas = [s.inventory(wait=False), s.inventory(wait=False)]
    for r in replicas:
        r.wait_ready()
    event = {"id": "placed-x1", "type": "order.placed", "order_id": "x1", "sku": "kettle", "quantity": 2}

    def deliver(i: int):
        target = replicas[i % 2]
        return http.post(f"{target.url}/events", json=event, headers={"Idempotency-Key": event["id"]})

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(deliver, range(8)))
    assert sorted(a.status_code for a in answers) == [200] * 7 + [201]
    assert [a.json()["outcome"] for a in answers if a.status_code == 201] == ["reserved"]
    assert all(a.json()["duplicate"] for a in answers if a.status_code == 200)
    assert http.get(f"{replicas[0].url}/stock/kettle").json()["available"] == 3 - 2
    reservation = http.get(f"{replicas[1].url}/reservations/x1").json()
    assert reservation == {"order_id": "x1", "event_id": "placed-x1", "sku": "kettle", "quantity": 2,
                           "status": "reserved", "remaining": 1, "deliveries": 8}
    assert http.get(f"{replicas[1].url}/events/placed-x1").json()["deliveries"] == 8

    # Another order's event finds too little left: recorded, and (being recorded) not retried into success.
    short = {"id": "placed-x2", "type": "order.placed", "order_id": "x2", "sku": "kettle", "quantity": 2}
    assert http.post(f"{replicas[0].url}/events", json=short).json()["outcome"] == "out-of-stock"
    assert http.post(f"{replicas[1].url}/events", json=short).json()["duplicate"] is True
    assert http.get(f"{replicas[0].url}/stock/kettle").json()["available"] == 1


BAD_EVENTS = [
    ({"type": "order.placed", "order_id": "a", "sku": "tea", "quantity": 1}, {}, "needs an id"),
    ({"id": "e1", "type": "order.placed", "order_id": "a", "sku": "tea", "quantity": 1}, {"Idempotency-Key": "e2"},
     "differs"),
    ({"id": "e1", "type": "order.placed", "order_id": "a", "sku": "tea", "quantity": 0}, {}, "quantity"),
    ({"id": "e1", "type": "order.placed", "sku": "tea", "quantity": 1}, {}, "order_id"),
    ({"id": "e1", "order_id": "a"}, {}, "type must be text"),
    (["not", "an", "object"], {}, "JSON object"),
]


def test_inventory_refuses_an_event_it_cannot_read_and_records_nothing(shop, http):
    s = shop()
    inventory = s.inventory()
    for body, headers, words in BAD_EVENTS:
        answer = http.post(f"{inventory.url}/events", json=body, headers=headers)
        assert answer.status_code == 422 and words in answer.json()["error"], (body, answer.text)
    assert s.processed() == {}
    other = http.post(f"{inventory.url}/events", json={"id": "e9", "type": "order.shipped", "order_id": "a"})
    assert other.status_code == 201 and other.json()["outcome"] == "ignored"


def test_stock_outlives_the_inventory_process(shop, http):
    s = shop()
    first = s.inventory()
    event = {"id": "placed-y", "type": "order.placed", "order_id": "y", "sku": "mug", "quantity": 4}
    assert http.post(f"{first.url}/events", json=event).status_code == 201
    assert first.stop() == 0
    second = s.inventory()
    assert http.get(f"{second.url}/stock/mug").json()["available"] == 6
    assert http.post(f"{second.url}/events", json=event).json()["duplicate"] is True


@pytest.mark.parametrize("name, variable", [("inventory", "INVENTORY_DATABASE_URL"), ("orders", "ORDERS_DATABASE_URL")])
def test_a_service_waits_for_its_database_and_says_why(start_service, http, name, variable):
    port = _free_port()  # no database there
    service = start_service(name, {variable: f"postgresql://x@127.0.0.1:{port}/x", "PGPASSWORD": "nope",
                                   "INVENTORY_URL": "http://127.0.0.1:9"}, wait=False)
    record = service.wait_for_record(msg="database not ready", timeout=20)
    assert "cannot connect to 127.0.0.1" in record["reason"] and "nope" not in service.log()
    answer = wait_until(lambda: (r := http.get(f"{service.url}/readyz")).status_code == 503 and r, 20,
                        f"{name} answers /readyz")
    assert answer.json()["status"] == "waiting for the database"
    assert http.get(f"{service.url}/healthz").status_code == 200  # alive, so the kubelet does not restart it
    started = time.monotonic()
    assert service.stop() == 0  # and it stops promptly on SIGTERM, though it was still waiting
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("env, words", [
    ({"ORDERS_DATABASE_URL": "postgresql://h/db", "ORDERS_PUBLISH": "sometimes"}, "ORDERS_PUBLISH must be"),
    ({"ORDERS_DATABASE_URL": "postgresql://h/db", "OUTBOX_RELAY": "maybe"}, "OUTBOX_RELAY must be"),
    ({"ORDERS_DATABASE_URL": "postgresql://h/db"}, "INVENTORY_URL must be set"),
    ({"ORDERS_DATABASE_URL": "not a url = = ="}, "is not a PostgreSQL URL"),
    ({"ORDERS_DATABASE_URL": "dbname=x", "INVENTORY_URL": "http://i"}, "must name the database's host"),
])
def test_orders_refuses_a_database_configuration_that_cannot_work(services_dir, env, words):
    done = subprocess.run([sys.executable, "-m", "labshop", "orders"], capture_output=True, text=True, timeout=60,
                          env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(services_dir), **env})
    assert done.returncode == 2, done.stdout + done.stderr
    assert words in done.stdout and "Traceback" not in done.stdout + done.stderr


# -- lab 08's PostgreSQL image: its entrypoint ----------------------------------------------------------------

def _entrypoint(run_as: RunAs, folder: Path, port: int, **env: str) -> subprocess.Popen:
    full = {"PATH": f"{PG_BIN}:/usr/bin:/bin", "LANG": "C.UTF-8", "PGDATA": str(folder / "data" / "pgdata"), **env}
    with open(folder / f"entrypoint-{time.monotonic_ns()}.log", "w") as log:
        return subprocess.Popen(["/bin/sh", str(ENTRYPOINT), "-p", str(port), "-k", str(folder),
                                 "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"],
                                env=full, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=folder, **run_as.popen_args())


def test_the_postgres_image_entrypoint_initialises_once_with_the_password_from_its_environment(run_as):
    folder = run_as.folder("labshop-entrypoint-")
    (folder / "data").mkdir()
    os.chown(folder / "data", run_as.uid, run_as.gid)
    port = _free_port()
    try:
        refused = _entrypoint(run_as, folder, port, POSTGRES_USER="orders")
        assert refused.wait(60) == 2
        logs = "".join(p.read_text() for p in folder.glob("entrypoint-*.log"))
        assert "POSTGRES_PASSWORD is not set" in logs and not (folder / "data" / "pgdata").exists()

        def serve(**env: str) -> subprocess.Popen:
            proc = _entrypoint(run_as, folder, port, POSTGRES_USER="orders", POSTGRES_DB="orders", **env)
            wait_until(lambda: proc.poll() is not None or _can_connect(port, "orders", "first-pw"), 60,
                       "the entrypoint's server accepts the password")
            assert proc.poll() is None, "".join(p.read_text() for p in folder.glob("entrypoint-*.log"))
            return proc

        server = serve(POSTGRES_PASSWORD="first-pw")
        try:
            with psycopg.connect(host="127.0.0.1", port=port, user="orders", password="first-pw",
                                 dbname="orders") as conn:
                owner = conn.execute("SELECT pg_get_userbyid(datdba) FROM pg_database"
                                     " WHERE datname = 'orders'").fetchone()
                method = conn.execute("SELECT DISTINCT auth_method FROM pg_hba_file_rules").fetchall()
                conn.execute("CREATE TABLE kept (x int)")
            assert owner == ("orders",) and method == [("scram-sha-256",)]
            with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
                psycopg.connect(host="127.0.0.1", port=port, user="orders", password="wrong", dbname="orders")
        finally:
            server.send_signal(signal.SIGINT)  # the image's STOPSIGNAL
            assert server.wait(30) == 0
        # The second start finds the cluster on the "volume": no password needed, the old one still holds.
        server = serve()
        try:
            with psycopg.connect(host="127.0.0.1", port=port, user="orders", password="first-pw",
                                 dbname="orders") as conn:
                assert conn.execute("SELECT count(*) FROM kept").fetchone() == (0,)
        finally:
            server.send_signal(signal.SIGINT)
            server.wait(30)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _can_connect(port: int, user: str, password: str) -> bool:
    try:
        psycopg.connect(host="127.0.0.1", port=port, user=user, password=password, dbname=user,
                        connect_timeout=2).close()
        return True
    except psycopg.OperationalError:
        return False


def test_the_database_url_names_the_place_and_the_pg_variables_fill_in_the_login():
    from labshop.config import Env
    from labshop.db import Database

    db = Database.from_env(Env({"ORDERS_DATABASE_URL": "postgresql://orders-db:5432/orders",
                                "PGUSER": "orders", "PGPASSWORD": "from-the-secret", "PGHOST": "elsewhere"}),
                           "ORDERS_DATABASE_URL")
    assert db.params == {"host": "orders-db", "port": "5432", "dbname": "orders", "user": "orders",
                         "password": "from-the-secret"}
    assert not db.password_in_url
    assert db.describe() == "orders-db:5432/orders as orders"
    only_pg = Database.from_env(Env({"PGHOST": "db", "PGDATABASE": "shop"}), "ORDERS_DATABASE_URL")
    assert only_pg.params == {"host": "db", "dbname": "shop"} and only_pg.describe() == "db:5432/shop"
    inline = Database.from_env(Env({"X": "postgresql://u:pw@db/x", "PGPASSWORD": "other"}), "X")
    assert inline.password_in_url and inline.params["password"] == "pw" and "pw" not in inline.describe()
