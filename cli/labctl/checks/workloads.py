"""Checks on a workload's pod template: probes, resources, securityContext, image tags."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from labctl.checks.matching import values_equal
from labctl.checks.model import Result
from labctl.checks.objects import get, items

SECURITY_REQUIREMENTS = (
    "runAsNonRoot",
    "noPrivilegeEscalation",
    "readOnlyRootFilesystem",
    "dropAllCapabilities",
    "seccompRuntimeDefault",
)


@dataclass(frozen=True)
class _Container:
    label: str  # "container web" or "init container migrate", as a reason names it
    name: str
    spec: Mapping[str, Any]


def pod_spec(obj: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    """The pod spec inside a workload, wherever its kind keeps it (None when it is missing)."""
    if kind == "Pod":
        found = get(obj, "spec")
    elif kind == "CronJob":
        found = get(obj, "spec", "jobTemplate", "spec", "template", "spec")
    else:
        found = get(obj, "spec", "template", "spec")
    return found if isinstance(found, Mapping) else None


def _template_path(kind: str) -> str:
    return {"Pod": "spec", "CronJob": "spec.jobTemplate.spec.template.spec"}.get(kind, "spec.template.spec")


def _containers(pod: Mapping[str, Any], *, init: bool) -> list[_Container]:
    found = []
    groups = (("initContainers", "init container"), ("containers", "container")) if init else (
        ("containers", "container"),
    )
    for field, word in groups:
        for i, spec in enumerate(items(pod.get(field))):
            name = spec.get("name")
            name = name if isinstance(name, str) and name else f"#{i}"
            found.append(_Container(f"{word} {name}", name, spec))
    return found


def _select(
    spec: Mapping[str, Any], obj: Mapping[str, Any], label: str, *, init: bool
) -> list[_Container] | Result:
    """The containers a check looks at, or a failing Result saying why there are none."""
    kind = str(get(spec, "target", "kind"))
    pod = pod_spec(obj, kind)
    if pod is None:
        return Result(False, f"{label} has no pod template ({_template_path(kind)} is missing)")
    containers = _containers(pod, init=init)
    wanted = spec.get("container")
    if wanted is not None:
        chosen = [c for c in containers if c.name == wanted]
        if not chosen:
            names = ", ".join(c.name for c in containers) or "none"
            return Result(False, f"{label} has no container named {wanted} (containers: {names})")
        return chosen
    if not containers:
        return Result(False, f"{label} has no containers")
    return containers


def _verdict(label: str, problems: list[str], success: str) -> Result:
    if problems:
        return Result(False, f"{label}: " + "; ".join(problems))
    return Result(True, f"{label}: {success}")


def _set(value: Any) -> bool:
    return value is not None and value != "" and value != {} and value != []


def probes(spec: Mapping[str, Any], obj: Mapping[str, Any], label: str) -> Result:
    """Every (or the named) container has a readiness and a liveness probe, and they differ."""
    # Init containers run to completion before the pod is ready: probes do not apply to them.
    selected = _select(spec, obj, label, init=False)
    if isinstance(selected, Result):
        return selected
    problems = []
    for c in selected:
        readiness, liveness = c.spec.get("readinessProbe"), c.spec.get("livenessProbe")
        has_r = isinstance(readiness, Mapping) and _set(readiness)
        has_l = isinstance(liveness, Mapping) and _set(liveness)
        if not has_r and not has_l:
            problems.append(f"{c.label} has no readinessProbe and no livenessProbe")
        elif not has_r:
            problems.append(f"{c.label} has no readinessProbe")
        elif not has_l:
            problems.append(f"{c.label} has no livenessProbe")
        elif values_equal(readiness, liveness):
            problems.append(
                f"{c.label} has identical readinessProbe and livenessProbe "
                "(they answer different questions: can it serve now, is it stuck)"
            )
    return _verdict(label, problems, f"{_each(selected)} distinct readiness and liveness probes")


def resources(spec: Mapping[str, Any], obj: Mapping[str, Any], label: str) -> Result:
    """Every (or the named) container, init containers included, sets requests and limits for cpu and memory."""
    selected = _select(spec, obj, label, init=True)
    if isinstance(selected, Result):
        return selected
    problems = []
    for c in selected:
        missing = [
            f"{group}.{resource}"
            for group in ("requests", "limits")
            for resource in ("cpu", "memory")
            if not _set(get(c.spec, "resources", group, resource))
        ]
        if missing:
            problems.append(f"{c.label} sets no {', '.join(missing)}")
    return _verdict(label, problems, f"{_each(selected)} cpu and memory requests and limits")


def _each(selected: list[_Container], one: str = "has", many: str = "have") -> str:
    if len(selected) == 1:
        return f"{selected[0].label} {one}"
    return f"all {len(selected)} containers {many}"


def image_pinned(spec: Mapping[str, Any], obj: Mapping[str, Any], label: str) -> Result:
    """Every (or the named) container's image has a tag other than latest, or a digest."""
    selected = _select(spec, obj, label, init=True)
    if isinstance(selected, Result):
        return selected
    problems = []
    for c in selected:
        image = c.spec.get("image")
        if not isinstance(image, str) or not image:
            problems.append(f"{c.label} has no image")
            continue
        if "@" in image:
            continue
        repository, tag = split_tag(image)
        if tag is None:
            problems.append(
                f"{c.label} image {image} has no tag, which means 'latest' "
                f"(pin a version such as {repository}:1.0)"
            )
        elif tag == "latest":
            problems.append(
                f"{c.label} image {image} uses the tag 'latest' (pin a version such as {repository}:1.0)"
            )
    return _verdict(label, problems, "every image is pinned")


