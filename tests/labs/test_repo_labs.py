"""Every lab shipped in labs/ loads, and points editors at the schema on its first line."""

from __future__ import annotations

from pathlib import Path

import pytest

from labctl import paths
from labctl.labs import LAB_FOLDER, SCHEMA_COMMENT, all_labs, load_lab

pytestmark = pytest.mark.unit

LAB_FOLDERS = sorted(p for p in paths.labs_dir().iterdir() if p.is_dir() and LAB_FOLDER.match(p.name))


@pytest.mark.parametrize("folder", LAB_FOLDERS, ids=[p.name for p in LAB_FOLDERS])
def test_lab_yaml_starts_with_the_schema_comment(folder: Path) -> None:
    first = (folder / "lab.yaml").read_text(encoding="utf-8").splitlines()[0]
    assert first == SCHEMA_COMMENT


@pytest.mark.parametrize("folder", LAB_FOLDERS, ids=[p.name for p in LAB_FOLDERS])
def test_lab_loads(folder: Path) -> None:
    lab = load_lab(folder)
    assert lab.name == folder.name


def test_the_schema_comment_points_at_the_schema() -> None:
    lab_yaml = paths.labs_dir() / "01-example" / "lab.yaml"
    schema = lab_yaml.parent / SCHEMA_COMMENT.split("$schema=", 1)[1]
    assert schema.resolve() == (Path(__file__).parents[2] / "cli/labctl/schema/lab.schema.json").resolve()


def test_all_shipped_labs_load_together() -> None:
    assert [lab.name for lab in all_labs()] == [p.name for p in LAB_FOLDERS]
