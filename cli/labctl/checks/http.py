"""Judging the answer to an `http` check's request (the request itself is made elsewhere)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from labctl.checks.evaluate import search
from labctl.checks.matching import show, values_equal
from labctl.checks.metrics import evaluate_metric
from labctl.checks.model import HttpResponse, Result, spec_of
from labctl.checks.objects import one_line

if TYPE_CHECKING:
    from labctl.labs import Check


def describe_request(check: Check | Mapping[str, Any]) -> str:
    """`GET /healthz on Service web:80`, as reasons name the request."""
    spec = spec_of(check)
    method = spec.get("method") or "GET"
    return f"{method} {spec.get('path')} on Service {spec.get('service')}:{spec.get('port')}"


def evaluate_http(
    check: Check | Mapping[str, Any], response: HttpResponse | None, error: str | None, *, request: str | None = None
) -> Result:
    """Judge an `http` check by the response its request got, or by the error that stopped it.

    `expect` (all optional): `status` (default: any 2xx), `json` (JMESPath expression -> the value it
    must give on the JSON body), `contains` (text in the body), `metric` (a sample of a Prometheus text body), `max_ms` (answered within).
    `request` names the request in reasons (default: the check's Service, port and path).
    """
    spec = spec_of(check)
    request = request or describe_request(spec)
    if error is not None:
        return Result(False, f"{request}: {one_line(error)}")
    if response is None:
        return Result(False, f"{request}: no answer")
    expect = spec.get("expect")
    expect = expect if isinstance(expect, Mapping) else {}
    body = response.body if isinstance(response.body, bytes) else str(response.body).encode()
    text = body.decode("utf-8", errors="replace")

    want_status = expect.get("status")
    if want_status is None:
        if not 200 <= response.status < 300:
            return Result(False, f"{request}: status {response.status} (wanted 2xx){_excerpt(text)}")
    elif response.status != want_status:
        return Result(False, f"{request}: status {response.status} (wanted {want_status}){_excerpt(text)}")

    wanted_json = expect.get("json")
    if isinstance(wanted_json, Mapping) and wanted_json:
        try:
            document = json.loads(body)
        except (ValueError, RecursionError):
            return Result(False, f"{request}: the body is not JSON (seen {show(text, 60)})")
        for expr, want in wanted_json.items():
            ok, value = search(str(expr), document)
            if not ok:
                return Result(False, f"{request}: {expr} could not be evaluated on the body ({value})")
            if not values_equal(value, want):
                return Result(False, f"{request}: {expr} is {show(value)} (wanted {show(want)})")

    contains = expect.get("contains")
    if isinstance(contains, str) and contains and contains not in text:
        return Result(False, f"{request}: the body does not contain {show(contains)} (seen {show(text, 60)})")

    metric = expect.get("metric")
    if isinstance(metric, Mapping):
        judged = evaluate_metric(metric, text)
        if not judged.passed:
            return Result(False, f"{request}: {judged.reason}")

    max_ms = expect.get("max_ms")
    if isinstance(max_ms, (int, float)) and not isinstance(max_ms, bool) and response.elapsed_ms > max_ms:
        return Result(
            False, f"{request}: answered in {response.elapsed_ms:.0f} ms (wanted at most {max_ms:g} ms)"
        )
    return Result(True, f"{request}: {response.status} in {response.elapsed_ms:.0f} ms")


def _excerpt(text: str) -> str:
    stripped = text.strip()
    return f": {show(stripped, 60)}" if stripped else ""
