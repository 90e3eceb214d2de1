"""The check engine's pure half: which lists a check reads, and what it concludes from them.

Nothing here talks to a cluster: fetching, waiting and sending requests live elsewhere and hand over
plain dicts (and, for `http` checks, the response).
"""

from labctl.checks.evaluate import evaluate, fetch_keys, workload_ready
from labctl.checks.http import describe_request, evaluate_http
from labctl.checks.matching import match_subset
from labctl.checks.model import (
    CHECK_TYPES,
    NOT_ON_PROVIDER,
    FetchKey,
    HttpResponse,
    Result,
    needs_running,
)

__all__ = [
    "CHECK_TYPES",
    "NOT_ON_PROVIDER",
    "FetchKey",
    "HttpResponse",
    "Result",
    "describe_request",
    "evaluate",
    "evaluate_http",
    "fetch_keys",
    "match_subset",
    "needs_running",
    "workload_ready",
]
