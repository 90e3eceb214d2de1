"""Distributed tracing with OpenTelemetry: a server span per request a service answers, a client span per
request it makes to another service, and the W3C trace context (`traceparent`) sent with every such request,
so that one order placed through orders yields one trace holding the spans of orders, catalog, inventory and
payments, each a child of the span that caused it.

Imported only when labshop.telemetry finds tracing asked for; configured by the standard OTEL_* variables
(see labshop.telemetry), which the SDK reads itself: the exporter's endpoint, the sampler, the propagators,
the service name and resource attributes. Spans leave the process in batches over OTLP/HTTP (protobuf).
"""

from __future__ import annotations

import logging
import os
import sys

import httpx
from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode
from starlette.applications import Starlette
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from labshop.config import ConfigError, Env
from labshop.web import PROBE_PATHS

SCOPE = "labshop"
PROTOCOL = "http/protobuf"  # the one OTLP exporter in the image: OTLP over HTTP (port 4318), not gRPC (4317)
# The samplers the SDK knows (OTEL_TRACES_SAMPLER); the ratio ones read OTEL_TRACES_SAMPLER_ARG.
SAMPLERS = ("always_on", "always_off", "traceidratio", "parentbased_always_on", "parentbased_always_off",
            "parentbased_traceidratio")
RATIO_SAMPLERS = ("traceidratio", "parentbased_traceidratio")

_tracer: trace.Tracer = trace.NoOpTracer()
_propagator = None  # the global text map propagator, from OTEL_PROPAGATORS (loaded by configure)


def configure(service: str, env: Env) -> TracerProvider:
    """Set up the global tracer provider from the OTEL_* variables; refuse, with one line, what cannot work."""
    global _tracer, _propagator
    _check_sampler(env)
    try:
        # OTEL_PROPAGATORS is read when the module is first imported; a name that is not installed fails there.
        from opentelemetry import propagate
    except ValueError as e:
        raise ConfigError(f"OTEL_PROPAGATORS: {e}") from None
    resource = Resource.create({SERVICE_VERSION: env.text("APP_VERSION", "dev")})
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        # Neither OTEL_SERVICE_NAME nor OTEL_RESOURCE_ATTRIBUTES names it: the shop's own name is better than none.
        resource = resource.merge(Resource({SERVICE_NAME: service}))
    provider = TracerProvider(resource=resource)  # the sampler from OTEL_TRACES_SAMPLER(_ARG)
    for processor in _processors(env):
        provider.add_span_processor(processor)
    trace.set_tracer_provider(provider)
    _tracer = provider.get_tracer(SCOPE)
    _propagator = propagate.get_global_textmap()
    return provider


def _check_sampler(env: Env) -> None:
    # The SDK would fall back to its default on a misspelt sampler with a warning nobody reads; refuse instead.
    name = env.raw("OTEL_TRACES_SAMPLER").lower()
    if name and name not in SAMPLERS:
        raise ConfigError(f"OTEL_TRACES_SAMPLER must be one of {', '.join(SAMPLERS)}, got {name!r}")
    arg = env.raw("OTEL_TRACES_SAMPLER_ARG")
    if name in RATIO_SAMPLERS and arg:
        try:
            ratio = float(arg)
        except ValueError:
            ratio = -1.0
        if not 0.0 <= ratio <= 1.0:
            raise ConfigError(f"OTEL_TRACES_SAMPLER_ARG must be a ratio from 0 to 1 for {name}, got {arg!r}")


def _processors(env: Env) -> list:
    names = sorted(env.words("OTEL_TRACES_EXPORTER") - {"none"}) or ["otlp"]
    processors = []
    for name in names:
        if name == "otlp":
            protocol = env.raw("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.raw("OTEL_EXPORTER_OTLP_PROTOCOL")
            if protocol and protocol != PROTOCOL:
                raise ConfigError(f"OTEL_EXPORTER_OTLP_PROTOCOL: only {PROTOCOL} is available here (port 4318), "
                                  f"got {protocol!r}")
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            # Spans wait in memory and leave in batches (every OTEL_BSP_SCHEDULE_DELAY ms, default 5000), so a
            # request never waits for the collector, and a collector that is down costs dropped spans only.
            processors.append(BatchSpanProcessor(OTLPSpanExporter()))
        elif name == "console":
            # One span per line on stderr: stdout carries the JSON log lines a collector parses.
            processors.append(SimpleSpanProcessor(ConsoleSpanExporter(
                out=sys.stderr, formatter=lambda span: span.to_json(indent=None) + os.linesep)))
        else:
            raise ConfigError(f"OTEL_TRACES_EXPORTER: {name!r} is not available here (otlp, console or none)")
    return processors


def instrument(app: Starlette) -> None:
    """Give every request `app` answers a server span (outermost, so request log lines carry its ids)."""
    app.add_middleware(ServerSpans)


class ServerSpans:
    """ASGI middleware: a SERVER span per request, a child of the caller's span when a `traceparent` came with
    it. Probes and scrapes (/healthz, /readyz, /metrics) are not traced: they would be most of the spans."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in PROBE_PATHS:
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", ())}
        parent = _propagator.extract(headers) if _propagator is not None else None
        method = scope["method"]
        status = 500

        async def remember(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        attributes = {"http.request.method": method, "url.path": scope["path"],
                      "url.scheme": scope.get("scheme", "http")}
        if scope.get("client"):
            attributes["client.address"] = scope["client"][0]
        if "user-agent" in headers:
            attributes["user_agent.original"] = headers["user-agent"]
        with _tracer.start_as_current_span(method, context=parent, kind=SpanKind.SERVER,
                                           attributes=attributes) as span:
            try:
                await self.app(scope, receive, remember)
            finally:
                # Named after the route template (POST /orders, GET /stock/{sku}), never the path: the path holds
                # ids, and a name per id would make every trace look unique.
                route = getattr(scope.get("route"), "path", None)
                if route:
                    span.update_name(f"{method} {route}")
                    span.set_attribute("http.route", route)
                span.set_attribute("http.response.status_code", status)
                if status >= 500:
                    span.set_status(Status(StatusCode.ERROR))


class ClientSpans(httpx.AsyncBaseTransport):
    """An httpx transport that makes a CLIENT span per request (each retry its own) and sends the current
    trace context along in the request's headers (`traceparent`, as OTEL_PROPAGATORS says)."""

    def __init__(self, inner: httpx.AsyncBaseTransport | None, target: str) -> None:
        self.inner = inner if inner is not None else httpx.AsyncHTTPTransport()
        self.target = target

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        method = request.method
        url = request.url
        attributes = {"http.request.method": method, "url.full": str(url.copy_with(query=None)),
                      "server.address": url.host, "peer.service": self.target}
        if url.port:
            attributes["server.port"] = url.port
        with _tracer.start_as_current_span(f"{method} {self.target}", kind=SpanKind.CLIENT,
                                           attributes=attributes) as span:
            if _propagator is not None:
                _propagator.inject(request.headers)
            response = await self.inner.handle_async_request(request)
            span.set_attribute("http.response.status_code", response.status_code)
            if response.status_code >= 400:
                span.set_status(Status(StatusCode.ERROR))
            return response

    async def aclose(self) -> None:
        await self.inner.aclose()


class TraceIds(logging.Filter):
    """Adds trace_id and span_id to a log record written while a span is current: a log line then names its
    trace (search the tracing backend by it), and a trace's log lines are found by its id."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            record.trace_id = format(context.trace_id, "032x")
            record.span_id = format(context.span_id, "016x")
        return True
