"""load_lab and all_labs on labs written to a temporary folder."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from labctl.errors import EXIT_USAGE, LabDefinitionError
from labctl.labs import SCHEMA_COMMENT, Check, Image, InterviewQuestion, all_labs, load_lab

pytestmark = pytest.mark.unit


def test_a_valid_lab_loads_with_its_defaults(make_lab: Callable[..., Path]) -> None:
    folder = make_lab()
    lab = load_lab(folder)
    assert (lab.number, lab.slug, lab.name) == (3, "demo", "03-demo")
    assert lab.path == folder.absolute()
    assert (lab.title, lab.difficulty, lab.minutes) == ("Demo", "Beginner", 20)
    assert lab.namespace == "lab-demo"
    assert lab.pod_security == "restricted" and lab.pod_security_reason is None
    assert lab.prerequisites == []
    app = folder.absolute() / "app"
    assert lab.images == [Image("labctl.local/demo:1.0", app, app / "Dockerfile")]
    assert lab.deploy == [folder.absolute() / "templates/app.yaml.j2"]
    assert lab.solution == [folder.absolute() / "solution/app.yaml"]
    assert all(p.is_file() for p in lab.deploy + lab.solution)
    assert lab.interview == [InterviewQuestion("Why?", "Because.")]
    assert lab.template_values() == {"replicas": 1, "namespace": "lab-demo"}
    assert lab.raw["format_version"] == 1


def test_checks_keep_their_whole_mapping(make_lab: Callable[..., Path]) -> None:
    lab = load_lab(make_lab())
    by_id = {c.id: c for c in lab.checks}
    assert [c.id for c in lab.checks][:3] == ["web-exists", "old-gone", "web-image"]
    assert by_id["web-exists"] == Check(
        id="web-exists",
        title="Deployment web exists",
        type="exists",
        hints=["Create it."],
        needs_running=False,
        spec={
            "id": "web-exists",
            "title": "Deployment web exists",
            "type": "exists",
            "target": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
            "hints": ["Create it."],
        },
    )
    assert by_id["web-answers"].needs_running  # http implies it
    assert by_id["web-behaves"].needs_running  # needs: running
    assert not by_id["web-ready"].needs_running


def test_optional_fields_when_given(make_lab: Callable[..., Path], valid_doc: Callable[[], dict]) -> None:
    doc = valid_doc()
    doc.update(namespace="shop", pod_security="privileged", pod_security_reason="runs a node agent")
    del doc["interview"], doc["images"], doc["values"], doc["prerequisites"]
    lab = load_lab(make_lab(doc))
    assert lab.namespace == "shop"
    assert (lab.pod_security, lab.pod_security_reason) == ("privileged", "runs a node agent")
    assert (lab.interview, lab.images, lab.values, lab.prerequisites) == ([], [], {}, [])


def test_the_lab_yaml_file_itself_can_be_named(make_lab: Callable[..., Path]) -> None:
    folder = make_lab()
    assert load_lab(folder / "lab.yaml").path == folder.absolute()


def test_yaml_anchors_and_multi_line_hints_work(make_lab: Callable[..., Path]) -> None:
    text = f"""{SCHEMA_COMMENT}
format_version: 1
title: Demo
difficulty: Advanced
minutes: 30
summary: Anchors.
objectives: [x]
deploy: []
solution: [solution/app.yaml]
checks:
  - id: a
    title: A
    type: exists
    target: &web {{apiVersion: apps/v1, kind: Deployment, name: web}}
    hints:
      - |
        line one
        line two
  - id: b
    title: B
    type: ready
    target: *web
    hints: [h]
