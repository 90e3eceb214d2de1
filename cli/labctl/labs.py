"""Labs as data: loading lab.yaml (validated against the published schema) and finding a lab by name."""

from __future__ import annotations

import datetime
import difflib
import functools
import json
import re
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jmespath
import jmespath.exceptions
import yaml

from labctl import paths
from labctl.checks.matching import join_path, show
from labctl.checks.model import KNOWN_API_VERSIONS, needs_running
from labctl.checks.probe import action_kind
from labctl.checks.scenario import step_kind
from labctl.errors import LabDefinitionError, UsageError

if TYPE_CHECKING:
    import jsonschema

LAB_FOLDER = re.compile(r"^(\d{2})-([a-z0-9]+(?:-[a-z0-9]+)*)$")
SCHEMA_COMMENT = "# yaml-language-server: $schema=../../cli/labctl/schema/lab.schema.json"
FORMAT_HINT = "the lab format is described in labs/FORMAT.md"


@dataclass(frozen=True)
class Check:
    """One check of a lab. `spec` is the whole check mapping as written in lab.yaml."""

    id: str
    title: str
    type: str
    hints: list[str]
    needs_running: bool
    spec: dict


@dataclass(frozen=True)
class Image:
    """An image the lab's pods need: its reference, the folder it is built from and its Dockerfile, or the
    toolbox binary it is made of.

    `dockerfile` None means `context / "Dockerfile"` (load_lab always fills it in).
    """

    name: str
    context: Path | None = None
    dockerfile: Path | None = None
    toolbox: str | None = None


@dataclass(frozen=True)
class InterviewQuestion:
    """An interview question the lab prepares for, with a short model answer."""

    question: str
    answer: str


@dataclass(frozen=True)
class Lab:
    """A loaded, validated lab. Paths (`path`, `deploy`, `solution`, images) are absolute; `raw` is lab.yaml."""

    number: int
    slug: str
    path: Path
    title: str
    difficulty: str
    minutes: int
    summary: str
    objectives: list[str]
    prerequisites: list[str]
    namespace: str
    pod_security: str
    images: list[Image]
    values: dict
    deploy: list[Path]
    solution: list[Path]
    checks: list[Check]
    interview: list[InterviewQuestion]
    raw: dict
    pod_security_reason: str | None = None

    @property
    def name(self) -> str:
        """The folder name, `09-containerization`."""
        return f"{self.number:02d}-{self.slug}"

    def template_values(self) -> dict:
        """What the deploy templates see: the lab's values plus `namespace`."""
        return {**self.values, "namespace": self.namespace}


# -- loading ----------------------------------------------------------------------------------------------


def load_lab(path: Path) -> Lab:
    """Load and validate one lab, given its folder (`labs/09-containerization`) or its lab.yaml.

    Raises LabDefinitionError with one line naming the file, the field and what is allowed.
    """
    path = Path(path)
    folder, file = (path, path / "lab.yaml") if path.is_dir() else (path.parent, path)
    shown = _shown(file)
    match = LAB_FOLDER.match(folder.name)
    if match is None:
        raise _error(
            shown,
            f"the lab folder must be named NN-slug (two digits, a hyphen, a kebab-case name), not {folder.name!r}",
        )
    number, slug = int(match.group(1)), match.group(2)
    doc = _parse(file, shown)
    _check_structure(doc, shown)
    if not _validated_before(file):
        _check_schema(doc, shown)
        _remember_validated(file)
    _check_meaning(doc, folder, slug, shown)
    return _build(doc, folder, number, slug)


