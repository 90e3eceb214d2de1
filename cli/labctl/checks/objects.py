"""Reading API objects that may be incomplete: every accessor tolerates missing fields and wrong types."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

_MESSAGE_LIMIT = 160


def get(obj: Any, *keys: str) -> Any:
    """obj[k1][k2]…, or None as soon as a level is missing or is not a mapping."""
    for key in keys:
        if not isinstance(obj, Mapping):
            return None
        obj = obj.get(key)
    return obj


def as_int(value: Any, default: int | None = 0) -> int | None:
    """A count from a status field: whole numbers only (not bools, not strings), else `default`."""
    if isinstance(value, bool):
        return default
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return default


def as_list(value: Any) -> list:
    """The value when it is a list, else an empty list (a string where a list belongs counts as empty)."""
    return value if isinstance(value, list) else []


def items(objects: Any) -> Iterable[Mapping[str, Any]]:
    """The mappings in a list of objects, skipping anything else."""
    return (obj for obj in as_list(objects) if isinstance(obj, Mapping))


def name_of(obj: Any) -> Any:
    return get(obj, "metadata", "name")


def find(objects: Any, name: str) -> Mapping[str, Any] | None:
    """The object called `name` in a list, or None."""
    for obj in items(objects):
        if name_of(obj) == name:
            return obj
    return None


def deleting(obj: Mapping[str, Any]) -> bool:
    """Whether the object is on its way out (a deletionTimestamp is set)."""
    return bool(get(obj, "metadata", "deletionTimestamp"))


def labels_of(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    labels = get(obj, "metadata", "labels")
    return labels if isinstance(labels, Mapping) else {}


def condition(obj: Any, type_: str) -> Mapping[str, Any] | None:
    """The entry of .status.conditions with this type, or None."""
    for entry in items(get(obj, "status", "conditions")):
        if entry.get("type") == type_:
            return entry
    return None


def one_line(text: Any, limit: int = _MESSAGE_LIMIT) -> str:
    """Text squeezed onto one line and cut to `limit` characters (messages from the API can be long)."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def plural(n: int, kind: str) -> str:
    """`1 Pod`, `3 Pods`, `2 NetworkPolicies`, `2 Ingresses`."""
    if n == 1:
        return f"{n} {kind}"
    if kind.endswith(("ss", "sh", "ch", "x")):
        word = kind + "es"
    elif kind.endswith("s"):
        word = kind
    elif kind.endswith("y") and kind[-2:-1] not in ("a", "e", "i", "o", "u"):
        word = kind[:-1] + "ies"
    else:
        word = kind + "s"
    return f"{n} {word}"
