"""Running a lab's checks against a cluster: fetch each kind once, evaluate purely, watch for changes."""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterator

from labctl.checks import FetchKey, HttpResponse, Result, evaluate, evaluate_http, fetch_keys
from labctl.kube.client import ApiError, Client
from labctl.labs import Check, Lab


@dataclass(frozen=True)
class Outcome:
    check: Check
    result: Result

    @property
    def state(self) -> str:
        return {True: "pass", False: "fail", None: "not-verifiable"}[self.result.passed]


def plan(lab: Lab, namespace: str) -> set[FetchKey]:
    """Every (apiVersion, kind, namespace) list the lab's checks read."""
    keys: set[FetchKey] = set()
    for check in lab.checks:
        if check.type != "http":
            keys |= set(fetch_keys(check, namespace))
    return keys


def fetch(client: Client, keys: set[FetchKey]) -> dict[FetchKey, list[dict]]:
    """One list call per key. A kind the server does not know (CRD not installed) reads as empty."""
    objects: dict[FetchKey, list[dict]] = {}
    for key in sorted(keys, key=lambda k: (k.api_version, k.kind, k.namespace or "")):
        try:
            objects[key], _ = client.list(key.api_version, key.kind, key.namespace)
        except ApiError as e:
            if e.status != 404:
                raise
            objects[key] = []
    return objects


def _http(client: Client, check: Check, namespace: str) -> Result:
    spec = check.spec
    try:
        resp = client.service_proxy(spec.get("namespace", namespace), spec["service"], spec["port"],
                                    spec.get("path", "/"), method=spec.get("method", "GET"),
                                    timeout=float(spec.get("timeout_seconds", 10)))
    except Exception as e:  # the reason is reported in the check's words; the run goes on
        from labctl.errors import ClusterUnreachable

        if isinstance(e, ClusterUnreachable) and "timed out" not in str(e):
            raise
        return evaluate_http(check, None, str(e))
    return evaluate_http(check, HttpResponse(resp.status, resp.body, resp.elapsed_ms, resp.headers), None)


def run(client: Client, lab: Lab, namespace: str, *, pods_run: bool) -> list[Outcome]:
    """Evaluate every check of a lab once."""
    objects = fetch(client, plan(lab, namespace))
    outcomes = []
    for check in lab.checks:
        if check.type == "http":
            if not pods_run:
                result = Result(None, "not verifiable on this provider: pods do not run")
            else:
                result = _http(client, check, namespace)
        else:
            result = evaluate(check, objects, namespace, pods_run=pods_run)
        outcomes.append(Outcome(check, result))
    return outcomes


def changes(client: Client, keys: set[FetchKey], stop: threading.Event, *, settle: float = 0.3) -> Iterator[None]:
    """Yield once per burst of changes to any watched list (Kubernetes watches, not polling), until `stop`."""
    events: queue.Queue = queue.Queue()

    def follow(key: FetchKey) -> None:
        while not stop.is_set():
            try:
                _, rv = client.list(key.api_version, key.kind, key.namespace)
                for event in client.watch(key.api_version, key.kind, key.namespace, resource_version=rv,
                                          timeout_seconds=60):
                    if stop.is_set():
                        return
                    if event.get("type") in ("ADDED", "MODIFIED", "DELETED"):
                        events.put(key)
                    elif event.get("type") == "ERROR":
                        break  # resourceVersion too old: list again
            except ApiError as e:
                if e.status == 404:
                    stop.wait(2)  # the kind is not served yet (a CRD the learner has still to install)
                    continue
                events.put(e)
                return
            except Exception as e:  # reported by the consumer as one line
                events.put(e)
                return

    for key in keys:
        threading.Thread(target=follow, args=(key,), daemon=True).start()
    while not stop.is_set():
        try:
            item = events.get(timeout=0.5)
        except queue.Empty:
            continue
        if isinstance(item, Exception):
            raise item
        deadline = time.monotonic() + settle
        while time.monotonic() < deadline:  # collapse a rollout's burst of updates into one re-check
            try:
                more = events.get(timeout=max(0.0, deadline - time.monotonic()))
                if isinstance(more, Exception):
                    raise more
            except queue.Empty:
                break
        yield None


def summary(outcomes: list[Outcome]) -> dict[str, int]:
    counts = {"pass": 0, "fail": 0, "not-verifiable": 0}
    for o in outcomes:
        counts[o.state] += 1
    return counts


Printer = Callable[[list[Outcome]], None]