def all_labs(root: Path | None = None) -> list[Lab]:
    """Every lab under `root` (default: the shipped labs) in study order. Other entries are ignored."""
    root = paths.labs_dir() if root is None else Path(root)
    if not root.is_dir():
        raise LabDefinitionError(f"no labs folder at {root}", hint="reinstall labctl, or run it from a checkout")
    labs = [
        load_lab(entry)
        for entry in sorted(root.iterdir())
        if LAB_FOLDER.match(entry.name) and (entry / "lab.yaml").is_file()
    ]
    by_number: dict[int, Lab] = {}
    by_slug: dict[str, Lab] = {}
    for lab in labs:
        other = by_number.get(lab.number) or by_slug.get(lab.slug)
        if other is not None:
            raise LabDefinitionError(
                f"{_shown(root / lab.name)}: {other.name} and {lab.name} share a number or a name",
                hint="every lab needs its own number and slug",
            )
        by_number[lab.number] = by_slug[lab.slug] = lab
    return sorted(labs, key=lambda lab: lab.number)


def resolve_lab(arg: str, labs: list[Lab]) -> Lab:
    """The lab `arg` names: its slug, its number (`9` or `09`), its folder name, or a unique prefix."""
    text = arg.strip().lower()
    choices = ", ".join(lab.name for lab in labs) or "none"
    if re.fullmatch(r"[0-9]{1,4}", text):
        for lab in labs:
            if lab.number == int(text):
                return lab
    elif text:
        for lab in labs:
            if text in (lab.slug, lab.name):
                return lab
        found = [lab for lab in labs if lab.slug.startswith(text) or lab.name.startswith(text)]
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise UsageError(
                f"'{arg}' could be any of: {', '.join(lab.name for lab in found)}",
                hint="type more of the name, or the number",
            )
    raise UsageError(f"no lab called '{arg}'; the labs are: {choices}", hint="`labctl list` describes them")


# -- parsing --------------------------------------------------------------------------------------------


# libyaml's parser is many times faster than the pure-Python one and caps nesting depth itself.
_SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_SafeLoader):
    """The safe loader, refusing duplicate keys (YAML would silently keep the last one)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        if not isinstance(node, yaml.MappingNode):
            return super().construct_mapping(node, deep=deep)  # reports "expected a mapping node"
        keys: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in keys
            except TypeError:
                continue  # unhashable: the base class reports it with its position
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping",
                    node.start_mark,
                    f"found the key {show(key)} twice",
                    key_node.start_mark,
                )
            keys[key] = key_node
        return super().construct_mapping(node, deep=deep)


def _parse(file: Path, shown: str) -> Any:
    try:
        data = file.read_bytes()
    except (OSError, ValueError) as e:
        raise _error(shown, f"cannot be read: {getattr(e, 'strerror', None) or e}") from e
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise _error(shown, f"is not UTF-8 text (byte {e.start})") from e
    try:
        doc = yaml.load(text, Loader=_Loader)  # _Loader is a safe loader
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{shown}:{mark.line + 1}" if mark is not None else shown
        what = " ".join(str(p) for p in (e.problem, e.context) if p) or "invalid YAML"
        if e.context_mark is not None and mark is not None and e.context_mark.line != mark.line:
            what += f" (started on line {e.context_mark.line + 1})"
        raise LabDefinitionError(f"{where}: invalid YAML: {_flat(what)}", hint=FORMAT_HINT) from e
    except yaml.YAMLError as e:
        raise _error(shown, f"invalid YAML: {_flat(e)}") from e
    except RecursionError as e:
        raise _error(shown, "invalid YAML: nested too deeply") from e
    except (ValueError, TypeError, AttributeError, KeyError, IndexError, OverflowError) as e:
        # PyYAML's constructors let these through for explicit tags that do not fit their value (!!int abc).
        raise _error(shown, f"invalid YAML: a tagged value cannot be read ({_flat(e)})") from e
    if doc is None:
        raise _error(shown, "is empty (wanted the lab's fields: format_version, title, ...)")
    return doc


_JSON_SCALARS = (str, int, float, bool, type(None))
# Far deeper than any lab needs (a container's capabilities are ten levels down), and shallow enough that
# nothing downstream (the schema validator, messages, matching) can run out of stack.
MAX_DEPTH = 64


def _check_structure(doc: Any, shown: str) -> None:
    """Only what JSON can hold: text keys, no dates or binary, no recursive aliases, bounded depth."""
    on_path: set[int] = set()
    done: set[int] = set()
    stack: list[tuple[Any, str, bool, int]] = [(doc, "", False, 0)]
    while stack:
        value, where, leaving, depth = stack.pop()
        if isinstance(value, _JSON_SCALARS):
            continue
        if depth >= MAX_DEPTH:
            raise _error(shown, _field(where, f"is nested more than {MAX_DEPTH} levels deep"))
        if not isinstance(value, (dict, list)):
            raise _error(shown, _field(where, _not_json(value)))
        ident = id(value)
        if leaving:
            on_path.discard(ident)
            done.add(ident)
            continue
        if ident in on_path:
            raise _error(shown, _field(where, "refers to itself through a YAML alias"))
        if ident in done:
            continue
        on_path.add(ident)
        stack.append((value, where, True, depth))
        if isinstance(value, dict):
            for key, child in value.items():
                if not isinstance(key, str):
                    raise _error(shown, _field(where, f"the key {show(key)} must be text (quote it)"))
                stack.append((child, join_path(where, key), False, depth + 1))
        else:
            stack.extend((child, join_path(where, i), False, depth + 1) for i, child in enumerate(value))


def _not_json(value: Any) -> str:
    if isinstance(value, (datetime.date, datetime.datetime)):
        return f"{value} is read as a date (quote it to make it text)"
    if isinstance(value, bytes):
        return "binary values are not allowed"
    return f"{type(value).__name__} values are not allowed (use text, numbers, true/false, lists and mappings)"


# -- the schema -----------------------------------------------------------------------------------------


@functools.cache
def schema() -> dict:
    """The published JSON Schema of lab.yaml."""
    text = resources.files("labctl").joinpath("schema", "lab.schema.json").read_text(encoding="utf-8")
    return json.loads(text)


@functools.cache
def _validator():
    import jsonschema  # its import alone costs more than the rest of `labctl check`: only when a lab changed

    return jsonschema.Draft202012Validator(schema())


def _validation_key(file: Path) -> str:
    """Content address of a lab.yaml under this labctl's schema: same bytes, same verdict."""
    import hashlib

    digest = hashlib.sha256(file.read_bytes())
    digest.update(resources.files("labctl").joinpath("schema", "lab.schema.json").read_bytes())
    return digest.hexdigest()


