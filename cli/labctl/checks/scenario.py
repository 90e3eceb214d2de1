"""Scenario checks, pure half: naming steps, their time limits, and undoing a merge patch."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from labctl.checks.probe import describe_probe

STEP_KINDS = ("patch", "restart", "http", "probe", "sleep")
DEFAULT_TIMEOUTS = {"patch": 10.0, "restart": 120.0, "http": 10.0, "probe": 30.0, "sleep": 0.0}


def step_kind(step: Mapping[str, Any]) -> str:
    return next(k for k in STEP_KINDS if k in step)


def step_timeout(step: Mapping[str, Any]) -> float:
    kind = step_kind(step)
    if kind == "sleep":
        return float(step["sleep"])
    return float(step.get("timeout_seconds") or DEFAULT_TIMEOUTS[kind])


def describe_step(step: Mapping[str, Any]) -> str:
    """What a step does, as failures name it (its own title when it has one)."""
    kind = step_kind(step)
    if step.get("title"):
        return str(step["title"])
    if kind == "patch":
        t = step["patch"]["target"]
        return f"patch {t['kind']} {t['name']}"
    if kind == "restart":
        return f"restart {step['restart']['kind']} {step['restart']['name']}"
    if kind == "http":
        h = step["http"]
        count = int(h.get("count", 1))
        return (f"{h.get('method') or 'GET'} {h['path']} on Service {h['service']}:{h['port']}"
                + (f", {count} requests" if count > 1 else ""))
    if kind == "probe":
        return describe_probe(step["probe"])
    return f"wait {step['sleep']:g} s"


def inverse_merge_patch(original: Any, patch: Any) -> Any:
    """The merge patch that puts back what `patch` changes in `original` (RFC 7386 semantics both ways).

    A key the patch sets that the original lacked is removed (null); a mapping is restored key by key; any
    other value is restored whole.
    """
    if not isinstance(patch, Mapping):
        return original
    original = original if isinstance(original, Mapping) else {}
    undo: dict[str, Any] = {}
    for key, value in patch.items():
        if key not in original:
            if value is not None:
                undo[key] = None
        elif isinstance(value, Mapping) and isinstance(original[key], Mapping):
            inner = inverse_merge_patch(original[key], value)
            if inner:
                undo[key] = inner
        else:
            undo[key] = original[key]
    return undo


def apply_merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 applied to plain data (what the API server does with a merge patch)."""
    if not isinstance(patch, Mapping):
        return patch
    result = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = apply_merge_patch(result.get(key), value)
    return result
