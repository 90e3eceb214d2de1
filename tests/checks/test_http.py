"""evaluate_http: judging the answer an `http` check's request got."""

from __future__ import annotations

from typing import Any

import pytest

from labctl.checks import HttpResponse, Result, describe_request, evaluate_http

pytestmark = pytest.mark.unit

REQUEST = "GET /version on Service web:80"


def http(**fields: Any) -> dict[str, Any]:
    return {"id": "h", "title": "H", "type": "http", "hints": ["h"], "service": "web", "port": 80,
            "path": "/version", **fields}


def answer(status: int = 200, body: bytes = b'{"version": "1.0", "ready": true}', ms: float = 12.4) -> HttpResponse:
    return HttpResponse(status=status, body=body, elapsed_ms=ms, headers={"Content-Type": "application/json"})


@pytest.mark.parametrize(
    ("expect", "response", "result"),
    [
        (None, answer(), (True, f"{REQUEST}: 200 in 12 ms")),
        (None, answer(204, b""), (True, f"{REQUEST}: 204 in 12 ms")),
        (None, answer(503, b"no endpoints available for service \"web\"\n"),
         (False, f"{REQUEST}: status 503 (wanted 2xx): 'no endpoints available for service \"web\"'")),
        ({"status": 404}, answer(404, b""), (True, f"{REQUEST}: 404 in 12 ms")),
        ({"status": 200}, answer(500, b""), (False, f"{REQUEST}: status 500 (wanted 200)")),
        ({"json": {"version": "1.0", "ready": True}}, answer(), (True, f"{REQUEST}: 200 in 12 ms")),
        ({"json": {"version": "2.0"}}, answer(), (False, f"{REQUEST}: version is '1.0' (wanted '2.0')")),
        ({"json": {"version": 1.0}}, answer(), (False, f"{REQUEST}: version is '1.0' (wanted 1.0)")),
        ({"json": {"ready": "true"}}, answer(), (False, f"{REQUEST}: ready is true (wanted 'true')")),
        ({"json": {"missing.field": None}}, answer(), (True, f"{REQUEST}: 200 in 12 ms")),
        ({"json": {"length(items)": 2}}, answer(body=b'{"items": [1, 2]}'), (True, f"{REQUEST}: 200 in 12 ms")),
        ({"json": {"length(version)": 3}}, answer(),
         (True, f"{REQUEST}: 200 in 12 ms")),
        ({"json": {"length(ready)": 1}}, answer(),
         (False, f"{REQUEST}: length(ready) could not be evaluated on the body (In function length(), invalid type "
                 "for value: True, expected one of: ['string', 'array', 'object'], received: \"boolean\")")),
        ({"json": {"version": "1.0"}}, answer(body=b"<html>hello</html>"),
         (False, f"{REQUEST}: the body is not JSON (seen '<html>hello</html>')")),
        ({"json": {"version": "1.0"}}, answer(body=b"\xff\xfe\x00"),
         (False, f"{REQUEST}: the body is not JSON (seen '\ufffd\ufffd\\x00')")),
        ({"json": {"version": "1.0"}}, answer(body=b"[" * 100000),
         (False, f"{REQUEST}: the body is not JSON (seen '" + "[" * 58 + "…)")),
        ({"contains": "1.0"}, answer(), (True, f"{REQUEST}: 200 in 12 ms")),
        ({"contains": "2.0"}, answer(),
         (False, f"{REQUEST}: the body does not contain '2.0' (seen '{{\"version\": \"1.0\", \"ready\": true}}')")),
        ({"max_ms": 500}, answer(ms=499.9), (True, f"{REQUEST}: 200 in 500 ms")),
        ({"max_ms": 500}, answer(ms=812.2), (False, f"{REQUEST}: answered in 812 ms (wanted at most 500 ms)")),
        ({"max_ms": 0.5}, answer(ms=1.0), (False, f"{REQUEST}: answered in 1 ms (wanted at most 0.5 ms)")),
        # The status is judged first: a 503 page is not "not JSON".
        ({"status": 200, "json": {"version": "1.0"}}, answer(503, b"down"),
         (False, f"{REQUEST}: status 503 (wanted 200): 'down'")),
    ],
)
def test_evaluate_http(expect: dict[str, Any] | None, response: HttpResponse, result: tuple[bool, str]) -> None:
    spec = http() if expect is None else http(expect=expect)
    assert evaluate_http(spec, response, None) == Result(*result)


def test_an_error_instead_of_an_answer() -> None:
    assert evaluate_http(http(), None, "connection refused\n(after 3 tries)") == Result(
        False, f"{REQUEST}: connection refused (after 3 tries)"
    )
    assert evaluate_http(http(), None, None) == Result(False, f"{REQUEST}: no answer")


def test_the_request_is_named_with_its_method_and_port() -> None:
    assert describe_request(http(method="POST", port="http", path="/orders")) == "POST /orders on Service web:http"


def test_a_malformed_expectation_is_ignored_rather_than_crashing() -> None:
    assert evaluate_http(http(expect="200"), answer(), None).passed is True
    assert evaluate_http(http(expect={"json": "version"}), answer(), None).passed is True
