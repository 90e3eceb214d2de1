"""`python -m labshop SERVICE`: run one of the shop's services until SIGTERM."""

from __future__ import annotations

import importlib
import json
import sys

from labshop.config import ConfigError, Env

SERVICES = ("shop", "catalog", "orders", "inventory", "payments", "notifications", "checkout", "shop_api",
            "logship")


def _fail(message: str, code: int) -> int:
    # Logging is not set up yet when the configuration is refused: write the same JSON shape by hand.
    print(json.dumps({"level": "ERROR", "msg": message}), flush=True)
    return code


def main(argv: list[str]) -> int:
    """Run the service named in argv; the exit code (2 for bad usage or configuration)."""
    if len(argv) != 1 or argv[0] not in SERVICES:
        return _fail(f"usage: python -m labshop {{{'|'.join(SERVICES)}}}", 2)
    from labshop import telemetry
    from labshop.web import serve

    module = importlib.import_module(f"labshop.{argv[0]}")
    env = Env()
    try:
        telemetry.setup(argv[0], env)  # tracing (OTEL_*), before the service makes its HTTP clients
        built = module.create(env)
        telemetry.attach(argv[0], built, env)  # spans per request, LOG_FILE, METRICS_PORT
    except ConfigError as e:
        return _fail(str(e), 2)
    return serve(built.app, built.common, built.readiness, built.log)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