def _validated_before(file: Path) -> bool:
    try:
        return (paths.cache_dir() / "validated-labs" / _validation_key(file)).exists()
    except OSError:
        return False


def _remember_validated(file: Path) -> None:
    try:
        folder = paths.cache_dir() / "validated-labs"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / _validation_key(file)).touch()
    except OSError:
        pass  # a read-only cache only costs the validation next time


def _check_schema(doc: Any, shown: str) -> None:
    import jsonschema.exceptions

    errors = sorted(_validator().iter_errors(doc), key=lambda e: _order(e.absolute_path))
    if not errors:
        return
    best = jsonschema.exceptions.best_match(errors, key=_relevance)
    raise _error(shown, _describe(best, doc))


def _order(path: Iterable[Any]) -> tuple:
    return tuple((0, p, "") if isinstance(p, int) else (1, 0, str(p)) for p in path)


def _unknown_field(error: jsonschema.ValidationError) -> bool:
    return "propertyNames" in error.relative_schema_path


def _relevance(error: jsonschema.ValidationError) -> tuple:
    # Shallow errors first (they say more is wrong); at one level an unknown field explains best, since
    # a misspelt key also shows up as a missing one.
    if _unknown_field(error):
        rank = 3
    elif error.validator == "additionalProperties":
        rank = 2
    elif error.validator == "required":
        rank = 1
    else:
        rank = 0
    return (-len(error.path), rank, error.validator not in ("anyOf", "oneOf"))


_TYPE_WORDS = {
    "object": "a mapping",
    "array": "a list",
    "string": "text",
    "integer": "a whole number",
    "number": "a number",
    "boolean": "true or false",
    "null": "empty",
}

