"""catalog: the products on sale.

GET /products         {"products": [...], "served_by": "catalog", "pod": ...}
GET /products/{sku}   one product, or 404

Environment: CATALOG_CURRENCY (default EUR), plus what every service reads (see labshop.config.Common).
"""

from __future__ import annotations

import socket

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from labshop import logs
from labshop.config import Common, Env
from labshop.data import Catalog
from labshop.web import Built, Readiness, create_app, json_error

NAME = "catalog"


def create(env: Env) -> Built:
    """The catalog service, configured from `env`."""
    common = Common.from_env(env)
    log = logs.setup(NAME, common.log_level)
    catalog = Catalog(currency=env.text("CATALOG_CURRENCY", "EUR"))
    pod = socket.gethostname()

    async def products(request: Request) -> JSONResponse:
        return JSONResponse({"products": catalog.all(), "served_by": NAME, "pod": pod})

    async def product(request: Request) -> JSONResponse:
        sku = request.path_params["sku"]
        found = catalog.get(sku)
        if found is None:
            return json_error(404, f"no product {sku!r}", served_by=NAME)
        return JSONResponse({**found, "served_by": NAME, "pod": pod})

    readiness = Readiness(common.not_ready_file)
    routes = [Route("/products", products), Route("/products/{sku}", product)]
    return Built(create_app(NAME, common, routes, readiness=readiness, log=log), common, readiness, log)