"""
    lab = load_lab(make_lab(text=text))
    assert lab.checks[1].spec["target"]["name"] == "web"
    assert lab.checks[0].hints == ["line one\nline two\n"]


def test_all_labs_in_study_order_ignoring_other_entries(
    lab_root: Path, make_lab: Callable[..., Path], valid_doc: Callable[[], dict]
) -> None:
    make_lab(name="11-control-loops")
    make_lab(name="02-services")
    make_lab(name="10-gitops")
    (lab_root / "FORMAT.md").write_text("# format\n")
    (lab_root / "notes").mkdir()
    (lab_root / "12-unfinished").mkdir()  # no lab.yaml yet
    (lab_root / "13-README.md").write_text("not a lab\n")
    labs = all_labs(lab_root)
    assert [lab.name for lab in labs] == ["02-services", "10-gitops", "11-control-loops"]


def test_all_labs_refuses_two_labs_with_one_number(lab_root: Path, make_lab: Callable[..., Path]) -> None:
    make_lab(name="04-one")
    make_lab(name="04-two")
    with pytest.raises(LabDefinitionError, match="04-one and 04-two share a number or a name"):
        all_labs(lab_root)


def test_all_labs_without_a_labs_folder(tmp_path: Path) -> None:
    with pytest.raises(LabDefinitionError, match="no labs folder at"):
        all_labs(tmp_path / "missing")


def test_all_labs_defaults_to_the_shipped_labs() -> None:
    from labctl import paths

    assert [lab.path for lab in all_labs()] == [lab.path for lab in all_labs(paths.labs_dir())]


def _error(folder: Path) -> LabDefinitionError:
    with pytest.raises(LabDefinitionError) as caught:
        load_lab(folder)
    error = caught.value
    assert "\n" not in str(error)
    assert error.exit_code == EXIT_USAGE
    assert error.hint
    return error


def test_errors_name_the_file_relative_to_the_working_directory(
    make_lab: Callable[..., Path], lab_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = make_lab(text="title: [")
    monkeypatch.chdir(lab_root.parent)
    assert str(_error(folder)).startswith("labs/03-demo/lab.yaml:")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # libyaml and PyYAML word the problem differently; both name the lines.
        ("format_version: 1\ntitle: [unclosed\n", "lab.yaml:3: invalid YAML: "),
        ("format_version: 1\ntitle: [unclosed\n", "expected ',' or ']'"),
        ("format_version: 1\ntitle: [unclosed\n", "while parsing a flow sequence (started on line 2)"),
        ("format_version: 1\n\n  bad: indent\n", "lab.yaml:3: invalid YAML: mapping values are not allowed"),
        ("title: a\ntitle: b\n", "lab.yaml:2: invalid YAML: found the key 'title' twice"),
        ("", "lab.yaml: is empty (wanted the lab's fields"),
        ("# only a comment\n", "lab.yaml: is empty"),
        ("- 1\n", "lab.yaml: the file holds a list (wanted a mapping of the lab's fields"),
        ("just text\n", "lab.yaml: the file holds text (wanted a mapping"),
        ("title: 2024-01-01\n", "lab.yaml: title: 2024-01-01 is read as a date (quote it to make it text)"),
        ("values: {1: one}\n", "lab.yaml: values: the key 1 must be text (quote it)"),
        ("values: {on: yes}\n", "lab.yaml: values: the key true must be text (quote it)"),
        ("values: &a {self: *a}\n", "lab.yaml: values.self: refers to itself through a YAML alias"),
        ("values: !!binary aGVsbG8=\n", "lab.yaml: values: binary values are not allowed"),
        ("values: !!set {a, b}\n", "lab.yaml: values: set values are not allowed"),
        ("values: !!python/object:os.system {}\n", "lab.yaml:1: invalid YAML: could not determine a constructor"),
        ("[" * 1000, "invalid YAML: "),
        ("[" * 999 + "]" * 999, "lab.yaml: [0][0][0]"),
        ("title: " + "[" * 999 + "]" * 999, "lab.yaml: title[0][0]"),
        ("values: {a: " + "[" * 70 + "]" * 70 + "}", "is nested more than 64 levels deep"),
        ("values: !!set a\n", "lab.yaml:1: invalid YAML: expected a mapping node, but found scalar"),
        ("minutes: !!int abc\n", "lab.yaml: invalid YAML: a tagged value cannot be read (invalid literal for int()"),
        ("minutes: !!timestamp x\n", "lab.yaml: invalid YAML: a tagged value cannot be read"),
        ("minutes: !!bool x\n", "lab.yaml: invalid YAML: a tagged value cannot be read"),
    ],
)
def test_yaml_problems(make_lab: Callable[..., Path], text: str, message: str) -> None:
    error = _error(make_lab(text=text))
    assert message in str(error)


def test_bytes_that_are_not_utf8(make_lab: Callable[..., Path]) -> None:
    folder = make_lab()
    (folder / "lab.yaml").write_bytes(b"title: \xff\xfe\n")
    assert "lab.yaml: is not UTF-8 text (byte 7)" in str(_error(folder))


def test_a_missing_lab_yaml(lab_root: Path) -> None:
    (lab_root / "05-empty").mkdir()
    assert "lab.yaml: cannot be read: No such file or directory" in str(_error(lab_root / "05-empty"))


@pytest.mark.parametrize("name", ["demo", "3-demo", "03_demo", "03-Demo", "03-demo-", "003-demo"])
def test_the_folder_name_must_be_nn_slug(make_lab: Callable[..., Path], name: str) -> None:
    error = _error(make_lab(name=name))
    assert f"the lab folder must be named NN-slug (two digits, a hyphen, a kebab-case name), not '{name}'" in str(error)


def test_a_missing_schema_comment_is_not_an_error(make_lab: Callable[..., Path], valid_doc: Callable[[], dict]) -> None:
    assert load_lab(make_lab(text=yaml.safe_dump(valid_doc()))).title == "Demo"

