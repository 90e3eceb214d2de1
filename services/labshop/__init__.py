"""labshop: the sample shop the labs deploy, one small HTTP service per module, all in one image.

`python -m labshop SERVICE` runs one of them: shop (the monolith the first lab starts from), catalog, orders,
inventory, payments, notifications, checkout (a saga orchestrator), shop_api (a backend-for-frontend) or logship
(a log-shipping sidecar). Every service answers `/healthz` (liveness), `/readyz` (readiness) and `/metrics`
(Prometheus), is configured by environment variables, logs one JSON object per line and shuts down gracefully
on SIGTERM.
"""

__version__ = "1.0"
