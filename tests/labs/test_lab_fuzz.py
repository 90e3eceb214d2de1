"""Whatever lab.yaml holds, load_lab returns a Lab or raises LabDefinitionError: never another exception."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from labctl.errors import LabDefinitionError
from labctl.labs import Lab, load_lab

pytestmark = pytest.mark.unit

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Documents that get as far as schema validation cost tens of milliseconds each.
FUZZ_DEEP = settings(FUZZ, max_examples=100)

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=12)
)
# Values a lab author might plausibly write, so mutations get past the first checks and reach the deeper ones.
plausible = st.sampled_from(
    [
        "", "web", "Deployment", "Service", "CronJob", "Pod", "v1", "apps/v1", "batch/v1", "latest", "True",
        "running", "exists", "ready", "http", "count", "security", "matches", "expression", "../x.yaml",
        "/abs.yaml", "solution/app.yaml", "templates/app.yaml.j2", "app", "spec.[", "spec.replicas",
        "a\nb", "a\x00b", "é", "x" * 300, 0, 1, -1, 65536, 1.5, True, [], {}, ["ALL"], {"a": None},
        "labctl.local/demo:latest", "Cluster", "baseline", "equals", "min", "max", "scope", "namespace",
    ]
)
values = st.recursive(
    scalars | plausible,
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(
        st.text(max_size=8) | plausible.filter(lambda v: isinstance(v, str)) | st.integers() | st.booleans(),
        inner,
        max_size=4,
    ),
    max_leaves=12,
)


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    found = [prefix]
    if isinstance(node, dict):
        for key, child in node.items():
            found += _paths(child, (*prefix, key))
    elif isinstance(node, list):
        for i, child in enumerate(node):
            found += _paths(child, (*prefix, i))
    return found


def _mutate(doc: dict[str, Any], data: st.DataObject) -> dict[str, Any]:
    for _ in range(data.draw(st.integers(min_value=1, max_value=3), label="mutations")):
        paths = _paths(doc)
        path = data.draw(st.sampled_from(paths), label="path")
        action = data.draw(st.sampled_from(["replace", "delete", "add"]), label="action")
        if not path:
            continue
        parent = doc
        for part in path[:-1]:
            parent = parent[part]
        last = path[-1]
        if action == "replace":
            parent[last] = data.draw(values, label="value")
        elif action == "delete":
            del parent[last]
        else:
            target = parent[last]
            if isinstance(target, dict):
                key = data.draw(plausible.filter(lambda v: isinstance(v, str)) | st.text(max_size=8), label="key")
                target[key] = data.draw(values, label="value")
            elif isinstance(target, list):
                target.append(data.draw(values, label="value"))
            else:
                parent[last] = data.draw(values, label="value")
    return doc


def _load(folder: Path) -> None:
    try:
        assert isinstance(load_lab(folder), Lab)
    except LabDefinitionError as e:
        text = str(e)
        assert "\n" not in text
        assert text.startswith(str(folder / "lab.yaml")), text


@pytest.fixture(scope="module")
def fuzz_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@FUZZ_DEEP
@given(data=st.data())
def test_mutations_of_a_valid_lab(
    data: st.DataObject, fuzz_root: Path, write_lab: Callable[..., Path], valid_doc: Callable[[], dict]
) -> None:
    doc = _mutate(valid_doc(), data)
    _load(write_lab(fuzz_root, doc))


@FUZZ
@given(doc=values)
def test_random_documents(doc: Any, fuzz_root: Path, write_lab: Callable[..., Path]) -> None:
    _load(write_lab(fuzz_root, doc))


YAML_ALPHABET = st.sampled_from(list(":-[]{},#&*!|>'\"%@`?\n\t ab01.=~<\\") + ["!!binary ", "!!set ", "&a ", "*a"])


@FUZZ
@given(text=st.lists(YAML_ALPHABET, max_size=80).map("".join) | st.text(max_size=200))
def test_random_text(text: str, fuzz_root: Path, write_lab: Callable[..., Path]) -> None:
    _load(write_lab(fuzz_root, text=text))


@FUZZ_DEEP
@given(data=st.data())
def test_spliced_text_of_a_valid_lab(
    data: st.DataObject, fuzz_root: Path, write_lab: Callable[..., Path], valid_doc: Callable[[], dict]
) -> None:
    text = yaml.safe_dump(valid_doc(), sort_keys=False)
    for _ in range(data.draw(st.integers(min_value=1, max_value=4), label="splices")):
        at = data.draw(st.integers(min_value=0, max_value=len(text)), label="at")
        cut = data.draw(st.integers(min_value=0, max_value=20), label="cut")
        insert = data.draw(st.lists(YAML_ALPHABET, max_size=6).map("".join), label="insert")
        text = text[:at] + insert + text[at + cut :]
    _load(write_lab(fuzz_root, text=text))


@FUZZ
@given(raw=st.binary(max_size=200))
def test_random_bytes(raw: bytes, fuzz_root: Path, write_lab: Callable[..., Path]) -> None:
    folder = write_lab(fuzz_root, text="")
    (folder / "lab.yaml").write_bytes(raw)
    _load(folder)
