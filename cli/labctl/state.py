"""Progress and the current cluster, in one JSON file under the XDG state dir.

Format (`progress.json`, format 1):

    {
      "format": 1,
      "cluster": {"provider": "sim", "context": "labctl-sim", "kubeconfig": "/…/kubeconfig"} | null,
      "current_lab": "containerization" | null,
      "labs": {
        "<slug>": {
          "started_at": "<ISO 8601>",
          "passed": ["<check id>", ...],          # checks passing at the last `check`
          "hint_levels": {"<check id>": 2},       # hints revealed so far
          "declared_complete_at": "<ISO 8601>",   # every verifiable check passed on a provider without pods
          "completed_at": "<ISO 8601>",           # every check passed, behaviour included
          "completed_on": "<provider>"
        }
      }
    }

Writes are atomic (a temporary file renamed over the old one). A file that cannot be read is moved aside to
`progress.json.corrupt-<timestamp>` and reported; labctl carries on with empty progress.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any


FORMAT = 1


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class State:
    path: Path
    data: dict[str, Any] = field(default_factory=dict)
    warning: str | None = None  # set when a corrupt file was set aside

    @property
    def cluster(self) -> dict | None:
        return self.data.get("cluster")

    @cluster.setter
    def cluster(self, value: dict | None) -> None:
        self.data["cluster"] = value

    @property
    def current_lab(self) -> str | None:
        return self.data.get("current_lab")

    @current_lab.setter
    def current_lab(self, slug: str | None) -> None:
        self.data["current_lab"] = slug

    def lab(self, slug: str) -> dict:
        """The progress record of a lab, created empty on first use."""
        labs = self.data.setdefault("labs", {})
        record = labs.setdefault(slug, {})
        record.setdefault("passed", [])
        record.setdefault("hint_levels", {})
        return record

    def save(self) -> None:
        from labctl.providers.users import give, make_dirs

        make_dirs(self.path.parent)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".progress-", suffix=".json")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(self.data, f, indent=2, sort_keys=True)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        give(self.path)


def default_path() -> Path:
    """Under sudo, the invoking user's state dir, so their own labctl sees the same progress."""
    from labctl.providers.users import state_root

    return state_root() / "progress.json"


def empty() -> dict[str, Any]:
    return {"format": FORMAT, "cluster": None, "current_lab": None, "labs": {}}


def validate(data: Any) -> str | None:
    """Why `data` is not a usable progress document, or None when it is."""
    if not isinstance(data, dict):
        return "the top level is not a mapping"
    if data.get("format") != FORMAT:
        return f"unknown format {data.get('format')!r} (this labctl reads format {FORMAT})"
    if not isinstance(data.get("labs", {}), dict):
        return "'labs' is not a mapping"
    for slug, record in data.get("labs", {}).items():
        if not isinstance(record, dict):
            return f"labs.{slug} is not a mapping"
        if not isinstance(record.get("passed", []), list) or not isinstance(record.get("hint_levels", {}), dict):
            return f"labs.{slug} has a malformed 'passed' or 'hint_levels'"
    cluster = data.get("cluster")
    if cluster is not None and not (isinstance(cluster, dict) and isinstance(cluster.get("context"), str)):
        return "'cluster' is malformed"
    return None


def load(path: Path | None = None) -> State:
    """Read progress; a corrupt file is set aside (never deleted) and reported in `State.warning`."""
    path = path or default_path()
    try:
        text = path.read_text()
    except FileNotFoundError:
        return State(path, empty())
    try:
        data = json.loads(text)
        problem = validate(data)
    except ValueError as e:
        problem = f"not valid JSON ({e})"
    if problem is None:
        return State(path, data)
    aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
    os.replace(path, aside)
    return State(path, empty(), warning=f"progress file {path} was unreadable: {problem}; moved it to {aside} and started afresh")
