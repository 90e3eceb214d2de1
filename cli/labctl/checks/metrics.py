"""Reading one sample out of a Prometheus text exposition, and judging it (`expect.metric`)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from labctl.checks.matching import show
from labctl.checks.model import Result

# name{label="value",...} value [timestamp]; label values may hold escaped quotes and backslashes.
_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})?\s+(?P<value>\S+)(?:\s+\S+)?\s*$")
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?')
_ESCAPES = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}


def parse_samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Every sample of a text exposition as (name, labels, value); comment and malformed lines are skipped."""
    samples = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if not m:
            continue
        labels: dict[str, str] = {}
        raw = m.group("labels") or ""
        pos = 0
        while pos < len(raw):
            lm = _LABEL.match(raw, pos)
            if not lm or lm.end() == pos:
                break
            labels[lm.group(1)] = re.sub(r'\\[\\"n]', lambda e: _ESCAPES[e.group(0)], lm.group(2))
            pos = lm.end()
        try:
            value = float(m.group("value"))
        except ValueError:
            continue
        samples.append((m.group("name"), labels, value))
    return samples


def find_sample(text: str, name: str, labels: Mapping[str, str] | None = None) -> float | None:
    """The value of the first sample named `name` whose labels include every one of `labels`."""
    want = dict(labels or {})
    for sample_name, sample_labels, value in parse_samples(text):
        if sample_name == name and all(sample_labels.get(k) == v for k, v in want.items()):
            return value
    return None


def describe_metric(expect: Mapping[str, Any]) -> str:
    """`labshop_breaker_state{target="payments"}`, as reasons name a series."""
    labels = expect.get("labels") or {}
    inner = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return f"{expect.get('name')}{{{inner}}}" if inner else str(expect.get("name"))


def evaluate_metric(expect: Mapping[str, Any], text: str) -> Result:
    """Judge `expect.metric` ({name, labels, equals | min | max}) on a metrics body."""
    series = describe_metric(expect)
    value = find_sample(text, str(expect.get("name")), expect.get("labels"))
    if value is None:
        names = sorted({n for n, _, _ in parse_samples(text)})
        near = [n for n in names if n.startswith(str(expect.get("name")).split("_")[0])][:5]
        seen = f" (series seen: {', '.join(near)})" if near else " (the body holds no such series)"
        return Result(False, f"metric {series} is not exposed{seen}")
    shown = _number(value)
    if "equals" in expect and not value == expect["equals"]:  # NaN equals nothing
        return Result(False, f"metric {series} is {shown} (wanted {show(expect['equals'])})")
    if "min" in expect and not value >= expect["min"]:
        return Result(False, f"metric {series} is {shown} (wanted at least {show(expect['min'])})")
    if "max" in expect and not value <= expect["max"]:
        return Result(False, f"metric {series} is {shown} (wanted at most {show(expect['max'])})")
    return Result(True, f"metric {series} is {shown}")


def _number(value: float) -> str:
    return str(int(value)) if value.is_integer() else f"{value:g}"  # +Inf and NaN are not integers