_PATTERN_WORDS = {
    r"^[^\n]+$": "must be a single line",
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$": (
        "is not a valid name (lowercase letters, digits and '-', starting and ending with a letter or digit)"
    ),
    r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$": "is not a valid object name (lowercase letters, digits, '-' and '.')",
    r"^[a-z0-9]+(-[a-z0-9]+)*$": "is not kebab-case (lowercase words joined by single hyphens, e.g. web-ready)",
    r"^(?!/)(?!.*(^|/)\.\.(/|$))[^\x00-\x1f\\]+$": "is not a path inside the lab folder (relative, without ..)",
    r"\.ya?ml(\.j2)?$": "is not a .yaml, .yml, .yaml.j2 or .yml.j2 file",
    r"^[a-z0-9]+([._-][a-z0-9]+)*(:[0-9]+)?(/[a-z0-9]+([._-][a-z0-9]+)*)*:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$": (
        "is not an image reference with a tag, such as labctl.local/hello:1.0"
    ),
    r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?v[0-9]+((alpha|beta)[0-9]+)?$": "is not an apiVersion such as v1 or apps/v1",
    r"^[A-Z][A-Za-z0-9]*$": "is not a kind such as Deployment",
    r"^/[^\s]*$": "is not a request path (it starts with / and has no spaces)",
    r"^[a-zA-Z0-9]([-a-zA-Z0-9.]*[a-zA-Z0-9])?\.?$": "is not a DNS name such as orders or orders.shop.svc",
    r"^[a-zA-Z_:][a-zA-Z0-9_:]*$": "is not a Prometheus metric name such as http_requests_total",
    r"^https?://[^\s/]+(/[^\s]*)?$": "is not a URL such as http://orders/healthz",
}


def _type_of(value: Any) -> str:
    if value is None:
        return "empty"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "a whole number"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, list):
        return "a list"
    return "a mapping"


def _describe(error: jsonschema.ValidationError, doc: Any) -> str:
    """One error in a lab author's words: `checks[2].type: 'probe' is not one of: exists, absent, ...`."""
    where = _path(error.absolute_path)
    value = error.instance
    kind = error.validator
    if _unknown_field(error):
        allowed = error.validator_value if isinstance(error.validator_value, list) else []
        check_type = _at(doc, error.absolute_path).get("type")
        what = f"not a field of {_article(check_type)} check" + _suggest(value, allowed)
        return _field(join_path(where, str(value)), what)
    if kind == "additionalProperties":
        allowed = list(error.schema.get("properties", {}))
        extra = next(k for k in value if k not in allowed)
        return _field(join_path(where, extra), "unknown field" + _suggest(extra, allowed))
    if kind == "required":
        missing = next(k for k in error.validator_value if k not in value)
        # Conditional requirements (a check type's fields) explain themselves in their description.
        why = error.schema.get("description") if "then" in error.schema_path else None
        return _field(join_path(where, missing), "missing" + (f" ({why})" if why else ""))
    if kind == "type":
        return _wrong_type(where, value, [error.validator_value])
    if kind in ("oneOf", "anyOf") and error.context:
        # A value of the wrong type fails every branch; a value of a right type fails one branch for a
        # reason worth telling (port: 0 is an integer below the minimum).
        reasons = [e for e in error.context if e.validator != "type"]
        if len(reasons) == 1:
            return _describe(reasons[0], doc)
        if not reasons:
            return _wrong_type(where, value, [e.validator_value for e in error.context])
    if kind == "enum":
        quote = ""
        if isinstance(value, bool) and any(v in ("True", "False") for v in error.validator_value):
            quote = ' (quote it: "True")'
        return _field(
            where, f"{show(value, 40)} is not one of: {', '.join(str(v) for v in error.validator_value)}{quote}"
        )
    if kind == "const":
        return _field(where, f"{show(value, 40)} is not allowed here (wanted {show(error.validator_value)})")
    if kind == "pattern":
        words = _PATTERN_WORDS.get(error.validator_value, f"does not match {error.validator_value}")
        return _field(where, f"{show(value, 40)} {words}")
    if kind in ("minItems", "minLength"):
        if error.validator_value <= 1:
            return _field(where, "must not be empty")
        return _field(where, f"needs at least {error.validator_value} items")
    if kind == "maxLength":
        return _field(where, f"is longer than {error.validator_value} characters")
    if kind == "minimum":
        return _field(where, f"{show(value)} is too small (the minimum is {error.validator_value})")
    if kind == "exclusiveMinimum":
        return _field(where, f"{show(value)} is too small (it must be more than {error.validator_value})")
    if kind == "maximum":
        return _field(where, f"{show(value)} is too large (the maximum is {error.validator_value})")
    if kind == "uniqueItems":
        return _field(where, "lists an item more than once")
    description = error.schema.get("description") if isinstance(error.schema, Mapping) else None
    about = f" ({description.rstrip('.')})" if isinstance(description, str) else ""
    return _field(where, f"{show(value, 40)} is not valid here{about}")


