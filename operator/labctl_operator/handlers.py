"""kopf's part: what wakes a reconcile, how failures are retried, and how watches are kept alive.

Every trigger ends in the same `Reconciler.reconcile(namespace, name)`: a Microservice created, changed or
found at start-up, and any event of a Deployment or Service the operator manages (edited or deleted by hand,
or simply progressing). No daemons or timers: kopf guards those with a finalizer on every object, and nothing
outside the owner tree needs one here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable

import kopf

from labctl_operator import kube, model
from labctl_operator.reconcile import Reconciler

log = logging.getLogger("labctl_operator")

RESOURCE = (model.GROUP, model.VERSION, model.PLURAL)
CHILD_SELECTOR = f"{model.MANAGED_BY_LABEL}={model.MANAGER}"
# A child's event is retried this many times in place; after that the periodic resync picks it up.
CHILD_ATTEMPTS = 4


def configure(settings: kopf.OperatorSettings, *, watch_timeout: int = 60, inactivity_timeout: float = 70.0,
              workers: int = 24) -> kopf.OperatorSettings:
    """Settings that keep a long-running operator honest.

    Watch streams that go quiet without closing are the classic way a kopf operator turns into a zombie: alive,
    answering probes, and seeing nothing. Every stream is bounded (the server closes it after `watch_timeout`,
    the client gives up a little later), and one with no event or bookmark for `inactivity_timeout` is dropped
    and reopened from the last resourceVersion seen, so nothing in between is missed.
    """
    settings.watching.server_timeout = int(watch_timeout)  # the API server wants whole seconds
    settings.watching.client_timeout = watch_timeout + 15
    settings.watching.connect_timeout = 10
    settings.watching.inactivity_timeout = inactivity_timeout
    settings.watching.reconnect_backoff = 1.0
    settings.networking.request_timeout = 30
    settings.networking.connect_timeout = 10
    # Only the children the operator manages are streamed, filtered by the API server, not in this process.
    settings.watching.label_selectors["apps", "v1", "deployments"] = CHILD_SELECTOR
    settings.watching.label_selectors["v1", "services"] = CHILD_SELECTOR
    # One operator per cluster; no peering objects (and no RBAC for them).
    settings.peering.standalone = True
    # The resources are known at start-up; watching CRDs and namespaces would need more RBAC for nothing.
    settings.scanning.disabled = True
    # The operator posts its own events, one per meaningful change, not one per log line.
    settings.posting.enabled = False
    # Handler progress (retries) lives in the operator's own annotations, not in the schema-checked status.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=model.GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=model.GROUP, key="last-handled-configuration")
    # Handlers mostly wait on the API server: enough threads that a burst of new objects is not queued behind
    # a few slow writes.
    settings.execution.max_workers = workers
    return settings


def build_registry(reconciler: Reconciler, login: Callable[[], Any],
                   stopping: asyncio.Event | None = None) -> kopf.OperatorRegistry:
    """The handlers, in a registry of their own (several operators can share a process, as tests do).

    `stopping` is set as soon as kopf begins to shut down, so the operator's own loops end with it.
    """
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    def credentials(**_: Any) -> Any:
        return login()

    @kopf.on.cleanup(registry=registry)
    async def shutting_down(**_: Any) -> None:
        if stopping is not None:
            stopping.set()

    def microservice_changed(namespace: str, name: str, retry: int, **_: Any) -> None:
        try:
            result = reconciler.reconcile(namespace, name)
        except kube.TransientError as e:
            # What may heal is retried, later each time, for as long as it takes; nothing crashes.
            raise kopf.TemporaryError(e.message, delay=model.backoff(retry)) from e
        except kube.RejectedError as e:
            raise kopf.PermanentError(e.message) from e
        if result.applied:
            log.debug("%s/%s: applied %s", namespace, name, ", ".join(result.applied))

    for decorator, id_ in ((kopf.on.resume, "resume"), (kopf.on.create, "create"), (kopf.on.update, "update")):
        decorator(*RESOURCE, id=f"reconcile-on-{id_}", registry=registry)(microservice_changed)

    def child_changed(type: str | None, event: dict, namespace: str, **_: Any) -> None:
        if type is None:
            return  # the listing at start-up: the resume handlers reconcile every Microservice anyway
        owner = model.owner_name(event["object"])
        if owner is None:
            return
        for attempt in range(CHILD_ATTEMPTS):
            try:
                reconciler.reconcile(namespace, owner)
                return
            except kube.TransientError as e:
                if attempt == CHILD_ATTEMPTS - 1:
                    log.warning("%s/%s: %s; the next resync retries", namespace, owner, e.message)
                    return
                time.sleep(model.backoff(attempt, base=0.5))
            except kube.RejectedError as e:
                log.error("%s/%s: %s", namespace, owner, e.message)
                return

    kopf.on.event("apps", "v1", "deployments", id="deployment-event", labels={model.MANAGED_BY_LABEL: model.MANAGER},
                  registry=registry)(child_changed)
    kopf.on.event("v1", "services", id="service-event", labels={model.MANAGED_BY_LABEL: model.MANAGER},
                  registry=registry)(child_changed)
    return registry
