"""Kubeconfig files: build one for a cluster, merge it into the user's kubeconfig the way kind does, remove it.

The merge and removal are pure functions on dicts; only `merge_into_user` and `remove_from_user` touch files,
and they write atomically (a temporary file renamed over the old one) so a crash never leaves half a kubeconfig.
"""

from __future__ import annotations

import base64
import copy
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

from labctl.errors import UsageError
from labctl.providers.users import TargetUser, give, make_dirs, target_user

SECTIONS = ("clusters", "users", "contexts")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def build(name: str, server: str, ca_pem: bytes, cert_pem: bytes, key_pem: bytes) -> dict[str, Any]:
    """A self-contained kubeconfig whose cluster, user and context are all called `name`."""
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "preferences": {},
        "clusters": [{"name": name, "cluster": {"server": server, "certificate-authority-data": _b64(ca_pem)}}],
        "users": [{"name": name, "user": {"client-certificate-data": _b64(cert_pem),
                                          "client-key-data": _b64(key_pem)}}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name}}],
        "current-context": name,
    }


def empty() -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Config", "preferences": {}, "clusters": [], "users": [], "contexts": [],
            "current-context": ""}


@dataclass(frozen=True)
class MergeResult:
    config: dict[str, Any]
    context: str
    set_current: bool  # the merged context became current-context (there was none before)
    current: str       # current-context after the merge


def merge(target: Mapping[str, Any], source: Mapping[str, Any]) -> MergeResult:
    """`target` with every cluster, user and context of `source` added or replaced by name.

    current-context becomes the source's only when the target has none, so merging never switches a person's
    kubectl away from the cluster they were using.
    """
    merged = copy.deepcopy(dict(target)) if target else empty()
    for section in SECTIONS:
        incoming = source.get(section) or []
        names = {entry["name"] for entry in incoming}
        kept = [e for e in (merged.get(section) or []) if e.get("name") not in names]
        merged[section] = kept + copy.deepcopy(list(incoming))
    merged.setdefault("apiVersion", "v1")
    merged.setdefault("kind", "Config")
    context = source.get("current-context") or (source.get("contexts") or [{}])[0].get("name", "")
    set_current = not merged.get("current-context")
    if set_current:
        merged["current-context"] = context
    return MergeResult(merged, context, set_current, merged["current-context"])


def remove(target: Mapping[str, Any], context: str) -> tuple[dict[str, Any], bool]:
    """`target` without `context` and without the cluster and user it names, unless another context uses them.

    Returns the new config and whether anything was removed. A current-context pointing at it is cleared.
    """
    config = copy.deepcopy(dict(target)) if target else empty()
    contexts = config.get("contexts") or []
    found = [c for c in contexts if c.get("name") == context]
    if not found:
        return config, False
    config["contexts"] = [c for c in contexts if c.get("name") != context]
    ctx = found[0].get("context") or {}
    for section, key in (("clusters", "cluster"), ("users", "user")):
        name = ctx.get(key)
        still_used = any((c.get("context") or {}).get(key) == name for c in config["contexts"])
        if name and not still_used:
            config[section] = [e for e in (config.get(section) or []) if e.get("name") != name]
    if config.get("current-context") == context:
        config["current-context"] = ""
    return config, True


def has_context(config: Mapping[str, Any], context: str) -> bool:
    return any(c.get("name") == context for c in config.get("contexts") or [])


def context_names(config: Mapping[str, Any]) -> list[str]:
    return [c.get("name", "") for c in config.get("contexts") or []]


def decide_user_path(env: Mapping[str, str], user: TargetUser) -> Path:
    """The kubeconfig file kubectl writes to: the first path of $KUBECONFIG, else ~/.kube/config."""
    for entry in (env.get("KUBECONFIG") or "").split(os.pathsep):
        if entry:
            return Path(entry).expanduser()
    return user.home / ".kube" / "config"


def user_path() -> Path:
    """The target user's kubeconfig file (see `decide_user_path`)."""
    return decide_user_path(os.environ, target_user())


def search_paths(env: Mapping[str, str] | None = None, user: TargetUser | None = None) -> list[Path]:
    """Every kubeconfig file kubectl reads, in order."""
    env = os.environ if env is None else env
    user = user or target_user()
    listed = [Path(p).expanduser() for p in (env.get("KUBECONFIG") or "").split(os.pathsep) if p]
    return listed or [user.home / ".kube" / "config"]


def read(path: Path) -> dict[str, Any]:
    """A kubeconfig file as a dict; an absent or empty file is an empty config."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return empty()
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise UsageError(f"kubeconfig {path} is not valid YAML: {str(e).splitlines()[0]}",
                         hint="fix or move that file, then run the command again") from e
    if data is None:
        return empty()
    if not isinstance(data, dict):
        raise UsageError(f"kubeconfig {path} is not a kubeconfig (its top level is not a mapping)")
    return data


def write(path: Path, config: Mapping[str, Any], user: TargetUser | None = None) -> None:
    """Write a kubeconfig atomically, mode 0600, owned by the target user."""
    user = user or target_user()
    make_dirs(path.parent, user)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            yaml.safe_dump(dict(config), f, default_flow_style=False, sort_keys=False)
        if path.exists():
            st = path.stat()
            os.chmod(tmp, st.st_mode & 0o777)
            if os.geteuid() == 0:
                os.chown(tmp, st.st_uid, st.st_gid)
        else:
            os.chmod(tmp, 0o600)
            give(Path(tmp), user)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def merge_into_user(source: Mapping[str, Any], path: Path | None = None) -> tuple[Path, MergeResult]:
    """Merge a cluster's kubeconfig into the user's kubeconfig file; returns the file and what happened."""
    path = path or user_path()
    result = merge(read(path), source)
    write(path, result.config)
    return path, result


def remove_from_user(context: str, path: Path | None = None) -> tuple[Path, bool]:
    """Remove a context (and its cluster and user) from the user's kubeconfig; False when it was not there."""
    path = path or user_path()
    if not path.exists():
        return path, False
    config, removed = remove(read(path), context)
    if removed:
        write(path, config)
    return path, removed


def merge_message(path: Path, result: MergeResult) -> str:
    """What a person reads after a merge: which file, and whether kubectl now points at the cluster."""
    where = _display(path)
    if result.set_current:
        return f"Context {result.context} added to {where} and set as current-context"
    if result.current == result.context:
        return f"Context {result.context} updated in {where} (it is the current-context)"
    return (f"Context {result.context} added to {where}; current-context stays {result.current} "
            f"(use `kubectl --context {result.context}` or `labctl kubectl`)")


def _display(path: Path) -> str:
    home = str(target_user().home)
    text = str(path)
    return "~" + text[len(home):] if text.startswith(home + os.sep) else text
