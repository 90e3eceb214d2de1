"""Saga participants: the actions and compensations inventory, payments and orders offer the checkout
orchestrator (labshop.checkout), mounted by each of them when SAGA_PARTICIPANT=true.

inventory  POST /saga/reservations          {"sku", "quantity"} -> 201 {"reservation_id", "remaining", ...};
                                            409 not enough stock, 404 unknown product
           POST /saga/reservations/release  the reservation made under the key goes back to the stock
payments   POST /saga/charges               {"order_id", "total_cents"} -> 201 {"payment_id", "charged_cents"};
                                            402 declined; 503 while PAYMENTS_FAULT=fail
           POST /saga/charges/refund        the charge made under the key is refunded
orders     POST /saga/orders                {"sku", "quantity"} -> 201 {"order_id", "total_cents",
                                            "order_status": "pending"}; 404 unknown product
           POST /saga/orders/confirm        {"order_id", ...} -> 200 {"order_status": "confirmed"};
                                            409 when the order is not pending
           POST /saga/orders/cancel         the order created or confirmed under the key is cancelled
every one  GET  /saga/operations[?saga=ID]  what each key came to, with how many requests carried it and how
                                            many times its work was done (never more than once)

Every POST carries an `Idempotency-Key` (the orchestrator sends `<saga id>:<step>`); its body is the saga's
context, of which each route reads what it needs. Per key, the action is done at most once and a repeat gets
the first answer again (with `Idempotent-Replayed: true`); the compensation, sent with the same key to its
own route, undoes that action at most once. A compensation for a key whose action never arrived does
nothing and blocks that key: the action, if it turns up late, is refused, so nothing is left half done.

Environment: SAGA_PARTICIPANT (true mounts these routes; unset or false leaves the service as it was),
SAGA_REFUSE (test switch: actions to refuse with 409, any of create, reserve, charge, confirm), and for
payments the fault switch of POST /payments (labshop.faults): PAYMENTS_FAULT=fail makes a charge answer 503,
slow makes it wait PAYMENTS_FAULT_DELAY_SECONDS first.
State lives in memory, like the rest of each service: one replica per participant, so that an action and its
compensation meet the same state.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from labshop.config import ConfigError, Env
from labshop.data import Catalog, Declined, OutOfStock, Payments, Stock, UnknownProduct
from labshop.faults import Fault
from labshop.web import json_body, json_error

log = logging.getLogger("labshop.saga.participant")

ACTIONS = ("create", "reserve", "charge", "confirm")
MAX_KEY_LENGTH = 200

# What an action or a compensation answers: (HTTP status, JSON body).
Reply = tuple[int, dict]


@dataclass
class Operation:
    """What happened under one idempotency key."""

    key: str
    action: str = ""              # which action ran under it ("" while only a compensation has been seen)
    state: str = "blocked"        # new, done, refused, compensated, or blocked: compensated before its action
    reply: Reply | None = None    # the action's first answer, given again to every repeat
    undo_reply: Reply | None = None
    detail: Any = None            # what the compensation needs to undo the action (a reservation, an order)
    action_requests: int = 0
    action_runs: int = 0
    compensation_requests: int = 0
    compensation_runs: int = 0

    def to_json(self) -> dict:
        return {"key": self.key, "action": self.action, "state": self.state,
                "action_requests": self.action_requests, "action_runs": self.action_runs,
                "compensation_requests": self.compensation_requests,
                "compensation_runs": self.compensation_runs}


class Ledger:
    """Each key's operation, so that actions and compensations are done once however often they arrive.

    The look-up and the work happen without an `await` in between: on the event loop nothing else runs
    meanwhile, so two copies of one request cannot both do the work.
    """

    def __init__(self, service: str) -> None:
        self.service = service
        self.operations: dict[str, Operation] = {}

    def act(self, key: str, action: str, work: Callable[[], tuple[Reply, Any]]) -> JSONResponse:
        op = self.operations.get(key)
        if op is None:
            op = self.operations[key] = Operation(key, action=action, state="new")
        op.action_requests += 1
        if op.action and op.action != action:
            return json_error(409, f"{key} was used for a {op.action}, not a {action}", key=key)
        if op.state == "blocked":
            return _reply((409, {"error": f"{key} was compensated before its action arrived: it will not run",
                                 "key": key}), replayed=False)
        if op.reply is not None:
            return _reply(op.reply, replayed=True)
        (status, body), detail = work()
        op.action, op.reply, op.detail = action, (status, body), detail
        if 200 <= status < 300:
            op.state, op.action_runs = "done", op.action_runs + 1
            log.info("saga action done", extra={"key": key, "action": action})
        else:
            op.state = "refused"
            log.info("saga action refused", extra={"key": key, "action": action, "status": status})
        return _reply(op.reply, replayed=False)

    def compensate(self, key: str, undo: Mapping[str, Callable[[Operation], dict]], effect: str) -> JSONResponse:
        """Undo what the action under `key` did. `undo` maps the action's name to the function undoing it;
        `effect` names what the answer says happened (released, refunded, cancelled): true or false."""
        op = self.operations.get(key)
        if op is None:
            op = self.operations[key] = Operation(key)
        op.compensation_requests += 1
        if op.undo_reply is not None:
            return _reply(op.undo_reply, replayed=True)
        if op.state in ("blocked", "new"):
            op.state = "blocked"
            body = {effect: False, "reason": "nothing was done under this key; its action is now refused"}
        elif op.state == "refused":
            body = {effect: False, "reason": "the action was refused: there is nothing to undo"}
        elif op.action not in undo:
            # A key used for an action this route does not undo (a release sent with a payment's key, say).
            return json_error(409, f"{key} was a {op.action}, which this route does not undo", key=key)
        else:
            body = {effect: True, **undo[op.action](op)}
            op.state, op.compensation_runs = "compensated", op.compensation_runs + 1
            log.info("saga action compensated", extra={"key": key, "action": op.action})
        op.undo_reply = (200, body)
        return _reply(op.undo_reply, replayed=False)

    def listing(self, saga: str = "") -> dict:
        ops = [op.to_json() for op in self.operations.values() if not saga or op.key.startswith(f"{saga}:")]
        return {"service": self.service, "operations": ops}


def _reply(reply: Reply, *, replayed: bool) -> JSONResponse:
    status, body = reply
    headers = {"Idempotent-Replayed": "true"} if replayed else {}
    return JSONResponse(body, status_code=status, headers=headers)


def _key(request: Request) -> str:
    key = request.headers.get("idempotency-key", "").strip()
    if not key:
        raise HTTPException(422, "an Idempotency-Key header is required: it is what makes a retry safe")
    if len(key) > MAX_KEY_LENGTH:
        raise HTTPException(422, f"the Idempotency-Key is longer than {MAX_KEY_LENGTH} characters")
    return key


def _order_id(body: dict) -> str:
    value = body.get("order_id")
    if not isinstance(value, str) or not value:
        raise HTTPException(422, "order_id must be text")
    return value


@dataclass(frozen=True)
class Switches:
    enabled: bool
    refuse: frozenset[str]

    @classmethod
    def from_env(cls, env: Env) -> Switches:
        raw = env.text("SAGA_PARTICIPANT", "false").lower()
        if raw not in ("true", "false"):
            raise ConfigError(f"SAGA_PARTICIPANT must be true or false, got {raw!r}")
        refuse = env.words("SAGA_REFUSE")
        unknown = sorted(refuse - set(ACTIONS))
        if unknown:
            raise ConfigError(f"SAGA_REFUSE names unknown actions {', '.join(unknown)} (known: {', '.join(ACTIONS)})")
        return cls(raw == "true", refuse)

    def refused(self, action: str) -> Reply | None:
        if action in self.refuse:
            return 409, {"error": f"{action} refused (SAGA_REFUSE names it)"}
        return None


def _operations_route(ledger: Ledger) -> Route:
    async def operations(request: Request) -> JSONResponse:
        return JSONResponse(ledger.listing(request.query_params.get("saga", "")))

    return Route("/saga/operations", operations)


def inventory_routes(env: Env, stock: Stock) -> list[BaseRoute]:
    """Reserve and release, on the same stock inventory's other routes serve (nothing unless SAGA_PARTICIPANT)."""
    switches = Switches.from_env(env)
    if not switches.enabled:
        return []
    ledger = Ledger("inventory")

    async def reserve(request: Request) -> JSONResponse:
        key = _key(request)
        body = await json_body(request, sku=str, quantity=int)

        def work() -> tuple[Reply, Any]:
            refused = switches.refused("reserve")
            if refused:
                return refused, None
            try:
                r = stock.reserve(body["sku"], body["quantity"])
            except UnknownProduct:
                return (404, {"error": f"no product {body['sku']!r}"}), None
            except OutOfStock as e:
                return (409, {"error": f"not enough {e.sku}", "wanted": e.wanted, "available": e.available}), None
            return (201, {"reservation_id": r.id, "sku": r.sku, "quantity": r.quantity,
                          "remaining": r.remaining}), r

        return ledger.act(key, "reserve", work)

    def release(op: Operation) -> dict:
        r = op.detail
        # The same lock Stock.reserve takes: a release never interleaves with a reservation's check and update.
        with stock._lock:
            stock.units[r.sku] += r.quantity
            available = stock.units[r.sku]
        return {"reservation_id": r.id, "sku": r.sku, "quantity": r.quantity,
                "available": available}

    async def release_route(request: Request) -> JSONResponse:
        return ledger.compensate(_key(request), {"reserve": release}, "released")

    return [Route("/saga/reservations", reserve, methods=["POST"]),
            Route("/saga/reservations/release", release_route, methods=["POST"]),
            _operations_route(ledger)]


