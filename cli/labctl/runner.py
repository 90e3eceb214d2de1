"""Running a lab's checks against a cluster: fetch each kind once, evaluate purely, watch for changes."""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterator

from labctl.checks import NOT_ON_PROVIDER, FetchKey, Result, evaluate, fetch_keys
from labctl.kube.client import ApiError, Client
from labctl.labs import Check, Lab


@dataclass(frozen=True)
class Outcome:
    check: Check
    result: Result

    @property
    def state(self) -> str:
        return {True: "pass", False: "fail", None: "not-verifiable"}[self.result.passed]


# Checks that send requests or change the cluster, instead of reading the objects fetched once per run.
ACTING = ("http", "probe", "scenario")


def plan(lab: Lab, namespace: str) -> set[FetchKey]:
    """Every (apiVersion, kind, namespace) list the lab's checks read."""
    keys: set[FetchKey] = set()
    for check in lab.checks:
        if check.type not in ACTING:
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


def run(client: Client, lab: Lab, namespace: str, *, pods_run: bool) -> list[Outcome]:
    """Evaluate every check of a lab once.

    Checks that read objects are judged on one fetch; the others run in the lab's order, each after the checks
    its `after` names (which come earlier in the lab). Consecutive probe checks share probe Pods.
    """
    from labctl import behaviour

    objects = fetch(client, plan(lab, namespace))
    results: dict[str, Result] = {}
    probes: list[Check] = []

    def flush() -> None:
        if probes:
            done = behaviour.run_probes(client, namespace, [behaviour.Probe.of(c.spec) for c in probes])
            results.update((c.id, r) for c, r in zip(probes, done, strict=True))
            probes.clear()

    for check in lab.checks:
        after = check.spec.get("after") or []
        if any(p.id in after for p in probes):
            flush()
        if check.type not in ACTING:
            results[check.id] = (after and waiting_for(after, results)) or evaluate(
                check, objects, namespace, pods_run=pods_run)
            continue
        if not pods_run:
            results[check.id] = Result(None, NOT_ON_PROVIDER)
            continue
        if check.type != "probe":
            flush()
        waiting = waiting_for(after, results)
        if waiting is not None:
            results[check.id] = waiting
        elif check.type == "probe":
            probes.append(check)
        elif check.type == "http":
            results[check.id] = behaviour.http_request(client, check.spec, namespace,
                                                       float(check.spec.get("timeout_seconds", 10)))
        else:
            results[check.id] = behaviour.run_scenario(client, check.spec, namespace)
    flush()
    return [Outcome(check, results[check.id]) for check in lab.checks]


def waiting_for(after: list[str], results: dict[str, Result]) -> Result | None:
    """Why a check is not tried yet: a check it comes after has not passed (None: go ahead)."""
    for other in after:
        seen = results.get(other)
        if seen is None or seen.passed is None:
            return Result(None, f"not tried: {other} cannot be verified here")
        if seen.passed is False:
            return Result(False, f"not tried until {other} passes")
    return None


def changes(client: Client, keys: set[FetchKey], stop: threading.Event, *, settle: float = 0.3,
            muted: threading.Event | None = None) -> Iterator[None]:
    """Yield once per burst of changes to any watched list (Kubernetes watches, not polling), until `stop`.

    Changes seen while `muted` is set are dropped: they are the run's own (a scenario patching and restarting).
    """
    events: queue.Queue = queue.Queue()

    def follow(key: FetchKey) -> None:
        while not stop.is_set():
            try:
                _, rv = client.list(key.api_version, key.kind, key.namespace)
                for event in client.watch(key.api_version, key.kind, key.namespace, resource_version=rv,
                                          timeout_seconds=60):
                    if stop.is_set():
                        return
                    if event.get("type") in ("ADDED", "MODIFIED", "DELETED") and not (muted and muted.is_set()):
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