def split_tag(image: str) -> tuple[str, str | None]:
    """`registry:5000/app:1.0` -> (`registry:5000/app`, `1.0`); no tag -> (image, None)."""
    colon = image.rfind(":")
    if colon > image.rfind("/") and colon < len(image) - 1:
        return image[:colon], image[colon + 1 :]
    return image.rstrip(":"), None


def security(spec: Mapping[str, Any], obj: Mapping[str, Any], label: str) -> Result:
    """Every container, init containers included, meets each required securityContext setting.

    runAsNonRoot, runAsUser and seccompProfile may be set on the pod and are inherited by containers that
    do not set them; allowPrivilegeEscalation, readOnlyRootFilesystem and capabilities exist on containers
    only.
    """
    selected = _select(spec, obj, label, init=True)
    if isinstance(selected, Result):
        return selected
    require = spec.get("require")
    wanted = [r for r in require if r in SECURITY_REQUIREMENTS] if isinstance(require, list) else []
    wanted = wanted or list(SECURITY_REQUIREMENTS)
    kind = str(get(spec, "target", "kind"))
    pod_context = get(pod_spec(obj, kind), "securityContext")
    pod_context = pod_context if isinstance(pod_context, Mapping) else {}
    problems = []
    for c in selected:
        own = c.spec.get("securityContext")
        own = own if isinstance(own, Mapping) else {}
        failed = [why for r in wanted if (why := _SECURITY[r](own, pod_context))]
        if failed:
            problems.append(f"{c.label}: " + ", ".join(failed))
    return _verdict(label, problems, f"{_each(selected, 'meets', 'meet')} {', '.join(wanted)}")


def _inherited(own: Mapping[str, Any], pod: Mapping[str, Any], field: str) -> Any:
    value = own.get(field)
    return pod.get(field) if value is None else value


def _run_as_non_root(own: Mapping[str, Any], pod: Mapping[str, Any]) -> str | None:
    user = _inherited(own, pod, "runAsUser")
    if user == 0 and not isinstance(user, bool):
        return "runAsUser is 0, which is root (wanted a non-root user and runAsNonRoot: true)"
    if _inherited(own, pod, "runAsNonRoot") is not True:
        return "runAsNonRoot is not true (set it on the pod or the container)"
    return None


def _no_privilege_escalation(own: Mapping[str, Any], pod: Mapping[str, Any]) -> str | None:
    if own.get("allowPrivilegeEscalation") is not False:
        return "allowPrivilegeEscalation is not false (set it on the container)"
    return None


def _read_only_root(own: Mapping[str, Any], pod: Mapping[str, Any]) -> str | None:
    if own.get("readOnlyRootFilesystem") is not True:
        return "readOnlyRootFilesystem is not true (set it on the container)"
    return None


def _drop_all(own: Mapping[str, Any], pod: Mapping[str, Any]) -> str | None:
    drop = get(own, "capabilities", "drop")
    # Pod Security admission compares with "ALL" exactly, so "all" does not count there either.
    if not isinstance(drop, list) or "ALL" not in drop:
        return "capabilities.drop does not include ALL (set it on the container)"
    return None


def _seccomp(own: Mapping[str, Any], pod: Mapping[str, Any]) -> str | None:
    profile = _inherited(own, pod, "seccompProfile")
    seen = get(profile, "type")
    if seen != "RuntimeDefault":
        shown = seen if isinstance(seen, str) else "unset"
        return f"seccompProfile type is {shown} (wanted RuntimeDefault, on the pod or the container)"
    return None


_SECURITY = {
    "runAsNonRoot": _run_as_non_root,
    "noPrivilegeEscalation": _no_privilege_escalation,
    "readOnlyRootFilesystem": _read_only_root,
    "dropAllCapabilities": _drop_all,
    "seccompRuntimeDefault": _seccomp,
}
