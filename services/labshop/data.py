"""The shop's business: a small product list, stock with idempotent reservations, and payment authorisation.

Kept in memory: each service owns its data and nothing else reads it (a database per service is a later lab's
subject). The same classes serve the monolith and the extracted services, so a split changes where code runs,
not what it does.
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Product:
    sku: str
    name: str
    price_cents: int

    def to_json(self, currency: str) -> dict:
        return {**asdict(self), "currency": currency}


PRODUCTS = (
    Product("tea", "Green tea, 100 g", 650),
    Product("coffee", "Coffee beans, 250 g", 1190),
    Product("mug", "Enamel mug", 1500),
    Product("kettle", "Stovetop kettle", 3900),
)

INITIAL_STOCK = {"tea": 40, "coffee": 25, "mug": 10, "kettle": 3}


class Catalog:
    """The products on sale, by SKU."""

    def __init__(self, products: tuple[Product, ...] = PRODUCTS, currency: str = "EUR") -> None:
        self.products = {p.sku: p for p in products}
        self.currency = currency

    def all(self) -> list[dict]:
        return [p.to_json(self.currency) for p in self.products.values()]

    def get(self, sku: str) -> dict | None:
        product = self.products.get(sku)
        return product.to_json(self.currency) if product else None


class OutOfStock(Exception):
    def __init__(self, sku: str, wanted: int, available: int) -> None:
        super().__init__(f"{sku}: {wanted} wanted, {available} available")
        self.sku, self.wanted, self.available = sku, wanted, available


class UnknownProduct(KeyError):
    pass


@dataclass(frozen=True)
class Reservation:
    id: str
    sku: str
    quantity: int
    remaining: int


class Stock:
    """Units on hand per SKU. A reservation with a key already seen returns the first one: safe to retry."""

    def __init__(self, initial: dict[str, int] | None = None) -> None:
        self.units = dict(INITIAL_STOCK if initial is None else initial)
        self._by_key: dict[str, Reservation] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def available(self, sku: str) -> int:
        if sku not in self.units:
            raise UnknownProduct(sku)
        return self.units[sku]

    def reserve(self, sku: str, quantity: int, key: str = "") -> Reservation:
        with self._lock:
            if key and key in self._by_key:
                return self._by_key[key]
            available = self.available(sku)
            if quantity > available:
                raise OutOfStock(sku, quantity, available)
            self.units[sku] = available - quantity
            reservation = Reservation(f"r-{next(self._ids)}", sku, quantity, self.units[sku])
            if key:
                self._by_key[key] = reservation
            return reservation


class Declined(Exception):
    pass


class Payments:
    """Authorises amounts up to a limit; an order id seen before gets its first answer again."""

    def __init__(self, limit_cents: int = 100_000) -> None:
        self.limit_cents = limit_cents
        self._by_order: dict[str, dict] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def authorize(self, order_id: str, amount_cents: int) -> dict:
        with self._lock:
            if order_id in self._by_order:
                return self._by_order[order_id]
            if amount_cents > self.limit_cents:
                raise Declined(f"{amount_cents} cents is over the limit of {self.limit_cents}")
            payment = {"id": f"p-{next(self._ids)}", "order_id": order_id, "amount_cents": amount_cents,
                       "status": "authorized"}
            self._by_order[order_id] = payment
            return payment
