"""inventory: units on hand per product, over REST and (with GRPC_PORT) gRPC.

GET  /stock/{sku}      {"sku", "available", "served_by": "inventory", "pod"}; 404 for an unknown SKU
POST /reservations     {"sku", "quantity"} with an optional Idempotency-Key header -> 201 reservation,
                       409 when not enough units are left; a repeated key returns the first reservation
GET  /peers            the addresses PEERS_DNS resolves to (a headless Service's name lists every pod)
gRPC labshop.inventory.v1.Inventory (GetStock, Reserve) and the standard grpc.health.v1.Health service,
                       SERVING exactly when /readyz says ready

With AUTH_AUDIENCE set, /stock, /reservations and the Inventory RPCs require a caller's ServiceAccount token
for that audience (`Authorization: Bearer ...`), validated with the TokenReview API (see labshop.tokens);
AUTH_ALLOWED_CALLERS narrows who may call (e.g. system:serviceaccount:shop:orders).

Environment: GRPC_PORT (default 0: no gRPC), PEERS_DNS, AUTH_AUDIENCE, AUTH_ALLOWED_CALLERS,
TOKENREVIEW_API_SERVER / _CA_FILE / _TOKEN_FILE (default: the pod's own), plus what every service reads.
With EVENTS_REDIS_URL, inventory also consumes OrderPlaced events and takes each order's units from stock once
(consumer group EVENTS_GROUP, default inventory; labshop.events).
INVENTORY_DATABASE_URL (or PGHOST) keeps the stock in PostgreSQL, changed by orders' events applied once each
(labshop.inbox).
"""

from __future__ import annotations

import asyncio
import socket

import grpc
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from labshop import inventory_pb2, inventory_pb2_grpc, logs, participants
from labshop.config import Common, Env
from labshop.data import OutOfStock, Stock, UnknownProduct
from labshop.events import Consuming, stock_handlers
from labshop.tokens import Caller, Forbidden, ReviewUnavailable, TokenReviewer, Unauthenticated
from labshop.web import Built, Readiness, create_app, json_body, json_error

NAME = "inventory"
GRPC_SERVICE = "labshop.inventory.v1.Inventory"


class InventoryRPC(inventory_pb2_grpc.InventoryServicer):
    """The gRPC face of the same stock the REST routes serve."""

    def __init__(self, stock: Stock, reviewer: TokenReviewer | None) -> None:
        self.stock = stock
        self.reviewer = reviewer

    async def _authenticate(self, context: aio.ServicerContext) -> None:
        if self.reviewer is None:
            return
        metadata = dict(context.invocation_metadata() or ())
        try:
            await self.reviewer.authenticate(metadata.get("authorization"))
        except Unauthenticated as e:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(e))
        except Forbidden as e:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(e))
        except ReviewUnavailable as e:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(e))

    async def GetStock(self, request: inventory_pb2.GetStockRequest,  # noqa: N802 (named by the proto)
                       context: aio.ServicerContext) -> inventory_pb2.Stock:
        await self._authenticate(context)
        try:
            return inventory_pb2.Stock(sku=request.sku, available=self.stock.available(request.sku))
        except UnknownProduct:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no product {request.sku!r}")
            raise  # abort raises; this line only tells type checkers so

    async def Reserve(self, request: inventory_pb2.ReserveRequest,  # noqa: N802 (named by the proto)
                      context: aio.ServicerContext) -> inventory_pb2.Reservation:
        await self._authenticate(context)
        if request.quantity <= 0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "quantity must be more than 0")
        try:
            r = self.stock.reserve(request.sku, request.quantity, request.idempotency_key)
        except UnknownProduct:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no product {request.sku!r}")
            raise
        except OutOfStock as e:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(e))
            raise
        return inventory_pb2.Reservation(id=r.id, sku=r.sku, quantity=r.quantity, remaining=r.remaining)


