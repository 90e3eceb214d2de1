"""One reconcile: read the Microservice and its children, make the children match, report what is observed.

Level-triggered: whatever woke it (the Microservice changed, a child changed or vanished, a periodic resync),
it reads the current state and converges from there, so a missed or repeated trigger does no harm. Every
write is idempotent (server-side apply of a deterministic object, a status written only when it differs), so
running it twice, or again after a crash half-way, creates nothing twice.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

from labctl_operator import kube, model

log = logging.getLogger("labctl_operator")

TERMINATING = "NamespaceTerminating"  # the cause the API server gives for writes into a namespace being deleted


@dataclass
class Result:
    """What one reconcile did (for logs and tests)."""

    applied: list[str] = field(default_factory=list)
    status_written: bool = False
    problem: model.Problem | None = None
    skipped: str | None = None


class EventPoster:
    """Posts Kubernetes Events from a background thread, so an Event never delays the reconcile it reports."""

    def __init__(self, api: kube.Api) -> None:
        self.api = api
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="event-poster", daemon=True)
        self._thread.start()

    def post(self, ms: dict, kind: str, reason: str, message: str) -> None:
        self._queue.put((ms, kind, reason, message))

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            ms, kind, reason, message = item
            try:
                self.api.post_event(ms, kind, reason, message)
            except kube.ApiFailure as e:  # an Event is a courtesy: the reconcile itself has succeeded
                log.warning("could not post event %s for %s: %s", reason, ms["metadata"]["name"], e)

    def close(self, timeout: float = 5.0) -> None:
        """Post what is queued (for up to `timeout` seconds), then stop."""
        self._queue.put(None)
        self._thread.join(timeout)


class Reconciler:
    """Reconciles Microservices through `api`; safe to call from several threads at once."""

    def __init__(self, api: kube.Api, *, now: Callable[[], str] = kube.now) -> None:
        self.api = api
        self.now = now
        self.events = EventPoster(api)
        # Reads and child writes of several reconciles in flight at once; they wait on the API server.
        self._reads = ThreadPoolExecutor(max_workers=32, thread_name_prefix="api")
        self._locks: defaultdict[tuple[str, str], threading.Lock] = defaultdict(threading.Lock)
        self._waiting: set[tuple[str, str]] = set()
        self._guard = threading.Lock()

    def close(self) -> None:
        self.events.close()
        self._reads.shutdown(wait=False)

    def reconcile(self, namespace: str, name: str) -> Result:
        """Bring Microservice namespace/name and its children in line; TransientError when the API failed.

        One reconcile per object at a time: a child's event and the Microservice's own change may arrive
        together, and two interleaved status writes would each undo part of the other. A request for an object
        that already has one waiting to run is dropped: the waiting one reads the state after it anyway (a
        rollout's burst of Deployment updates costs one or two reconciles, not one each). What woke it is never
        used as the state: a watch event can be older than a read made a moment before.
        """
        key = (namespace, name)
        with self._guard:
            if key in self._waiting:
                return Result(skipped="coalesced")
            self._waiting.add(key)
            lock = self._locks[key]
        with lock:
            with self._guard:
                self._waiting.discard(key)
            return self._reconcile(namespace, name)

    def _read(self, namespace: str, name: str) -> list[dict | None]:
        """The Microservice, its Deployment and its Service, read at once."""
        reads = [self._reads.submit(fn, namespace, name)
                 for fn in (self.api.microservice, self.api.deployment, self.api.service)]
        return [r.result() for r in reads]

    def _reconcile(self, namespace: str, name: str) -> Result:
        ms, deployment, service = self._read(namespace, name)
        if ms is None:
            return Result(skipped="gone")  # its children carry owner references: the garbage collector takes them
        if ms["metadata"].get("deletionTimestamp"):
            return Result(skipped="being deleted")
        problems = model.validate(ms.get("spec"))
        if problems:
            problem = model.Problem(model.INVALID_SPEC, "; ".join(problems))
            return self._report(ms, deployment, service, problem, Result(problem=problem))
        result = Result()
        observed: dict[str, dict | None] = {"Deployment": deployment, "Service": service}
        desired = {"Deployment": model.desired_deployment(ms), "Service": model.desired_service(ms)}
        for kind, current in observed.items():
            if current is not None and not model.owned_by(current, ms):
                problem = model.Problem(model.NAME_TAKEN, f"a {kind} named {name} already exists and belongs to "
                                        "something else; delete or rename it, or rename this Microservice")
                result.problem = problem
                return self._report(ms, deployment, service, problem, result)
        differences = {kind: model.drift(desired[kind], current) if current is not None else ["(missing)"]
                       for kind, current in observed.items()}
        # The two children do not depend on each other: both writes are in flight at once.
        writes = {kind: self._reads.submit(self._converge, desired[kind], observed[kind])
                  for kind in ("Deployment", "Service") if differences[kind]}
        failures: dict[str, kube.ApiFailure] = {}
        for kind, write in writes.items():
            try:
                applied = write.result()
            except kube.ApiFailure as e:
                failures[kind] = e
                continue
            result.applied.append(kind)
            if observed[kind] is not None:
                self._announce(ms, kind, observed[kind], applied, differences[kind])
            observed[kind] = applied
        created = [kind for kind, before in (("Deployment", deployment), ("Service", service))
                   if before is None and kind in result.applied]
        if created:
            self._event(ms, "Normal", "Created", "created " + " and ".join(f"{k} {name}" for k in created))
        for kind, e in failures.items():
            if TERMINATING in e.causes:
                return Result(skipped="namespace being deleted")  # everything in it goes: nothing to repair
            if isinstance(e, kube.RejectedError):
                problem = model.Problem(model.REJECTED, f"the API server refused {kind} {name}: {e.message}")
                result.problem = problem
                return self._report(ms, observed["Deployment"], observed["Service"], problem, result)
        for kind, e in failures.items():
            self._note_retry(ms, observed["Deployment"], observed["Service"], f"{kind} {name}: {e.message}")
            raise e
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

    def _announce(self, ms: dict, kind: str, before: dict, after: dict, differences: list[str]) -> None:
        name = ms["metadata"]["name"]
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
        self.events.post(ms, kind, reason, message)

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
