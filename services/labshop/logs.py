"""Structured logs: one JSON object per line on stdout, for the container runtime to collect."""

from __future__ import annotations

import logging
import sys

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter


def setup(service: str, level: str = "info") -> logging.Logger:
    """Send every logger (the server's included) through one JSON formatter; the service's logger."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter(
        "{levelname}{name}{message}",
        style="{",
        timestamp="time",  # ISO 8601 in UTC, to the microsecond
        rename_fields={"levelname": "level", "name": "logger", "message": "msg"},
        static_fields={"service": service},
        # uvicorn adds a copy of some messages with terminal colour codes: noise in a log collector.
        reserved_attrs=[*RESERVED_ATTRS, "color_message"],
    ))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        server_logger = logging.getLogger(name)
        server_logger.handlers[:] = []
        server_logger.propagate = True
    # Each request is logged once, by the service's own middleware, with the fields people filter on.
    logging.getLogger("uvicorn.access").disabled = True
    logging.getLogger("httpx").setLevel(logging.WARNING)
    return logging.getLogger(f"labshop.{service}")