async def resolve(name: str, port: int = 0) -> list[str]:
    """Every address `name` resolves to, sorted (IPv4 and IPv6 alike)."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(name, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


def create(env: Env) -> Built:
    """The inventory service, configured from `env`."""
    if env.raw("INVENTORY_DATABASE_URL") or env.raw("PGHOST"):  # its own PostgreSQL database: labshop.inbox
        from labshop import inbox  # imported here: only services with a database need psycopg
        return inbox.create(env)
    common = Common.from_env(env)
    log = logs.setup(NAME, common.log_level)
    grpc_port = env.port("GRPC_PORT", 0)
    peers_dns = env.text("PEERS_DNS")
    reviewer = TokenReviewer.from_env(env)
    stock = Stock()
    pod = socket.gethostname()
    readiness = Readiness(common.not_ready_file)
    consuming = Consuming.from_env(env, NAME, stock_handlers(stock), readiness, log)  # none without EVENTS_REDIS_URL

    async def caller(request: Request) -> Caller | JSONResponse | None:
        if reviewer is None:
            return None
        try:
            return await reviewer.authenticate(request.headers.get("authorization"))
        except Unauthenticated as e:
            response = json_error(401, str(e))
            response.headers["WWW-Authenticate"] = f'Bearer realm="{reviewer.audience}"'
            return response
        except Forbidden as e:
            return json_error(403, str(e))
        except ReviewUnavailable as e:
            log.error("token review failed", extra={"reason": str(e)})
            return json_error(503, "cannot validate the caller's token right now")

    async def get_stock(request: Request) -> JSONResponse:
        who = await caller(request)
        if isinstance(who, JSONResponse):
            return who
        sku = request.path_params["sku"]
        try:
            available = stock.available(sku)
        except UnknownProduct:
            return json_error(404, f"no product {sku!r}")
        return JSONResponse({"sku": sku, "available": available, "served_by": NAME, "pod": pod,
                             "caller": who.username if who else None})

    async def reserve(request: Request) -> JSONResponse:
        who = await caller(request)
        if isinstance(who, JSONResponse):
            return who
        body = await json_body(request, sku=str, quantity=int)
        try:
            r = stock.reserve(body["sku"], body["quantity"], request.headers.get("idempotency-key", ""))
        except UnknownProduct:
            return json_error(404, f"no product {body['sku']!r}")
        except OutOfStock as e:
            return json_error(409, f"not enough {e.sku}", wanted=e.wanted, available=e.available)
        return JSONResponse({"id": r.id, "sku": r.sku, "quantity": r.quantity, "remaining": r.remaining,
                             "served_by": NAME, "pod": pod}, status_code=201)

    async def peers(request: Request) -> JSONResponse:
        if not peers_dns:
            return json_error(404, "PEERS_DNS is not set: this instance does not look for peers")
        try:
            addresses = await resolve(peers_dns)
        except socket.gaierror as e:
            return json_error(503, f"{peers_dns} does not resolve: {e.strerror}", name=peers_dns, peers=[])
        return JSONResponse({"name": peers_dns, "peers": addresses, "pod": pod})

    server: list[aio.Server] = []
    health_servicer = health.aio.HealthServicer()
    watching: list[asyncio.Task] = []

    async def mirror_readiness() -> None:
        # The gRPC health service reports what /readyz reports, so the kubelet's grpc probe and an HTTP probe
        # take the pod out of rotation for the same reasons (warm-up, not-ready file, draining).
        last = None
        while True:
            ready, _ = readiness.state()
            if ready != last:
                status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
                for service in ("", GRPC_SERVICE):
                    await health_servicer.set(service, status)
                last = ready
            await asyncio.sleep(0.2)

    async def start_grpc() -> None:
        if not grpc_port:
            return
        s = aio.server()
        inventory_pb2_grpc.add_InventoryServicer_to_server(InventoryRPC(stock, reviewer), s)
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, s)
        address = f"{common.host}:{grpc_port}"
        if s.add_insecure_port(address) == 0:
            raise OSError(f"cannot listen on {address} for gRPC")
        await s.start()
        server.append(s)
        watching.append(asyncio.create_task(mirror_readiness()))
        log.info("grpc listening", extra={"host": common.host, "port": grpc_port})

    async def stop_grpc() -> None:
        for task in watching:
            task.cancel()
        if server:
            await health_servicer.enter_graceful_shutdown()
            await server[0].stop(grace=common.shutdown_timeout_seconds)

    async def close_reviewer() -> None:
        if reviewer is not None:
            await reviewer.close()

    routes = [
        Route("/stock/{sku}", get_stock),
        Route("/reservations", reserve, methods=["POST"]),
        Route("/peers", peers),
    ]
    routes += participants.inventory_routes(env, stock)  # reserve/release for sagas, with SAGA_PARTICIPANT=true
    app = create_app(NAME, common, routes, readiness=readiness, log=log,
                     on_startup=[start_grpc, *consuming.on_startup],
                     on_shutdown=[*consuming.on_shutdown, stop_grpc, close_reviewer])
    return Built(app, common, readiness, log)