def payments_routes(env: Env, payments: Payments) -> list[BaseRoute]:
    """Charge and refund through payments' own ledger (nothing unless SAGA_PARTICIPANT)."""
    switches = Switches.from_env(env)
    if not switches.enabled:
        return []
    # The switch POST /payments obeys: a charge fails (503, nothing done) or is slow the same way.
    fault = Fault.from_env(env, "PAYMENTS")
    ledger = Ledger("payments")

    async def charge(request: Request) -> JSONResponse:
        key = _key(request)
        body = await json_body(request, total_cents=int)
        order_id = _order_id(body)
        # Read first, then slow: the request has arrived, and is done late even if its caller stopped waiting.
        if (answer := await fault.inject()) is not None:
            return answer

        def work() -> tuple[Reply, Any]:
            refused = switches.refused("charge")
            if refused:
                return refused, None
            try:
                payment = payments.authorize(order_id, body["total_cents"])
            except Declined as e:
                return (402, {"error": f"declined: {e}"}), None
            return (201, {"payment_id": payment["id"], "charged_cents": payment["amount_cents"]}), payment

        return ledger.act(key, "charge", work)

    def refund(op: Operation) -> dict:
        payment = op.detail
        # payments' record of this order says so too: a later POST /payments for it sees the refund.
        payment["status"] = "refunded"
        return {"payment_id": payment["id"], "refunded_cents": payment["amount_cents"]}

    async def refund_route(request: Request) -> JSONResponse:
        return ledger.compensate(_key(request), {"charge": refund}, "refunded")

    return [Route("/saga/charges", charge, methods=["POST"]),
            Route("/saga/charges/refund", refund_route, methods=["POST"]),
            _operations_route(ledger)]