def _wrong_type(where: str, value: Any, wanted: list[Any]) -> str:
    names: list[str] = []
    for w in wanted:
        for t in w if isinstance(w, list) else [w]:
            if _TYPE_WORDS.get(t, t) not in names:
                names.append(_TYPE_WORDS.get(t, t))
    words = " or ".join(names)
    if not where:
        return f"the file holds {_type_of(value)} (wanted a mapping of the lab's fields: format_version, title, ...)"
    if value is None:
        return _field(where, f"is empty (wanted {words})")
    return _field(where, f"{show(value, 40)} is {_type_of(value)} (wanted {words})")


def _suggest(word: Any, allowed: list[str]) -> str:
    close = difflib.get_close_matches(str(word), allowed, n=1)
    if close:
        return f" (did you mean '{close[0]}'?)"
    return f" (allowed: {', '.join(allowed)})"


def _article(check_type: Any) -> str:
    text = str(check_type)
    return f"an '{text}'" if text[:1] in "aeiou" else f"a '{text}'"


def _at(doc: Any, path: Iterable[Any]) -> Any:
    for p in path:
        doc = doc[p]
    return doc


# -- what the schema cannot say -------------------------------------------------------------------------


def _check_meaning(doc: dict, folder: Path, slug: str, shown: str) -> None:
    namespace = doc.get("namespace") or f"lab-{slug}"
    if len(namespace) > 63:
        raise _error(shown, f"namespace: lab-{slug} is longer than 63 characters (set a shorter namespace)")
    if "namespace" in doc.get("values", {}):
        raise _error(shown, "values.namespace: reserved (templates get the lab namespace as `namespace`)")
    for i, image in enumerate(doc.get("images", [])):
        if image["name"].endswith(":latest"):
            raise _error(shown, f"images[{i}].name: {image['name']} uses the tag 'latest' (pin a version)")
        if "toolbox" in image:
            if "context" in image or "dockerfile" in image:
                raise _error(shown, f"images[{i}]: an image is built from a context (a Dockerfile) or made of a "
                                    "toolbox binary, not both")
            continue
        if "context" not in image:
            raise _error(shown, f"images[{i}].context: missing (an image has a context folder with a Dockerfile, "
                                "or names a toolbox binary)")
        _require(folder, image["context"], f"images[{i}].context", shown, folder=True)
        dockerfile = image.get("dockerfile", "Dockerfile")
        _require(folder / image["context"], dockerfile, f"images[{i}].dockerfile", shown, folder=False)
    for field in ("deploy", "solution"):
        for i, rel in enumerate(doc[field]):
            _require(folder, rel, f"{field}[{i}]", shown, folder=False)
    ids: dict[str, int] = {}
    for i, check in enumerate(doc["checks"]):
        where = f"checks[{i}]"
        if check["id"] in ids:
            first = ids[check["id"]]
            what = f"'{check['id']}' is already the id of checks[{first}] (ids must be unique)"
            raise _error(shown, f"{where}.id: {what}")
        for j, other in enumerate(check.get("after") or []):
            if other not in ids or other == check["id"]:
                later = " (it must come earlier in the list)" if any(c["id"] == other for c in doc["checks"]) else ""
                raise _error(shown, f"{where}.after[{j}]: {show(other, 40)} is not the id of an earlier check{later}")
        ids[check["id"]] = i
        _check_check(check, where, shown)
    for i, check_id in enumerate(doc.get("solve_wait") or []):
        if check_id not in ids:
            raise _error(shown, f"solve_wait[{i}]: {show(check_id, 40)} is not the id of a check in this lab")


