"""payments: authorises an order's amount.

POST /payments   {"order_id": "...", "amount_cents": 1300} -> 201 {"id", "status": "authorized", ...},
                 402 when the amount is over PAYMENTS_LIMIT_CENTS. An order id seen before gets the first answer.

Environment: PAYMENTS_LIMIT_CENTS (default 100000), plus what every service reads.
The fault switch (labshop.faults): PAYMENTS_FAULT=none|fail|slow (fail: every POST /payments answers 503;
slow: it waits PAYMENTS_FAULT_DELAY_SECONDS, default 5, then answers normally).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from labshop import logs, participants
from labshop.config import Common, Env
from labshop.data import Declined, Payments
from labshop.faults import Fault
from labshop.web import Built, Readiness, create_app, json_body, json_error

NAME = "payments"


def create(env: Env) -> Built:
    """The payments service, configured from `env`."""
    common = Common.from_env(env)
    log = logs.setup(NAME, common.log_level)
    payments = Payments(env.integer("PAYMENTS_LIMIT_CENTS", 100_000, minimum=1))
    fault = Fault.from_env(env, "PAYMENTS")
    if fault.on:
        log.warning("fault switched on", extra={"fault": fault.mode, "delay_seconds": fault.delay_seconds})

    async def pay(request: Request) -> JSONResponse:
        if (answer := await fault.inject()) is not None:
            return answer
        body = await json_body(request, order_id=str, amount_cents=int)
        try:
            payment = payments.authorize(body["order_id"], body["amount_cents"])
        except Declined as e:
            return json_error(402, f"declined: {e}")
        return JSONResponse(payment, status_code=201)

    readiness = Readiness(common.not_ready_file)
    routes = [Route("/payments", pay, methods=["POST"])]
    routes += participants.payments_routes(env, payments)  # charge/refund for sagas, with SAGA_PARTICIPANT=true
    return Built(create_app(NAME, common, routes, readiness=readiness, log=log), common, readiness, log)
