"""orders: takes orders, calling catalog (price), inventory (reservation) and payments (authorisation).

POST /orders              {"sku", "quantity"} -> 201 order; 404 unknown product, 409 out of stock,
                          402 payment declined, 503 when a dependency failed after its retries
GET  /orders/{id}         an order taken by this instance
GET  /availability/{sku}  asks inventory how many units are left (one call, no side effect)

Each dependency is a base URL (CATALOG_URL, INVENTORY_URL, PAYMENTS_URL; a Service's DNS name such as
http://inventory) and a call policy: <NAME>_TIMEOUT_SECONDS (default 5), <NAME>_RETRIES (default 0) and
<NAME>_BACKOFF_SECONDS (default 0.1), e.g. INVENTORY_RETRIES=2. INVENTORY_TOKEN_FILE names a projected
ServiceAccount token sent to inventory as proof of who is calling. <NAME>_BREAKER_FAILURES (and _OPEN_SECONDS,
_HALF_OPEN_PROBES) puts a circuit breaker in front of a dependency (labshop.breaker). PAYMENTS_FALLBACK=pending
accepts an order whose payment failed as 202 {"status": "pending_payment"} instead of answering 503.
READINESS_CHECKS_DOWNSTREAM=payments makes /readyz depend on payments' (labshop.downstream; better unset).
EVENTS_REDIS_URL makes placing an order announcing it: OrderPlaced is published, nobody is called (labshop.events).
ORDERS_DATABASE_URL (or PGHOST) keeps the orders in PostgreSQL and sends their events through a transactional
outbox (labshop.outbox).
"""

from __future__ import annotations

import uuid

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from labshop import breaker, logs, participants
from labshop.calls import CallPolicy, Dependency, DependencyError, json_object
from labshop.config import Common, Env
from labshop.downstream import DownstreamReadiness
from labshop.events import OrderEvents
from labshop.web import Built, create_app, json_body, json_error

NAME = "orders"


def unavailable(e: DependencyError) -> JSONResponse:
    """A dependency gave up: answer at once and say which, and how often it was tried."""
    return json_error(503, str(e), target=e.target, attempts=e.attempts)


def refused(target: str, status: int, body: dict) -> JSONResponse:
    """A dependency answered, but not with what was asked for (for instance 401: no valid token)."""
    return json_error(502, f"{target} answered {status}: {body.get('error', '')}".rstrip(": "), target=target)


def create(env: Env) -> Built:
    """The orders service, configured from `env`."""
    if env.raw("ORDERS_DATABASE_URL") or env.raw("PGHOST"):  # its own PostgreSQL database: labshop.outbox
        from labshop import outbox  # imported here: only services with a database need psycopg
        return outbox.create(env)
    common = Common.from_env(env)
    log = logs.setup(NAME, common.log_level)
    deps: dict[str, Dependency] = {}
    for name in ("catalog", "inventory", "payments"):
        url = env.url(f"{name.upper()}_URL")
        if url:
            token_file = env.text(f"{name.upper()}_TOKEN_FILE")
            deps[name] = breaker.dependency(env, name, url, CallPolicy.from_env(env, name.upper()),
                                            token_file=token_file)
    orders: dict[str, dict] = {}
    order_events = OrderEvents.from_env(env, NAME, log)  # None unless EVENTS_REDIS_URL is set
    pay_later = breaker.fallback_setting(env, "PAYMENTS_FALLBACK", ("none", "pending")) == "pending"

    def dep(name: str) -> Dependency:
        if name not in deps:
            raise DependencyError(name, 0, f"{name.upper()}_URL is not set")
        return deps[name]

    async def availability(request: Request) -> JSONResponse:
        sku = request.path_params["sku"]
        try:
            response = await dep("inventory").call("GET", f"/stock/{sku}")
        except DependencyError as e:
            return unavailable(e)
        body = json_object(response)
        if response.status_code == 404:
            return json_error(404, f"no product {sku!r}")
        if response.status_code != 200:
            return refused("inventory", response.status_code, body)
        return JSONResponse({"sku": sku, "available": body.get("available"), "inventory_pod": body.get("pod"),
                             "served_by": NAME})

    async def place(request: Request) -> JSONResponse:
        body = await json_body(request, sku=str, quantity=int)
        sku, quantity = body["sku"], body["quantity"]
        order_id = uuid.uuid4().hex[:12]
        if order_events is not None:  # event-driven: publish OrderPlaced (202) instead of calling anyone
            return await order_events.place(order_id, sku, quantity, orders)
        try:
            product = await dep("catalog").call("GET", f"/products/{sku}")
            if product.status_code == 404:
                return json_error(404, f"no product {sku!r}")
            if product.status_code != 200:
                return refused("catalog", product.status_code, json_object(product))
            price = int(json_object(product).get("price_cents", 0))
            # The order id is the idempotency key: a retried reservation cannot reserve twice.
            reservation = await dep("inventory").call("POST", "/reservations", json={"sku": sku, "quantity": quantity},
                                                      idempotency_key=order_id)
            if reservation.status_code == 409:
                return json_error(409, f"not enough {sku} in stock", **{
                    k: v for k, v in json_object(reservation).items() if k in ("wanted", "available")})
            if reservation.status_code != 201:
                return refused("inventory", reservation.status_code, json_object(reservation))
            payment = await dep("payments").call("POST", "/payments",
                                                 json={"order_id": order_id, "amount_cents": price * quantity},
                                                 idempotency_key=order_id)
            if payment.status_code == 402:
                return json_error(402, json_object(payment).get("error", "payment declined"))
            if payment.status_code != 201:
                return refused("payments", payment.status_code, json_object(payment))
        except DependencyError as e:
            if e.target == "payments" and pay_later:  # the fallback: stock is reserved, the payment is taken later
                breaker.FALLBACKS.labels("payments").inc()
                orders[order_id] = {"id": order_id, "sku": sku, "quantity": quantity, "total_cents": price * quantity,
                                    "reservation": json_object(reservation).get("id"), "payment": None,
                                    "status": "pending_payment", "fallback": str(e)}
                log.warning("order accepted without payment", extra={"order": order_id, "reason": str(e)})
                return JSONResponse(orders[order_id], status_code=202)
            return unavailable(e)
        order = {"id": order_id, "sku": sku, "quantity": quantity, "total_cents": price * quantity,
                 "reservation": json_object(reservation).get("id"), "payment": json_object(payment).get("id"),
                 "status": "confirmed"}
        orders[order_id] = order
        log.info("order placed", extra={"order": order_id, "sku": sku, "quantity": quantity})
        return JSONResponse(order, status_code=201)

    async def get_order(request: Request) -> JSONResponse:
        order = orders.get(request.path_params["id"])
        if order is None:
            return json_error(404, "no such order")
        return JSONResponse(order)

    async def close() -> None:
        for d in deps.values():
            await d.close()
        if order_events is not None:
            await order_events.close()

    readiness = DownstreamReadiness.from_env(env, common.not_ready_file, deps)
    routes = [
        Route("/orders", place, methods=["POST"]),
        Route("/orders/{id}", get_order),
        Route("/availability/{sku}", availability),
    ]
    routes += participants.orders_routes(env, orders)  # create/confirm/cancel for sagas, with SAGA_PARTICIPANT=true
    app = create_app(NAME, common, routes, readiness=readiness, log=log, on_startup=[readiness.start],
                     on_shutdown=[readiness.stop, close])
    return Built(app, common, readiness, log)
