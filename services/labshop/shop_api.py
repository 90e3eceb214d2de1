"""shop-api: the backend for the shop's web frontend (a BFF), behind the Gateway.

GET /api/products/{sku}   what a product page needs, in one answer: the product from catalog and its stock from
                          inventory, both asked at the same time, each within its own timeout.
    200 {"sku", "product": {sku, name, price_cents, currency}, "stock": {"available": N}, "degraded": [],
         "client", "served_by": "shop-api"}
    200 with "stock": null and "degraded": ["inventory"] when inventory cannot answer in time: the page shows
        the product without a stock level rather than failing (the answer is then marked `Cache-Control: no-store`)
    404 when catalog does not know the SKU; 503 {"degraded": ["catalog", ...]} when catalog cannot answer
        (without the product there is no page to show)
    401 without a valid `X-Api-Key` header, once API keys are configured

Which backend failed and why goes to the log, not to the caller: the answer names the missing part only, so
the internet learns nothing about the shop's insides.

API keys: API_KEYS_DIR names a directory holding one file per client (a Secret mounted as a volume: the file's
name is the client, its content the key; keys shorter than 16 characters are ignored). The directory is read
again whenever it changes, so a rotated Secret takes effect without a restart. Unset, every caller is let in
(and the start-up log says so).

Environment: API_KEYS_DIR, CATALOG_URL (default http://catalog), INVENTORY_URL (default http://inventory) with
their call policies CATALOG_/INVENTORY_TIMEOUT_SECONDS (default 1 here), _RETRIES (0), _BACKOFF_SECONDS
(labshop.calls), plus what every service reads.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import logging
import os
from pathlib import Path
from urllib.parse import quote

import httpx
from prometheus_client import Counter
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from labshop import logs
from labshop.calls import CallPolicy, Dependency, DependencyError, json_object
from labshop.config import Common, ConfigError, Env
from labshop.web import Built, Readiness, create_app, json_error

NAME = "shop-api"
HEADER = "X-Api-Key"
MIN_KEY_LENGTH = 16
# A page waits for the slower of its two backends: each gets a second unless configured otherwise.
DEFAULT_TIMEOUT_SECONDS = 1.0

DEGRADED = Counter("shop_api_degraded_responses_total",
                   "Answers given without one of their parts, by the part that was missing.", ["part"])
REJECTED = Counter("shop_api_rejected_requests_total",
                   "Requests refused at the edge for want of a valid API key, by reason.", ["reason"])


class ApiKeys:
    """The API keys in a directory (file name: client, content: key), read again whenever the directory changes.

    Only digests are kept, and a presented key is compared with every one of them in constant time, so neither
    the answer's timing nor its content says how close a guess was.
    """

    def __init__(self, directory: Path, log: logging.Logger) -> None:
        self.directory = directory
        self.log = log
        self._seen: tuple = ()
        self._digests: dict[str, bytes] = {}

    def _state(self) -> tuple:
        # A mounted Secret's files are symlinks into a timestamped folder that the kubelet swaps on update;
        # stat() follows them, so a rotation changes the inode and mtime seen here. `..data` and the
        # timestamped folder itself start with a dot and are skipped.
        entries = []
        try:
            with os.scandir(self.directory) as found:
                for entry in found:
                    if entry.name.startswith("."):
                        continue
                    try:
                        st = entry.stat()
                    except OSError:
                        continue
                    if entry.is_file():
                        entries.append((entry.name, st.st_ino, st.st_mtime_ns, st.st_size))
        except OSError:
            return ("missing",)
        return tuple(sorted(entries))

    def digests(self) -> dict[str, bytes]:
        """client -> sha256 of its key, reloaded when the directory changed since the last call."""
        state = self._state()
        if state == self._seen:
            return self._digests
        digests: dict[str, bytes] = {}
        for name, *_ in (state if state != ("missing",) else ()):
            try:
                key = (self.directory / name).read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as e:
                self.log.error("cannot read an API key", extra={"client": name, "reason": str(e)})
                continue
            if len(key) < MIN_KEY_LENGTH:
                self.log.error("API key too short: ignored",
                               extra={"client": name, "minimum_length": MIN_KEY_LENGTH})
                continue
            digests[name] = hashlib.sha256(key.encode()).digest()
        if not digests:
            # Fail closed: with no usable key nobody gets in, rather than everybody.
            self.log.error("no usable API key: every request is refused", extra={"dir": str(self.directory)})
        else:
            self.log.info("API keys loaded", extra={"clients": sorted(digests)})
        self._seen, self._digests = state, digests
        return digests

    def client(self, presented: str) -> str | None:
        """The client whose key was presented, or None."""
        digest = hashlib.sha256(presented.encode()).digest()
        found = None
        for name, known in self.digests().items():  # every key is compared: no early exit to time
            if hmac.compare_digest(digest, known) and found is None:
                found = name
        return found


def _policy(env: Env, prefix: str) -> CallPolicy:
    policy = CallPolicy.from_env(env, prefix)
    if not env.raw(f"{prefix}_TIMEOUT_SECONDS"):
        policy = dataclasses.replace(policy, timeout_seconds=DEFAULT_TIMEOUT_SECONDS)
    return policy


def create(env: Env) -> Built:
    """The shop-api service, configured from `env`."""
    common = Common.from_env(env)
    log = logs.setup(NAME, common.log_level)
    keys_dir = env.text("API_KEYS_DIR")
    if keys_dir and not Path(keys_dir).is_dir():
        raise ConfigError(f"API_KEYS_DIR {keys_dir} is not a directory (is the Secret mounted there?)")
    keys = ApiKeys(Path(keys_dir), log) if keys_dir else None
    catalog = Dependency("catalog", env.url("CATALOG_URL", "http://catalog"), _policy(env, "CATALOG"))
    inventory = Dependency("inventory", env.url("INVENTORY_URL", "http://inventory"), _policy(env, "INVENTORY"))

    def authenticate(request: Request) -> str | JSONResponse | None:
        """The calling client's name (None when keys are off), or the 401 to answer."""
        if keys is None:
            return None
        presented = request.headers.get(HEADER, "").strip()
        client = keys.client(presented) if presented else None
        if client is not None:
            return client
        reason = "missing" if not presented else "wrong"
        REJECTED.labels(reason).inc()
        response = json_error(401, f"an API key is required ({HEADER} header)" if reason == "missing"
                              else "the API key is not valid")
        response.headers["WWW-Authenticate"] = f'ApiKey header="{HEADER}"'
        return response

    async def ask(dependency: Dependency, path: str) -> httpx.Response | str:
        try:
            return await dependency.call("GET", path)
        except DependencyError as e:
            return str(e)

    async def product(request: Request) -> JSONResponse:
        client = authenticate(request)
        if isinstance(client, JSONResponse):
            return client
        sku = request.path_params["sku"]
        path = quote(sku, safe="")
        # Both at once: the page waits for the slower backend, not for the two one after the other.
        found, stock = await asyncio.gather(ask(catalog, f"/products/{path}"), ask(inventory, f"/stock/{path}"))

        degraded = []
        available = None
        if isinstance(stock, httpx.Response) and stock.status_code == 200 and isinstance(
                json_object(stock).get("available"), int):
            available = {"available": json_object(stock)["available"]}
        else:
            degraded.append("inventory")
            log.warning("answering without inventory", extra={
                "sku": sku, "reason": stock if isinstance(stock, str) else f"answered {stock.status_code}"})

        if isinstance(found, httpx.Response) and found.status_code == 404:
            return json_error(404, f"no product {sku!r}", served_by=NAME)
        if not (isinstance(found, httpx.Response) and found.status_code == 200):
            log.error("catalog cannot answer", extra={
                "sku": sku, "reason": found if isinstance(found, str) else f"answered {found.status_code}"})
            for part in ("catalog", *degraded):
                DEGRADED.labels(part).inc()
            return json_error(503, "the product cannot be shown right now", degraded=["catalog", *degraded],
                              served_by=NAME)
        body = json_object(found)
        shown = {k: body.get(k) for k in ("sku", "name", "price_cents", "currency")}
        for part in degraded:
            DEGRADED.labels(part).inc()
        answer = JSONResponse({"sku": sku, "product": shown, "stock": available, "degraded": degraded,
                               "client": client, "served_by": NAME})
        if degraded:
            # A partial answer is right for now, wrong to keep: no cache between here and the browser may hold it.
            answer.headers["Cache-Control"] = "no-store"
        return answer

    async def announce() -> None:
        if keys is None:
            log.warning("API_KEYS_DIR is not set: every caller is let in without an API key")
        else:
            keys.digests()

    async def close() -> None:
        await catalog.close()
        await inventory.close()

    readiness = Readiness(common.not_ready_file)
    routes = [Route("/api/products/{sku}", product)]
    app = create_app(NAME, common, routes, readiness=readiness, log=log, on_startup=[announce], on_shutdown=[close])
    return Built(app, common, readiness, log)
