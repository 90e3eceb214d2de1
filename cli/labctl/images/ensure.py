"""The images a lab needs, built once per cluster: what `labctl start` and `labctl solve` call.

An image the cluster already holds is skipped after one quick look, unless labctl built it from different
sources (a newer lab folder): each build labctl makes for a lab is recorded with a digest of its sources
(`<state_dir>/images.json`). An image of that name that the learner built with `labctl image build` is theirs
and left alone.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

from labctl import paths
from labctl.errors import LabDefinitionError
from labctl.images.build import Builder, builder_for, check_tag
from labctl.providers.base import Progress, quiet

# Written by tools and editors into a build context; never part of what an image is made from.
_NOISE_DIRS = {"__pycache__", ".pytest_cache", ".mypy_cache", ".git"}


def context_digest(context: Path, dockerfile: Path, build_args: Mapping[str, str] | None = None) -> str:
    """A sha256 over the build's inputs: every file of the context (path, mode, bytes), the Dockerfile, the args."""
    h = hashlib.sha256()
    h.update(json.dumps(sorted((build_args or {}).items())).encode())
    h.update(b"\0dockerfile\0" + dockerfile.read_bytes())
    for top, dirs, files in os.walk(context):
        dirs[:] = sorted(d for d in dirs if d not in _NOISE_DIRS)
        for name in sorted(files):
            if name.endswith(".pyc"):
                continue
            path = Path(top, name)
            rel = path.relative_to(context).as_posix()
            if path.is_symlink():
                h.update(f"\0link\0{rel}\0{os.readlink(path)}".encode())
                continue
            h.update(f"\0file\0{rel}\0{path.stat().st_mode & 0o111:o}\0".encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def _records_path() -> Path:
    return paths.state_dir() / "images.json"


def load_records() -> dict[str, dict[str, str]]:
    """provider -> {tag -> digest of the sources labctl last built it from}."""
    try:
        data = json.loads(_records_path().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def save_records(records: dict[str, dict[str, str]]) -> None:
    path = _records_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".images-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(records, f, indent=2, sort_keys=True)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def forget(provider: str, tag: str) -> None:
    """Stop treating `tag` as labctl's own build on `provider` (the learner built it)."""
    records = load_records()
    if records.get(provider, {}).pop(tag, None) is not None:
        save_records(records)


def _field(entry: Any, key: str) -> Any:
    return entry.get(key) if isinstance(entry, Mapping) else getattr(entry, key, None)


def image_entries(lab: Any) -> list[tuple[str, Path, Path]]:
    """(tag, context folder, Dockerfile) of each image a lab declares; LabDefinitionError when one is wrong."""
    out = []
    for entry in getattr(lab, "images", None) or []:
        if _field(entry, "toolbox"):
            continue  # made of a binary, not built: see ensure_toolbox_image
        tag, context, dockerfile = _field(entry, "name"), _field(entry, "context"), _field(entry, "dockerfile")
        where = f"lab {getattr(lab, 'slug', lab)}: image {tag!r}"
        if not isinstance(tag, str) or not isinstance(context, (str, Path)):
            raise LabDefinitionError(f"{where} needs a `name` and a `context` folder")
        check_tag(tag)
        folder = Path(lab.path) / context  # a context that is already absolute stays as it is
        file = folder / (dockerfile or "Dockerfile")
        if not folder.is_dir() or not file.is_file():
            raise LabDefinitionError(f"{where}: {file} does not exist",
                                     hint="`context` is a folder of the lab; `dockerfile` is relative to it")
        out.append((tag, folder, file))
    if uses_probes(lab):
        from labctl.checks.probe import PROBE_IMAGE

        folder = paths.manifests_dir() / "probe"
        out.append((PROBE_IMAGE, folder, folder / "Dockerfile"))
    return out


def uses_probes(lab: Any) -> bool:
    """Whether a lab's checks run probe Pods (probe checks, or probe steps of scenarios)."""
    for check in getattr(lab, "checks", None) or []:
        spec = getattr(check, "spec", check)
        if not isinstance(spec, Mapping):
            continue
        if spec.get("type") == "probe" or any("probe" in step for step in spec.get("steps") or []):
            return True
    return False


def ensure_images(lab: Any, target: Any, progress: Progress = quiet, *, builder: Builder | None = None) -> list[str]:
    """Build each image `lab` declares that the target cluster lacks (or holds from older sources); the tags built.

    `target` is a session Target; on a provider whose pods never run nothing is needed. `builder` replaces
    the provider's own (for a cluster that is not the current one).
    """
    if not getattr(target, "pods_run", True):
        return []
    entries = image_entries(lab)
    binaries = [(_field(e, "name"), _field(e, "toolbox")) for e in getattr(lab, "images", None) or []
                if _field(e, "toolbox")]
    if not entries and not binaries:
        return []
    builder = builder or builder_for(target.provider)
    if builder is None:
        return []
    built = [tag for tag, name in binaries if ensure_toolbox_image(target, tag, name, progress, builder=builder)]
    records = load_records()
    mine = records.setdefault(builder.provider, {})
    for tag, context, dockerfile in entries:
        digest = context_digest(context, dockerfile)
        if builder.has_image(tag) and mine.get(tag, digest) == digest:
            builder.publish(tag)
            continue
        progress(f"building image {tag} from {context}")
        result = builder.build(context, tag, dockerfile=dockerfile, progress=progress)
        progress(result.summary)
        mine[tag] = digest
        save_records(records)
        built.append(tag)
    return built


def ensure_toolbox_image(target: Any, tag: str, name: str, progress: Progress = quiet, *,
                         builder: Builder | None = None) -> bool:
    """An image of one toolbox binary (/NAME, its entrypoint, uid 65532, a /tmp) on the target's node; True when
    it had to be made. The binary is built or downloaded by the toolbox first if it is missing."""
    from labctl.errors import ToolboxError
    from labctl.images.archive import write_image
    from labctl.toolbox import binary as installed_binary
    from labctl.toolbox import install
    from labctl.toolbox.store import sha256_file

    builder = builder or builder_for(target.provider)
    if builder is None:
        return False
    try:
        binary = installed_binary(name)  # a stat: no waiting for the toolbox's lock when it is there
    except ToolboxError:
        binary = install([name], progress=progress)[name]
    digest = "sha256:" + sha256_file(binary)
    records = load_records()
    mine = records.setdefault(builder.provider, {})
    if builder.has_image(tag) and mine.get(tag) == digest:
        builder.publish(tag)
        return False
    progress(f"making image {tag} from the toolbox's {name}")
    with tempfile.TemporaryDirectory(prefix="labctl-image-") as tmp:
        tar = Path(tmp) / "image.tar"
        write_image(tar, tag, {f"/{name}": binary}, entrypoint=[f"/{name}"], user="65532:65532",
                    dirs={"/tmp": 0o1777})
        builder.import_archive(tar)
    builder.publish(tag)
    mine[tag] = digest
    save_records(records)
    return True