def _require(base: Path, rel: str, where: str, shown: str, *, folder: bool) -> None:
    target = base / rel
    try:
        ok = target.is_dir() if folder else target.is_file()
    except (OSError, ValueError):
        ok = False
    if not ok:
        raise _error(shown, f"{where}: {rel} is not a {'folder' if folder else 'file'} in {_shown(base)}")


def _check_check(check: dict, where: str, shown: str) -> None:
    refs = [(f"{where}.target", check["target"])] if "target" in check else []
    if check["type"] == "count":
        refs.append((where, check))
        if not any(k in check for k in ("equals", "min", "max")):
            raise _error(shown, f"{where}: a 'count' check needs equals, min or max")
        if "equals" in check and ("min" in check or "max" in check):
            raise _error(shown, f"{where}: a 'count' check has equals, or min and max, not both")
        if check.get("min", 0) > check.get("max", float("inf")):
            raise _error(shown, f"{where}.min: {check['min']} is more than max ({check['max']})")
    for at, ref in refs:
        _check_ref(at, ref, shown)
    expressions = []
    if check["type"] == "expression":
        expressions.append((f"{where}.expr", check["expr"]))
    if check["type"] == "http":
        expressions += _check_expect(f"{where}.expect", "http", check.get("expect"), shown)
    if check["type"] == "probe":
        expressions += _check_expect(f"{where}.expect", action_kind(check["probe"]), check.get("expect"), shown)
    for n, step in enumerate(check.get("steps") or []):
        expressions += _check_step(step, f"{where}.steps[{n}]", shown)
    for at, expr in expressions:
        with warnings.catch_warnings():
            # jmespath warns (PendingDeprecationWarning) about `literal` strings; a lab should not rely on them
            warnings.simplefilter("error")
            try:
                jmespath.compile(expr)
            except jmespath.exceptions.JMESPathError as e:
                raise _error(shown, f"{at}: {show(expr, 60)} is not a JMESPath expression ({_flat(e)})") from e
            except PendingDeprecationWarning as e:
                raise _error(shown, f"{at}: {show(expr, 60)} uses a deprecated JMESPath literal (write 'text' with "
                                    "single quotes instead of `text`)") from e


def _check_ref(at: str, ref: dict, shown: str) -> None:
    """An object reference names an apiVersion that serves its kind, and no namespace when cluster-scoped."""
    versions = KNOWN_API_VERSIONS.get(ref["kind"])
    if versions is not None and ref["apiVersion"] not in versions:
        raise _error(shown, f"{at}.apiVersion: {ref['apiVersion']} does not serve {ref['kind']} "
                            f"(wanted {' or '.join(sorted(versions))})")
    if ref.get("scope") == "Cluster" and "namespace" in ref:
        raise _error(shown, f"{at}.namespace: a cluster-scoped object has no namespace")


# What each request may expect: an http answer, a DNS lookup, a TCP connection, a gRPC health answer.
_EXPECT_KEYS = {
    "http": ("status", "json", "contains", "max_ms", "metric"),
    "dns": ("resolves", "min_addresses"),
    "tcp": ("connects",),
    "grpc_health": ("status",),
}
_RESTARTABLE = ("Deployment", "StatefulSet", "DaemonSet")


