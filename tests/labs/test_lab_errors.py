"""What a lab author reads when lab.yaml is wrong: one line naming the file, the field and what is allowed."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from labctl.checks import CHECK_TYPES
from labctl.errors import LabDefinitionError
from labctl.labs import _PATTERN_WORDS, load_lab, schema

pytestmark = pytest.mark.unit

Mutation = Callable[[dict[str, Any]], None]


def _check(doc: dict[str, Any], check_id: str) -> dict[str, Any]:
    return next(c for c in doc["checks"] if c["id"] == check_id)


def _index(doc: dict[str, Any], check_id: str) -> int:
    return next(i for i, c in enumerate(doc["checks"]) if c["id"] == check_id)


def _add(check: dict[str, Any]) -> Mutation:
    def mutate(doc: dict[str, Any]) -> None:
        doc["checks"].append({"id": "extra", "title": "Extra", "hints": ["h"], **check})

    return mutate


DEPLOYMENT = {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"}

CASES: list[tuple[str, Mutation, str]] = [
    ("unknown check type", lambda d: _check(d, "web-ready").update(type="proble"),
     "checks[5].type: 'proble' is not one of: exists, absent, matches, expression, condition, ready, endpoints, "
     "count, probes, resources, security, image-pinned, http, probe, scenario"),
    ("probe with two actions", _add({"type": "probe", "probe": {"dns": "web", "tcp": {"host": "web", "port": 80}}}),
     "checks[14].probe: "),
    ("probe expecting what its request cannot give", _add({"type": "probe", "probe": {"dns": "web"},
                                                           "expect": {"connects": True}}),
     "checks[14].expect.connects: a dns request cannot expect connects (allowed: resolves, min_addresses)"),
    ("grpc health expecting an HTTP status", _add({"type": "probe", "probe": {"grpc_health": {"host": "w", "port": 9}},
                                                   "expect": {"status": 200}}),
     "checks[14].expect.status: 200 is not SERVING, NOT_SERVING or SERVICE_UNKNOWN"),
    ("after a later check", lambda d: _check(d, "web-exists").update(after=["web-ready"]),
     "checks[0].after[0]: 'web-ready' is not the id of an earlier check (it must come earlier in the list)"),
    ("after an unknown check", lambda d: _check(d, "web-ready").update(after=["nope"]),
     "checks[5].after[0]: 'nope' is not the id of an earlier check"),
    ("scenario step with two actions", _add({"type": "scenario", "steps": [{"sleep": 1, "restart": DEPLOYMENT}]}),
     "checks[14].steps[0]: "),
    ("restart of a Service", _add({"type": "scenario", "steps": [
        {"restart": {"apiVersion": "v1", "kind": "Service", "name": "web"}}]}),
     "checks[14].steps[0].restart.kind: Service cannot be restarted (wanted Deployment, StatefulSet, DaemonSet)"),
    ("expect on a patch step", _add({"type": "scenario", "steps": [
        {"patch": {"target": {"apiVersion": "v1", "kind": "ConfigMap", "name": "c"}, "merge": {"data": {"A": "1"}}},
         "expect": {"status": 200}}]}),
     "checks[14].steps[0].expect: a patch step has no expect (only http and probe steps)"),
    ("bad JMESPath in a scenario step", _add({"type": "scenario", "steps": [
        {"http": {"service": "web", "port": 80, "path": "/"}, "expect": {"json": {"a[": 1}}}]}),
     "checks[14].steps[0].expect.json: 'a[' is not a JMESPath expression"),
    ("kind a ready check cannot read", lambda d: _check(d, "web-ready")["target"].update(kind="CronJob"),
     "checks[5].target.kind: 'CronJob' is not one of: Deployment, StatefulSet, DaemonSet, Job"),
    ("workload kind", lambda d: _check(d, "web-probes").update(target={**DEPLOYMENT, "kind": "Service"}),
     "checks[8].target.kind: 'Service' is not one of: Deployment, StatefulSet, DaemonSet, Job, CronJob, Pod"),
    ("endpoints of a Deployment", lambda d: _check(d, "web-endpoints").update(target=DEPLOYMENT),
     "checks[6].target.apiVersion: 'apps/v1' is not allowed here (wanted 'v1')"),
    ("type-specific field missing", lambda d: _check(d, "web-image").pop("subset"),
     "checks[2].subset: missing (a 'matches' check has target and subset)"),
    ("target missing", lambda d: _check(d, "web-exists").pop("target"),
     "checks[0].target: missing (an 'exists' check has target)"),
    ("http fields missing", _add({"type": "http", "service": "web", "port": 80}),
     "checks[14].path: missing (an 'http' check has service, port and path, optionally method, expect, "
     "timeout_seconds and namespace)"),
    ("field of another type", lambda d: _check(d, "web-exists").update(subset={}),
     "checks[0].subset: not a field of an 'exists' check (allowed: id, title, type, hints, needs, after, target)"),
    ("misspelt field", lambda d: _check(d, "web-exists").update(hint=["x"]),
     "checks[0].hint: not a field of an 'exists' check (did you mean 'hints'?)"),
    ("misspelt field of a check with an unknown type", lambda d: _check(d, "web-exists").update(type="nope", targt={}),
     "checks[0].targt: unknown field (did you mean 'target'?)"),
    ("misspelt top-level field", lambda d: d.update(titel="x"),
     "titel: unknown field (did you mean 'title'?)"),
    ("unknown top-level field", lambda d: d.update(zzz=1),
     "zzz: unknown field (allowed: format_version, title, difficulty, minutes, summary, objectives, prerequisites, "
     "namespace, pod_security, pod_security_reason, images, requires, values, deploy, solution, solve_wait, checks, "
     "interview)"),
    ("unknown target field", lambda d: _check(d, "web-exists")["target"].update(nmae="x"),
     "checks[0].target.nmae: unknown field (did you mean 'name'?)"),
    ("required top-level field", lambda d: d.pop("title"), "title: missing"),
    ("difficulty", lambda d: d.update(difficulty="Easy"),
     "difficulty: 'Easy' is not one of: Beginner, Intermediate, Advanced"),
    ("format version", lambda d: d.update(format_version=2), "format_version: 2 is not allowed here (wanted 1)"),
    ("text for a number", lambda d: d.update(minutes="20"), "minutes: '20' is text (wanted a whole number)"),
    ("empty value", lambda d: d.update(minutes=None), "minutes: is empty (wanted a whole number)"),
    ("boolean for a number", lambda d: d.update(minutes=True), "minutes: true is a boolean (wanted a whole number)"),
    ("zero minutes", lambda d: d.update(minutes=0), "minutes: 0 is too small (the minimum is 1)"),
    ("too many minutes", lambda d: d.update(minutes=601), "minutes: 601 is too large (the maximum is 600)"),
    ("string for a list", lambda d: d.update(checks="abc"), "checks: 'abc' is text (wanted a list)"),
    ("string for a list of hints", lambda d: _check(d, "web-exists").update(hints="Create it."),
     "checks[0].hints: 'Create it.' is text (wanted a list)"),
    ("mapping for a check", lambda d: d["checks"].insert(0, "exists"),
     "checks[0]: 'exists' is text (wanted a mapping)"),
    ("no checks", lambda d: d.update(checks=[]), "checks: must not be empty"),
    ("no hints", lambda d: _check(d, "web-exists").update(hints=[]), "checks[0].hints: must not be empty"),
    ("empty hint", lambda d: _check(d, "web-exists").update(hints=[""]), "checks[0].hints[0]: must not be empty"),
    ("id not kebab-case", lambda d: _check(d, "web-exists").update(id="Web_Exists"),
     "checks[0].id: 'Web_Exists' is not kebab-case (lowercase words joined by single hyphens, e.g. web-ready)"),
    ("multi-line summary", lambda d: d.update(summary="one\ntwo"), "summary: 'one\\ntwo' must be a single line"),
    ("namespace", lambda d: d.update(namespace="Lab_X"),
     "namespace: 'Lab_X' is not a valid name (lowercase letters, digits and '-', starting and ending with a "
     "letter or digit)"),
    ("object name", lambda d: _check(d, "web-exists")["target"].update(name="Web"),
     "checks[0].target.name: 'Web' is not a valid object name (lowercase letters, digits, '-' and '.')"),
    ("apiVersion", lambda d: _check(d, "web-exists")["target"].update(apiVersion="apps"),
     "checks[0].target.apiVersion: 'apps' is not an apiVersion such as v1 or apps/v1"),
    ("kind", lambda d: _check(d, "web-exists")["target"].update(kind="deployment"),
     "checks[0].target.kind: 'deployment' is not a kind such as Deployment"),
    ("path outside the lab", lambda d: d["deploy"].append("../other/app.yaml"),
     "deploy[1]: '../other/app.yaml' is not a path inside the lab folder (relative, without ..)"),
    ("absolute path", lambda d: d["solution"].append("/etc/passwd.yaml"),
     "solution[1]: '/etc/passwd.yaml' is not a path inside the lab folder (relative, without ..)"),
    ("not a manifest", lambda d: d["solution"].append("solution/notes.txt"),
     "solution[1]: 'solution/notes.txt' is not a .yaml, .yml, .yaml.j2 or .yml.j2 file"),
    ("image without a tag", lambda d: d["images"][0].update(name="demo"),
     "images[0].name: 'demo' is not an image reference with a tag, such as labctl.local/hello:1.0"),
    ("security requirement", _add({"type": "security", "target": DEPLOYMENT, "require": ["root"]}),
     "checks[14].require[0]: 'root' is not one of: runAsNonRoot, noPrivilegeEscalation, readOnlyRootFilesystem, "
     "dropAllCapabilities, seccompRuntimeDefault"),
    ("repeated requirement", _add({"type": "security", "target": DEPLOYMENT, "require": ["runAsNonRoot"] * 2}),
     "checks[14].require: lists an item more than once"),
    ("condition status unquoted", _add({"type": "condition", "target": DEPLOYMENT, "condition": "Ready",
                                        "status": True}),
     "checks[14].status: true is not one of: True, False, Unknown (quote it: \"True\")"),
    ("http port zero", _add({"type": "http", "service": "web", "port": 0, "path": "/"}),
     "checks[14].port: 0 is too small (the minimum is 1)"),
    ("http port of the wrong type", _add({"type": "http", "service": "web", "port": True, "path": "/"}),
     "checks[14].port: true is a boolean (wanted a whole number or text)"),
    ("http path", _add({"type": "http", "service": "web", "port": 80, "path": "health"}),
     "checks[14].path: 'health' is not a request path (it starts with / and has no spaces)"),
    ("http method", _add({"type": "http", "service": "web", "port": 80, "path": "/", "method": "get"}),
     "checks[14].method: 'get' is not one of: GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
    ("http expectation", _add({"type": "http", "service": "web", "port": 80, "path": "/", "expect": {"code": 200}}),
     "checks[14].expect.code: unknown field (allowed: status, json, contains, max_ms, metric, resolves, min_addresses, "
     "connects)"),
    ("count equals a string", _add({"type": "count", "apiVersion": "v1", "kind": "Pod", "equals": "2"}),
     "checks[14].equals: '2' is text (wanted a whole number)"),
    ("needs", lambda d: _check(d, "web-exists").update(needs="pods"),
     "checks[0].needs: 'pods' is not one of: running"),
    ("pod security without a reason", lambda d: d.update(pod_security="baseline"),
     "pod_security_reason: missing (a lab that weakens pod_security says why)"),
    ("interview entry", lambda d: d["interview"].append({"question": "Why?"}),
     "interview[1].answer: missing"),
    # Semantic rules the schema cannot express.
    ("duplicate check id", lambda d: _check(d, "old-gone").update(id="web-exists"),
     "checks[1].id: 'web-exists' is already the id of checks[0] (ids must be unique)"),
    ("deploy file missing", lambda d: d["deploy"].append("templates/missing.yaml.j2"),
     "deploy[1]: templates/missing.yaml.j2 is not a file in "),
    ("solution file missing", lambda d: d["solution"].insert(0, "solution/nope.yaml"),
     "solution[0]: solution/nope.yaml is not a file in "),
    ("a folder where a file belongs", lambda d: d["solution"].insert(0, "solution.yaml"),
     "solution[0]: solution.yaml is not a file in "),
    ("image context missing", lambda d: d["images"][0].update(context="src"),
     "images[0].context: src is not a folder in "),
    ("context without a Dockerfile", lambda d: d["images"][0].update(context="templates"),
     "images[0].dockerfile: Dockerfile is not a file in "),
    ("Dockerfile missing", lambda d: d["images"][0].update(dockerfile="Dockerfile.prod"),
     "images[0].dockerfile: Dockerfile.prod is not a file in "),
    ("http timeout", _add({"type": "http", "service": "web", "port": 80, "path": "/", "timeout_seconds": 0}),
     "checks[14].timeout_seconds: 0 is too small (it must be more than 0)"),
    ("latest image", lambda d: d["images"][0].update(name="labctl.local/demo:latest"),
     "images[0].name: labctl.local/demo:latest uses the tag 'latest' (pin a version)"),
    ("reserved value", lambda d: d["values"].update(namespace="x"),
     "values.namespace: reserved (templates get the lab namespace as `namespace`)"),
    ("count without bounds", _add({"type": "count", "apiVersion": "v1", "kind": "Pod"}),
     "checks[14]: a 'count' check needs equals, min or max"),
    ("count with equals and min", _add({"type": "count", "apiVersion": "v1", "kind": "Pod", "equals": 1, "min": 1}),
     "checks[14]: a 'count' check has equals, or min and max, not both"),
    ("count min above max", _add({"type": "count", "apiVersion": "v1", "kind": "Pod", "min": 3, "max": 2}),
     "checks[14].min: 3 is more than max (2)"),
    ("bad JMESPath", _add({"type": "expression", "target": DEPLOYMENT, "expr": "spec.["}),
     "checks[14].expr: 'spec.[' is not a JMESPath expression (Invalid jmespath expression: Incomplete expression"),
    ("bad JMESPath in http", _add({"type": "http", "service": "web", "port": 80, "path": "/",
                                   "expect": {"json": {"a[": 1}}}),
     "checks[14].expect.json: 'a[' is not a JMESPath expression"),
    ("apiVersion that does not serve the kind", lambda d: _check(d, "web-exists")["target"].update(apiVersion="v1"),
     "checks[0].target.apiVersion: v1 does not serve Deployment (wanted apps/v1)"),
    ("count apiVersion", _add({"type": "count", "apiVersion": "apps/v1", "kind": "Pod", "min": 1}),
     "checks[14].apiVersion: apps/v1 does not serve Pod (wanted v1)"),
    ("cluster scope with a namespace", _add({"type": "exists", "target": {
        "apiVersion": "example.com/v1", "kind": "Widget", "name": "w", "scope": "Cluster", "namespace": "x"}}),
     "checks[14].target.namespace: a cluster-scoped object has no namespace"),
]


@pytest.mark.parametrize(("mutate", "message"), [(m, msg) for _, m, msg in CASES], ids=[c[0] for c in CASES])
def test_error_message(
    make_lab: Callable[..., Path], valid_doc: Callable[[], dict], mutate: Mutation, message: str
) -> None:
    doc = valid_doc()
    mutate(doc)
    folder = make_lab(doc)
    with pytest.raises(LabDefinitionError) as caught:
        load_lab(folder)
    text = str(caught.value)
    assert "\n" not in text
    assert text.startswith(f"{folder / 'lab.yaml'}: "), text
    assert text[len(f"{folder / 'lab.yaml'}: "):].startswith(message), text
    assert caught.value.hint == "the lab format is described in labs/FORMAT.md"


def test_the_fixture_itself_is_valid(make_lab: Callable[..., Path]) -> None:
    assert load_lab(make_lab()).title == "Demo"


def test_a_long_slug_needs_a_shorter_namespace(make_lab: Callable[..., Path], valid_doc: Callable[[], dict]) -> None:
    name = "04-" + "-".join(["word"] * 13)  # lab-<slug> is 68 characters
    with pytest.raises(LabDefinitionError, match="is longer than 63 characters"):
        load_lab(make_lab(name=name))
    doc = valid_doc()
    doc["namespace"] = "lab-short"
    assert load_lab(make_lab(doc, name=name)).namespace == "lab-short"


def test_the_schema_is_valid_draft_2020_12() -> None:
    jsonschema.Draft202012Validator.check_schema(schema())
    assert schema()["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_the_schema_file_is_the_published_one() -> None:
    published = Path(__file__).parents[2] / "cli/labctl/schema/lab.schema.json"
    assert json.loads(published.read_text()) == schema()


def test_every_check_type_has_its_own_rules() -> None:
    check = schema()["$defs"]["check"]
    assert tuple(check["properties"]["type"]["enum"]) == CHECK_TYPES
    branches = [b["if"]["properties"]["type"]["const"] for b in check["allOf"]]
    assert branches == list(CHECK_TYPES)
    for branch in check["allOf"]:
        allowed = set(branch["then"]["propertyNames"]["enum"])
        assert allowed <= set(check["properties"]), branch["if"]
        assert set(branch["then"]["required"]) <= allowed


def test_every_pattern_in_the_schema_is_explained_in_words() -> None:
    patterns: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "pattern":
                    patterns.add(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema())
    assert patterns and patterns <= set(_PATTERN_WORDS)
