"""shop: the monolith. Catalog, stock, orders and payments in one process, the way the shop began.

GET  /products        the product list ("served_by": "shop", or "catalog" once CATALOG_URL is set)
GET  /products/{sku}  one product
GET  /stock/{sku}     units left
POST /orders          {"sku", "quantity"} -> 201 order (404 unknown, 409 out of stock, 402 declined)
GET  /orders/{id}     an order

With CATALOG_URL set (for example http://catalog, the catalog Service's DNS name) the product routes are
answered by the catalog service instead of the built-in list: the first step of taking the monolith apart.
Its call policy is CATALOG_TIMEOUT_SECONDS, CATALOG_RETRIES and CATALOG_BACKOFF_SECONDS.

Environment: CATALOG_URL, SHOP_CURRENCY (default EUR), PAYMENTS_LIMIT_CENTS, plus what every service reads.
"""

from __future__ import annotations

import uuid

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from labshop import logs
from labshop.calls import CallPolicy, Dependency, DependencyError
from labshop.config import Common, Env
from labshop.data import Catalog, Declined, OutOfStock, Payments, Stock, UnknownProduct
from labshop.web import Built, Readiness, create_app, json_body, json_error

NAME = "shop"


class ProductSource:
    """Where the monolith gets products: its own list, or the catalog service."""

    def __init__(self, catalog: Catalog, remote: Dependency | None) -> None:
        self.catalog = catalog
        self.remote = remote

    async def all(self) -> tuple[int, dict]:
        if self.remote is None:
            return 200, {"products": self.catalog.all(), "served_by": NAME}
        response = await self.remote.call("GET", "/products")
        return response.status_code, response.json()

    async def get(self, sku: str) -> tuple[int, dict]:
        if self.remote is None:
            found = self.catalog.get(sku)
            if found is None:
                return 404, {"error": f"no product {sku!r}", "served_by": NAME}
            return 200, {**found, "served_by": NAME}
        response = await self.remote.call("GET", f"/products/{sku}")
        return response.status_code, response.json()


def create(env: Env) -> Built:
    """The monolith, configured from `env`."""
    common = Common.from_env(env)
    log = logs.setup(NAME, common.log_level)
    catalog_url = env.url("CATALOG_URL")
    remote = Dependency("catalog", catalog_url, CallPolicy.from_env(env, "CATALOG")) if catalog_url else None
    products = ProductSource(Catalog(currency=env.text("SHOP_CURRENCY", "EUR")), remote)
    stock = Stock()
    payments = Payments(env.integer("PAYMENTS_LIMIT_CENTS", 100_000, minimum=1))
    orders: dict[str, dict] = {}

    async def list_products(request: Request) -> JSONResponse:
        try:
            status, body = await products.all()
        except (DependencyError, ValueError) as e:
            return json_error(503, f"the product list is unavailable: {e}")
        return JSONResponse(body, status_code=status)

    async def get_product(request: Request) -> JSONResponse:
        try:
            status, body = await products.get(request.path_params["sku"])
        except (DependencyError, ValueError) as e:
            return json_error(503, f"the product is unavailable: {e}")
        return JSONResponse(body, status_code=status)

    async def get_stock(request: Request) -> JSONResponse:
        sku = request.path_params["sku"]
        try:
            return JSONResponse({"sku": sku, "available": stock.available(sku), "served_by": NAME})
        except UnknownProduct:
            return json_error(404, f"no product {sku!r}")

    async def place(request: Request) -> JSONResponse:
        body = await json_body(request, sku=str, quantity=int)
        sku, quantity = body["sku"], body["quantity"]
        try:
            status, product = await products.get(sku)
        except (DependencyError, ValueError) as e:
            return json_error(503, f"the product is unavailable: {e}")
        if status != 200:
            return json_error(404 if status == 404 else 502, product.get("error", f"no product {sku!r}"))
        order_id = uuid.uuid4().hex[:12]
        total = int(product["price_cents"]) * quantity
        try:
            reservation = stock.reserve(sku, quantity, order_id)
            payment = payments.authorize(order_id, total)
        except OutOfStock as e:
            return json_error(409, f"not enough {sku} in stock", wanted=e.wanted, available=e.available)
        except Declined as e:
            return json_error(402, f"declined: {e}")
        order = {"id": order_id, "sku": sku, "quantity": quantity, "total_cents": total,
                 "reservation": reservation.id, "payment": payment["id"], "status": "confirmed"}
        orders[order_id] = order
        log.info("order placed", extra={"order": order_id, "sku": sku, "quantity": quantity})
        return JSONResponse(order, status_code=201)

    async def get_order(request: Request) -> JSONResponse:
        order = orders.get(request.path_params["id"])
        return JSONResponse(order) if order else json_error(404, "no such order")

    async def close() -> None:
        if remote is not None:
            await remote.close()

    readiness = Readiness(common.not_ready_file)
    routes = [
        Route("/products", list_products),
        Route("/products/{sku}", get_product),
        Route("/stock/{sku}", get_stock),
        Route("/orders", place, methods=["POST"]),
        Route("/orders/{id}", get_order),
    ]
    app = create_app(NAME, common, routes, readiness=readiness, log=log, on_shutdown=[close])
    return Built(app, common, readiness, log)
