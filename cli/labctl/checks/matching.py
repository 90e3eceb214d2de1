"""Partial-object matching (the `matches` check) and the small helpers reasons are written with."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SHOW_LIMIT = 80


def show(value: Any, limit: int = _SHOW_LIMIT) -> str:
    """A value as a learner would write it in YAML, on one line and cut to `limit` characters."""
    text = _show(value, limit + 1, 0)
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text


def _show(value: Any, budget: int, depth: int) -> str:
    # Writes no more than about `budget` characters, so a whole API object shown in a reason costs little.
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        return repr(value[:budget])[: budget + 2] if len(value) > budget else repr(value)
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, Mapping):
        pairs = ((f"{_show_key(k)}: ", v) for k, v in value.items())
        return _show_items("{", "}", pairs, len(value), budget, depth)
    if isinstance(value, (list, tuple)):
        return _show_items("[", "]", (("", v) for v in value), len(value), budget, depth)
    return repr(value)[:budget]


def _show_items(start: str, end: str, items: Any, n: int, budget: int, depth: int) -> str:
    if n == 0:
        return start + end
    if depth >= 8:
        return start + "…" + end
    parts: list[str] = []
    used = 1
    for prefix, item in items:
        if used > budget:
            parts.append("…")
            break
        part = prefix + _show(item, budget - used, depth + 1)
        parts.append(part)
        used += len(part) + 2
    return start + ", ".join(parts) + end


def _show_key(key: Any) -> str:
    return key if isinstance(key, str) and _PLAIN_KEY.match(key) else _show(key, _SHOW_LIMIT, 0)


def join_path(path: str, key: Any) -> str:
    """`path` extended by a mapping key or a list index: spec.selector["app.kubernetes.io/name"], containers[0]."""
    if isinstance(key, int) and not isinstance(key, bool):
        return f"{path}[{key}]"
    if isinstance(key, str) and _PLAIN_KEY.match(key):
        return f"{path}.{key}" if path else key
    return f"{path}[{_show(key, _SHOW_LIMIT, 0)}]"


def values_equal(a: Any, b: Any) -> bool:
    """Deep equality where types matter: 1 and "1" differ, true and 1 differ, 1 and 1.0 are equal."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if _is_number(a) and _is_number(b):
        return a == b
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(values_equal(a[k], b[k]) for k in a)
    if _is_list(a) and _is_list(b):
        return len(a) == len(b) and all(values_equal(x, y) for x, y in zip(a, b, strict=True))
    if type(a) is not type(b):
        return False
    return bool(a == b)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_list(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, (str, bytes, bytearray))


def match_subset(expected: Any, actual: Any, path: str = "") -> tuple[bool, str]:
    """Whether `actual` contains the subtree `expected` (rules in labs/FORMAT.md, *Matching*).

    On a mismatch the reason names the first path that differs, what it is and what was wanted, e.g.
    `spec.replicas is 1 (wanted 3)`. On a match the reason is empty.
    """
    where = path or "the object"
    if expected is None:
        if actual is None:
            return True, ""
        return False, f"{where} is {show(actual)} (wanted it unset)"
    if isinstance(expected, Mapping):
        if not isinstance(actual, Mapping):
            return False, f"{where} is {_describe(actual)} (wanted a mapping with {_keys(expected)})"
        for key, want in expected.items():
            sub = join_path(path, key)
            if key not in actual:
                if want is None:
                    continue
                return False, f"{sub} is missing (wanted {show(want)})"
            ok, reason = match_subset(want, actual[key], sub)
            if not ok:
                return False, reason
        return True, ""
    if _is_list(expected):
        if not _is_list(actual):
            return False, f"{where} is {_describe(actual)} (wanted a list)"
        return _match_list(list(expected), list(actual), path)
    if values_equal(expected, actual):
        return True, ""
    return False, f"{where} is {show(actual)} (wanted {show(expected)})"


def _describe(value: Any) -> str:
    if isinstance(value, Mapping):
        return "a mapping"
    if _is_list(value):
        return "a list"
    return show(value)


def _keys(mapping: Mapping) -> str:
    return ", ".join(_show_key(k) for k in mapping) or "any keys"


def _match_list(expected: list, actual: list, path: str) -> tuple[bool, str]:
    # Each expected element needs its own element of the object's list: a bipartite matching, since a
    # greedy pass can give an element to the wrong expectation ([{a: 1}, {a: 1, b: 2}] against the
    # same two elements in the other order).
    fits = [[match_subset(want, have)[0] for have in actual] for want in expected]
    owner: list[int | None] = [None] * len(actual)

    def assign(i: int, seen: set[int]) -> bool:
        for j, ok in enumerate(fits[i]):
            if ok and j not in seen:
                seen.add(j)
                if owner[j] is None or assign(owner[j], seen):  # type: ignore[arg-type]
                    owner[j] = i
                    return True
        return False

    for i in range(len(expected)):
        if assign(i, set()):
            continue
        where = path or "the object"
        want = expected[i]
        if any(fits[i]):
            return False, (
                f"{where} has no other element matching {show(want)} "
                "(each expected element needs an element of its own)"
            )
        closest = _closest(want, actual)
        if closest is not None:
            return False, match_subset(want, actual[closest], join_path(path, closest))[1]
        return False, f"{where} has no element matching {show(want)} ({_count(len(actual))})"
    return True, ""


def _closest(want: Any, actual: list) -> int | None:
    """The element a learner means when one clearly stands out: same `name`, or the only one."""
    if isinstance(want, Mapping) and "name" in want:
        named = [
            j
            for j, have in enumerate(actual)
            if isinstance(have, Mapping) and values_equal(have.get("name"), want["name"])
        ]
        if len(named) == 1:
            return named[0]
    if len(actual) == 1:
        return 0
    return None


def _count(n: int) -> str:
    return "the list is empty" if n == 0 else f"{n} element{'s' if n != 1 else ''} seen"
