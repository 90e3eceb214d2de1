"""What a service tells about itself beyond its own answers: traces, a log file for a shipper, and metrics on a
port of their own. Each part is switched on by the environment; with none of it set a service starts and
behaves as before and imports no OpenTelemetry (start-up stays fast).

Tracing (labshop.tracing) is configured by OpenTelemetry's standard variables only, as any OpenTelemetry SDK is:
it is on when OTEL_EXPORTER_OTLP_ENDPOINT (or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) names a collector, such as
http://jaeger:4318, or OTEL_TRACES_EXPORTER names an exporter (otlp, console; `none` switches it off, and so
does OTEL_SDK_DISABLED=true). OTEL_SERVICE_NAME names the service in every span (default: the labshop name),
OTEL_RESOURCE_ATTRIBUTES adds to it, OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG choose what is kept
(default parentbased_always_on), OTEL_PROPAGATORS how the context travels between services (default
tracecontext,baggage: the W3C `traceparent` header), OTEL_BSP_SCHEDULE_DELAY how often spans are sent (ms).

LOG_FILE=/var/log/labshop/orders.log writes every log line to that file too (the same JSON lines as stdout),
rotated at LOG_FILE_MAX_BYTES (default 5 MiB; one older file is kept), for a shipper in the same pod to read
(`python -m labshop logship`, which reads the same variable). With tracing on, every log line written while
a request is served carries its trace_id and span_id, so a log line leads to its trace and back.

METRICS_PORT=9100 serves the Prometheus metrics on a port of their own as well (they stay on /metrics of the
service's port too): scrapes never queue behind the service's requests, and a NetworkPolicy can admit the
monitoring system to that port alone.

A sidecar (logship) may be given its service's settings; it reads LOG_FILE and ignores the rest.
"""

from __future__ import annotations

import logging
import logging.handlers
from typing import TYPE_CHECKING

from labshop.config import ConfigError, Env

if TYPE_CHECKING:
    import httpx

    from labshop.web import Built

ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
# Services that run beside another one in its pod, sharing its environment settings: they read LOG_FILE rather
# than write it, and leave tracing and METRICS_PORT to that service (the same port twice in one pod collides).
SIDECARS = frozenset({"logship"})

_tracing = None  # labshop.tracing once set up: only then is OpenTelemetry imported


def tracing_wanted(env: Env) -> bool:
    """Whether the OTEL_* variables ask for traces (the rules every OpenTelemetry SDK follows)."""
    if env.raw("OTEL_SDK_DISABLED").lower() == "true":
        return False
    exporters = env.words("OTEL_TRACES_EXPORTER")
    if exporters:
        return exporters != {"none"}
    return any(env.raw(name) for name in ENDPOINT_VARIABLES)


def setup(service: str, env: Env) -> None:
    """Before the service is created: tracing, when asked for, so the HTTP clients it creates carry the trace."""
    global _tracing
    if service in SIDECARS or not tracing_wanted(env):
        return
    from labshop import tracing

    tracing.configure(service, env)
    _tracing = tracing


def attach(service: str, built: Built, env: Env) -> None:
    """After the service is created: a span per request, the log file, the metrics port."""
    if _tracing is not None:
        _tracing.instrument(built.app)
    root = logging.getLogger()
    if service not in SIDECARS and env.raw("LOG_FILE"):
        root.addHandler(_log_file(env, root))
    if _tracing is not None:
        for handler in root.handlers:
            handler.addFilter(_tracing.TraceIds())
    port = 0 if service in SIDECARS else env.port("METRICS_PORT", 0)
    if port:
        _serve_metrics(built.common.host, port, built.common.port)


def traced(transport: httpx.AsyncBaseTransport | None, target: str) -> httpx.AsyncBaseTransport | None:
    """The transport an HTTP client to `target` should use: with tracing on, one that makes a client span per
    request and sends the trace context along; otherwise `transport` itself (None: httpx's default)."""
    if _tracing is None:
        return transport
    return _tracing.ClientSpans(transport, target)


def _log_file(env: Env, root: logging.Logger) -> logging.Handler:
    path = env.raw("LOG_FILE")
    max_bytes = env.integer("LOG_FILE_MAX_BYTES", 5 * 1024 * 1024, minimum=1024)
    try:
        # Rotated so the file cannot fill its volume (an emptyDir over its sizeLimit gets the pod evicted);
        # the shipper notices the new file and finishes the old one first.
        handler = logging.handlers.RotatingFileHandler(path, maxBytes=max_bytes, backupCount=1, encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"LOG_FILE: cannot write {path} ({e.strerror})") from None
    if root.handlers:
        handler.setFormatter(root.handlers[0].formatter)  # the JSON lines stdout gets (labshop.logs)
    return handler


def _serve_metrics(host: str, port: int, service_port: int) -> None:
    from prometheus_client import start_http_server

    if port == service_port:
        raise ConfigError(f"METRICS_PORT must differ from PORT ({port}): /metrics is served there already")
    try:
        # A thread of its own: a scrape never waits behind the service's requests, nor they behind it.
        start_http_server(port, addr=host)
    except OSError as e:
        raise ConfigError(f"METRICS_PORT: cannot listen on {host}:{port} ({e.strerror})") from None
