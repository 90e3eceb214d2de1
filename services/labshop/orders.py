"""orders: takes orders, calling catalog (price), inventory (reservation) and payments (authorisation).

POST /orders              {"sku", "quantity"} -> 201 order; 404 unknown product, 409 out of stock,
                          402 payment declined, 503 when a dependency failed after its retries
GET  /orders/{id}         an order taken by this instance
GET  /availability/{sku}  asks inventory how many units are left (one call, no side effect)

Each dependency is a base URL (CATALOG_URL, INVENTORY_URL, PAYMENTS_URL; a Service's DNS name such as
http://inventory) and a call policy: <NAME>_TIMEOUT_SECONDS (default 5), <NAME>_RETRIES (default 0) and
<NAME>_BACKOFF_SECONDS (default 0.1), e.g. INVENTORY_RETRIES=2. INVENTORY_TOKEN_FILE names a projected
ServiceAccount token sent to inventory as proof of who is calling.
"""

from __future__ import annotations

import uuid

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from labshop import logs
from labshop.calls import CallPolicy, Dependency, DependencyError
from labshop.config import Common, Env
from labshop.web import Built, Readiness, create_app, json_body, json_error

NAME = "orders"


def unavailable(e: DependencyError) -> JSONResponse:
    """A dependency gave up: answer at once and say which, and how often it was tried."""
    return json_error(503, str(e), target=e.target, attempts=e.attempts)


def refused(target: str, status: int, body: dict) -> JSONResponse:
    """A dependency answered, but not with what was asked for (for instance 401: no valid token)."""
    return json_error(502, f"{target} answered {status}: {body.get('error', '')}".rstrip(": "), target=target)


def _json(response) -> dict:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def create(env: Env) -> Built:
    """The orders service, configured from `env`."""
    common = Common.from_env(env)
    log = logs.setup(NAME, common.log_level)
    deps: dict[str, Dependency] = {}
    for name in ("catalog", "inventory", "payments"):
        url = env.url(f"{name.upper()}_URL")
        if url:
            token_file = env.text(f"{name.upper()}_TOKEN_FILE")
            deps[name] = Dependency(name, url, CallPolicy.from_env(env, name.upper()), token_file=token_file)
    orders: dict[str, dict] = {}

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
        body = _json(response)
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
        try:
            product = await dep("catalog").call("GET", f"/products/{sku}")
            if product.status_code == 404:
                return json_error(404, f"no product {sku!r}")
            if product.status_code != 200:
                return refused("catalog", product.status_code, _json(product))
            price = int(_json(product).get("price_cents", 0))
            # The order id is the idempotency key: a retried reservation cannot reserve twice.
            reservation = await dep("inventory").call("POST", "/reservations", json={"sku": sku, "quantity": quantity},
                                                      idempotency_key=order_id)
            if reservation.status_code == 409:
                return json_error(409, f"not enough {sku} in stock", **{
                    k: v for k, v in _json(reservation).items() if k in ("wanted", "available")})
            if reservation.status_code != 201:
                return refused("inventory", reservation.status_code, _json(reservation))
            payment = await dep("payments").call("POST", "/payments",
                                                 json={"order_id": order_id, "amount_cents": price * quantity},
                                                 idempotency_key=order_id)
            if payment.status_code == 402:
                return json_error(402, _json(payment).get("error", "payment declined"))
            if payment.status_code != 201:
                return refused("payments", payment.status_code, _json(payment))
        except DependencyError as e:
            return unavailable(e)
        order = {"id": order_id, "sku": sku, "quantity": quantity, "total_cents": price * quantity,
                 "reservation": _json(reservation).get("id"), "payment": _json(payment).get("id"),
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

    readiness = Readiness(common.not_ready_file)
    routes = [
        Route("/orders", place, methods=["POST"]),
        Route("/orders/{id}", get_order),
        Route("/availability/{sku}", availability),
    ]
    app = create_app(NAME, common, routes, readiness=readiness, log=log, on_shutdown=[close])
    return Built(app, common, readiness, log)