def _check_expect(where: str, action: str, expect: dict | None, shown: str) -> list[tuple[str, str]]:
    """Refuse expectations that do not fit the request; the JMESPath expressions to compile."""
    expect = expect or {}
    for key in expect:
        if key not in _EXPECT_KEYS[action]:
            allowed = ", ".join(_EXPECT_KEYS[action])
            raise _error(shown, f"{where}.{key}: a {action.replace('_', ' ')} request cannot expect {key} "
                                f"(allowed: {allowed})")
    status = expect.get("status")
    if status is not None and isinstance(status, str) != (action == "grpc_health"):
        wanted = "SERVING, NOT_SERVING or SERVICE_UNKNOWN" if action == "grpc_health" else "an HTTP status number"
        raise _error(shown, f"{where}.status: {show(status, 40)} is not {wanted}")
    metric = expect.get("metric") or {}
    if "equals" in metric and ("min" in metric or "max" in metric):
        raise _error(shown, f"{where}.metric: equals, or min and max, not both")
    return [(f"{where}.json", key) for key in expect.get("json") or {}]


def _check_step(step: dict, where: str, shown: str) -> list[tuple[str, str]]:
    kind = step_kind(step)
    for field, allowed in (("expect", ("http", "probe")), ("until", ("http", "probe")), ("pod", ("probe",))):
        if field in step and kind not in allowed:
            raise _error(shown, f"{where}.{field}: a {kind} step has no {field} (only {' and '.join(allowed)} steps)")
    if kind == "sleep" and "timeout_seconds" in step:
        raise _error(shown, f"{where}.timeout_seconds: a sleep step lasts its own seconds")
    refs = []
    if kind == "patch":
        refs.append((f"{where}.patch.target", step["patch"]["target"]))
    if kind == "restart":
        refs.append((f"{where}.restart", step["restart"]))
        if step["restart"]["kind"] not in _RESTARTABLE:
            raise _error(shown, f"{where}.restart.kind: {step['restart']['kind']} cannot be restarted "
                                f"(wanted {', '.join(_RESTARTABLE)})")
    for at, ref in refs:
        _check_ref(at, ref, shown)
    if kind in ("http", "probe"):
        return _check_expect(f"{where}.expect", "http" if kind == "http" else action_kind(step["probe"]),
                             step.get("expect"), shown)
    return []


# -- building -------------------------------------------------------------------------------------------


def _build(doc: dict, folder: Path, number: int, slug: str) -> Lab:
    base = folder.absolute()
    checks = [
        Check(
            id=c["id"],
            title=c["title"],
            type=c["type"],
            hints=list(c["hints"]),
            needs_running=needs_running(c),
            spec=c,
        )
        for c in doc["checks"]
    ]
    return Lab(
        number=number,
        slug=slug,
        path=base,
        title=doc["title"],
        difficulty=doc["difficulty"],
        minutes=int(doc["minutes"]),
        summary=doc["summary"],
        objectives=list(doc["objectives"]),
        prerequisites=list(doc.get("prerequisites", [])),
        namespace=doc.get("namespace") or f"lab-{slug}",
        pod_security=doc.get("pod_security", "restricted"),
        images=[
            Image(name=i["name"], toolbox=i["toolbox"]) if "toolbox" in i else Image(
                name=i["name"],
                context=base / i["context"],
                dockerfile=base / i["context"] / i.get("dockerfile", "Dockerfile"),
            )
            for i in doc.get("images", [])
        ],
        values=dict(doc.get("values", {})),
        deploy=[base / p for p in doc["deploy"]],
        solution=[base / p for p in doc["solution"]],
        checks=checks,
        interview=[InterviewQuestion(q["question"], q["answer"]) for q in doc.get("interview", [])],
        raw=doc,
        pod_security_reason=doc.get("pod_security_reason"),
    )


# -- messages -------------------------------------------------------------------------------------------


def _shown(file: Path) -> str:
    """The file as the author knows it: relative to the working directory when it is inside it."""
    try:
        return str(file.absolute().relative_to(Path.cwd()))
    except (ValueError, OSError):
        return str(file)


def _path(parts: Iterable[Any]) -> str:
    where = ""
    for part in parts:
        where = join_path(where, part)
    return where


def _field(where: str, what: str) -> str:
    return f"{where}: {what}" if where else what


def _flat(text: Any) -> str:
    return " ".join(str(text).split())


def _error(shown: str, what: str) -> LabDefinitionError:
    return LabDefinitionError(f"{shown}: {what}", hint=FORMAT_HINT)