def orders_routes(env: Env, orders: dict[str, dict]) -> list[BaseRoute]:
    """Create (pending), confirm and cancel orders kept in `orders`, the dict GET /orders/{id} reads (nothing
    unless SAGA_PARTICIPANT)."""
    switches = Switches.from_env(env)
    if not switches.enabled:
        return []
    catalog = Catalog()
    ledger = Ledger("orders")

    async def create(request: Request) -> JSONResponse:
        key = _key(request)
        body = await json_body(request, sku=str, quantity=int)

        def work() -> tuple[Reply, Any]:
            refused = switches.refused("create")
            if refused:
                return refused, None
            product = catalog.get(body["sku"])
            if product is None:
                return (404, {"error": f"no product {body['sku']!r}"}), None
            order_id = uuid.uuid4().hex[:12]
            total = product["price_cents"] * body["quantity"]
            orders[order_id] = {"id": order_id, "sku": body["sku"], "quantity": body["quantity"],
                                "total_cents": total, "reservation": None, "payment": None, "status": "pending",
                                "saga": body.get("saga_id")}
            return (201, {"order_id": order_id, "total_cents": total, "order_status": "pending"}), order_id

        return ledger.act(key, "create", work)

    async def confirm(request: Request) -> JSONResponse:
        key = _key(request)
        body = await json_body(request)
        order_id = _order_id(body)

        def work() -> tuple[Reply, Any]:
            refused = switches.refused("confirm")
            if refused:
                return refused, None
            order = orders.get(order_id)
            if order is None:
                return (404, {"error": f"no order {order_id!r}"}), None
            if order["status"] != "pending":
                return (409, {"error": f"order {order_id} is {order['status']}, not pending"}), None
            order.update(status="confirmed", reservation=body.get("reservation_id"),
                         payment=body.get("payment_id"))
            return (200, {"order_id": order_id, "order_status": "confirmed"}), order_id

        return ledger.act(key, "confirm", work)

    def cancel(op: Operation) -> dict:
        order = orders[op.detail]
        order["status"] = "cancelled"
        return {"order_id": order["id"], "order_status": "cancelled"}

    async def cancel_route(request: Request) -> JSONResponse:
        return ledger.compensate(_key(request), {"create": cancel, "confirm": cancel}, "cancelled")

    return [Route("/saga/orders", create, methods=["POST"]),
            Route("/saga/orders/confirm", confirm, methods=["POST"]),
            Route("/saga/orders/cancel", cancel_route, methods=["POST"]),
            _operations_route(ledger)]

