"""One reconcile: read the Microservice and its children, make the children match, report what is observed.

Level-triggered: whatever woke it (the Microservice changed, a child changed or vanished, a periodic resync),
it reads the current state and converges from there, so a missed or repeated trigger does no harm. Every
write is idempotent (server-side apply of a deterministic object, a status written only when it differs), so
running it twice, or again after a crash half-way, creates nothing twice.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable

from labctl_operator import kube, model

log = logging.getLogger("labctl_operator")


@dataclass
class Result:
    """What one reconcile did (for logs and tests)."""

    applied: list[str] = field(default_factory=list)
    status_written: bool = False
    problem: model.Problem | None = None
    skipped: str | None = None


class Reconciler:
    """Reconciles Microservices through `api`; safe to call from several threads at once."""

    def __init__(self, api: kube.Api, *, now: Callable[[], str] = kube.now) -> None:
        self.api = api
        self.now = now
        self._locks: defaultdict[tuple[str, str], threading.Lock] = defaultdict(threading.Lock)
        self._locks_guard = threading.Lock()

    def _lock(self, namespace: str, name: str) -> threading.Lock:
        # One reconcile per object at a time: a child's event and the Microservice's own change may arrive
        # together, and two interleaved status writes would each undo part of the other.
        with self._locks_guard:
            return self._locks[(namespace, name)]

    def reconcile(self, namespace: str, name: str) -> Result:
        """Bring Microservice namespace/name and its children in line; TransientError when the API failed."""
        with self._lock(namespace, name):
            return self._reconcile(namespace, name)

    def _reconcile(self, namespace: str, name: str) -> Result:
        ms = self.api.microservice(namespace, name)
        if ms is None:
            return Result(skipped="gone")  # its children carry owner references: the garbage collector takes them
        if ms["metadata"].get("deletionTimestamp"):
            return Result(skipped="being deleted")
        deployment = self.api.deployment(namespace, name)
        service = self.api.service(namespace, name)
        problems = model.validate(ms.get("spec"))
        if problems:
            problem = model.Problem(model.INVALID_SPEC, "; ".join(problems))
            return self._report(ms, deployment, service, problem, Result(problem=problem))
        result = Result()
        observed: dict[str, dict | None] = {"Deployment": deployment, "Service": service}
        desired = {"Deployment": model.desired_deployment(ms), "Service": model.desired_service(ms)}
        for kind in ("Deployment", "Service"):
            current = observed[kind]
            if current is not None and not model.owned_by(current, ms):
                problem = model.Problem(model.NAME_TAKEN, f"a {kind} named {name} already exists and belongs to "
                                        "something else; delete or rename it, or rename this Microservice")
                result.problem = problem
                return self._report(ms, deployment, service, problem, result)
            differences = model.drift(desired[kind], current) if current is not None else ["(missing)"]
            if not differences:
                continue
            try:
                applied = self._converge(desired[kind], current)
            except kube.RejectedError as e:
                problem = model.Problem(model.REJECTED, f"the API server refused {kind} {name}: {e.message}")
                result.problem = problem
                return self._report(ms, deployment, service, problem, result)
            except kube.TransientError as e:
                self._note_retry(ms, deployment, service, f"{kind} {name}: {e.message}")
                raise
            result.applied.append(kind)
            self._announce(ms, kind, current, applied, differences)
            observed[kind] = applied
        return self._report(ms, observed["Deployment"], observed["Service"], None, result)

    def _converge(self, desired: dict, current: dict | None) -> dict:
        try:
            return self.api.apply(desired)
        except kube.RejectedError:
            if current is None:
                raise
        # Server-side apply merges keyed lists: an item someone added under another key (a Service port
        # renumbered by hand) stays beside the operator's own and can clash with it. Replacing the fields the
        # operator sets, lists whole, restores them; a conflict with a newer write is retried like any other.
        return self.api.replace(model.overlay(current, desired))

    def _announce(self, ms: dict, kind: str, before: dict | None, after: dict, differences: list[str]) -> None:
        name = ms["metadata"]["name"]
        if before is None:
            self._event(ms, "Normal", "Created", f"created {kind} {name}")
            return
        if before["metadata"].get("resourceVersion") == after["metadata"].get("resourceVersion"):
            return  # the server found nothing to change (a value it spells differently): nothing happened
        fields = ", ".join(differences[:4]) + (" ..." if len(differences) > 4 else "")
        spec_changed = (ms["metadata"].get("generation") != (ms.get("status") or {}).get("observedGeneration"))
        if spec_changed:
            old, new = (before.get("spec") or {}).get("replicas"), (after.get("spec") or {}).get("replicas")
            if kind == "Deployment" and old != new and differences == ["spec.replicas"]:
                self._event(ms, "Normal", "Scaled", f"scaled Deployment {name} from {old} to {new} replicas")
            else:
                self._event(ms, "Normal", "Updated", f"updated {kind} {name} ({fields})")
        else:
            self._event(ms, "Warning", "DriftRepaired",
                        f"{kind} {name} was changed outside the operator ({fields}); restored")

    def _report(self, ms: dict, deployment: dict | None, service: dict | None, problem: model.Problem | None,
                result: Result) -> Result:
        old = ms.get("status") or {}
        new = model.merge_status(old, model.build_status(ms, deployment, service, problem), self.now())
        if model.status_differs(old, new):
            self.api.patch_status(ms, new)
            result.status_written = True
            for kind, reason, message in model.transitions(old, new):
                self._event(ms, kind, reason, message)
        return result

    def _note_retry(self, ms: dict, deployment: dict | None, service: dict | None, message: str) -> None:
        """Say in status that the operator is retrying, if the API lets it say anything at all."""
        try:
            self._report(ms, deployment, service, model.Problem(model.RETRYING, f"{message}; retrying"), Result())
        except kube.ApiFailure:
            pass

    def _event(self, ms: dict, kind: str, reason: str, message: str) -> None:
        log.info("%s/%s: %s: %s", ms["metadata"]["namespace"], ms["metadata"]["name"], reason, message)
        try:
            self.api.post_event(ms, kind, reason, message)
        except kube.ApiFailure as e:  # an event is a courtesy: the reconcile itself has succeeded
            log.warning("could not post event %s for %s: %s", reason, ms["metadata"]["name"], e)

    # -- resync ---------------------------------------------------------------------------------------------

    def stale(self) -> list[tuple[str, str]]:
        """Microservices whose children or status do not match right now, from three list calls.

        The periodic resync's question: it catches whatever an event-driven reconcile missed (a failed
        request, an event lost while a watch was down).
        """
        selector = f"{model.MANAGED_BY_LABEL}={model.MANAGER}"
        items = self.api.list_all(model.API_VERSION, model.KIND, model.PLURAL)
        deployments = {(d["metadata"]["namespace"], d["metadata"]["name"]): d
                       for d in self.api.list_all("apps/v1", "Deployment", "deployments", selector)}
        services = {(s["metadata"]["namespace"], s["metadata"]["name"]): s
                    for s in self.api.list_all("v1", "Service", "services", selector)}
        stale = []
        for ms in items:
            meta = ms["metadata"]
            if meta.get("deletionTimestamp"):
                continue
            key = (meta["namespace"], meta["name"])
            if needs_attention(ms, deployments.get(key), services.get(key)):
                stale.append(key)
        return stale


def needs_attention(ms: dict, deployment: dict | None, service: dict | None) -> bool:
    """True when a reconcile would change something: a child missing or drifted, or the status out of date."""
    problems = model.validate(ms.get("spec"))
    if problems:
        problem: model.Problem | None = model.Problem(model.INVALID_SPEC, "; ".join(problems))
    else:
        problem = None
        for desired, observed in ((model.desired_deployment(ms), deployment), (model.desired_service(ms), service)):
            if observed is None or not model.owned_by(observed, ms) or model.drift(desired, observed):
                return True
    old = ms.get("status") or {}
    fresh = model.build_status(ms, deployment, service, problem)
    return model.status_differs(old, model.merge_status(old, fresh, "unchanged"))
