"""The operator against a real API server: create, scale, drift repair, invalid specs, transient errors, a kill
half-way, deletion, dead watch streams, probes and a clean stop."""

from __future__ import annotations

import select
import socket
import subprocess
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from labctl.toolbox import binary

OWNER = "labctl.dev/microservice"
PROBES = {"readiness": {"path": "/readyz"}, "liveness": {"path": "/healthz"}}


def owner_uid(obj: dict) -> str | None:
    refs = obj["metadata"].get("ownerReferences") or []
    return next((r["uid"] for r in refs if r["kind"] == "Microservice" and r.get("controller")), None)


def test_create_scale_and_report(run_operator, namespace, ms_api, wait_until, cluster):
    op = run_operator()
    ms = ms_api.create(namespace, "web", replicas=2, env=[{"name": "GREETING", "value": "hi"}], probes=PROBES)
    wait_until(lambda: ms_api.is_ready(namespace, "web"), what="web Ready")

    dep = ms_api.deployment(namespace, "web")
    svc = ms_api.service(namespace, "web")
    assert owner_uid(dep) == owner_uid(svc) == ms["metadata"]["uid"]
    assert dep["spec"]["replicas"] == 2
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "labctl.local/hello:1.0"
    assert {"name": "GREETING", "value": "hi"} in container["env"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert svc["spec"]["ports"][0]["port"] == 80 and svc["spec"]["ports"][0]["targetPort"] == "http"
    status = ms_api.get(namespace, "web")["status"]
    assert (status["readyReplicas"], status["observedGeneration"]) == (2, 1)
    assert status["selector"] == f"{OWNER}=web"
    assert {"Created", "Ready"} <= set(ms_api.reasons(namespace, "web"))

    # kubectl understands the conditions: what a script or a pipeline would wait on.
    done = subprocess.run([str(binary("kubectl")), "--kubeconfig", str(cluster.kubeconfig), "--context",
                           cluster.context, "-n", namespace, "wait", "--for=condition=Ready", "microservice/web",
                           "--timeout=30s"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr

    # Scaling through the scale subresource, as `kubectl scale microservice web --replicas=4` does.
    ms_api.scale(namespace, "web", 4)
    wait_until(lambda: (ms_api.deployment(namespace, "web") or {}).get("spec", {}).get("replicas") == 4,
               what="Deployment scaled")
    wait_until(lambda: ms_api.is_ready(namespace, "web")
               and ms_api.get(namespace, "web")["status"]["readyReplicas"] == 4, what="4 ready")
    assert ms_api.get(namespace, "web")["status"]["observedGeneration"] == 2
    wait_until(lambda: "Scaled" in ms_api.reasons(namespace, "web"), what="a Scaled event")
    assert op.probe("/healthz") == 200 and op.probe("/readyz") == 200 and op.probe("/nowhere") == 404


def test_drift_is_repaired_within_seconds(run_operator, namespace, ms_api, wait_until):
    from kubernetes.client import AppsV1Api, CoreV1Api

    run_operator()
    ms_api.create(namespace, "web", replicas=2)
    wait_until(lambda: ms_api.is_ready(namespace, "web"), what="web Ready")
    apps, core = AppsV1Api(ms_api.client), CoreV1Api(ms_api.client)

    first_uid = ms_api.deployment(namespace, "web")["metadata"]["uid"]
    started = time.monotonic()
    apps.delete_namespaced_deployment("web", namespace)
    wait_until(lambda: (ms_api.deployment(namespace, "web") or {}).get("metadata", {}).get("uid") not in
               (None, first_uid), timeout=10, what="Deployment recreated")
    assert time.monotonic() - started < 10

    apps.patch_namespaced_deployment("web", namespace, [
        {"op": "replace", "path": "/spec/replicas", "value": 1},
        {"op": "replace", "path": "/spec/template/spec/containers/0/image", "value": "evil:1"}])
    wait_until(lambda: (lambda d: d["spec"]["replicas"] == 2 and
                        d["spec"]["template"]["spec"]["containers"][0]["image"] == "labctl.local/hello:1.0")(
        ms_api.deployment(namespace, "web")), timeout=10, what="Deployment restored")

    # A renumbered port is a new list item under server-side apply; the operator still puts its own back.
    core.patch_namespaced_service("web", namespace, [{"op": "replace", "path": "/spec/ports/0/port", "value": 81}])
    wait_until(lambda: [p["port"] for p in ms_api.service(namespace, "web")["spec"]["ports"]] == [80], timeout=10,
               what="Service port restored")

    service_uid = ms_api.service(namespace, "web")["metadata"]["uid"]
    core.delete_namespaced_service("web", namespace)
    wait_until(lambda: (ms_api.service(namespace, "web") or {}).get("metadata", {}).get("uid") not in
               (None, service_uid), timeout=10, what="Service recreated")
    wait_until(lambda: ms_api.is_ready(namespace, "web"), what="Ready again")
    reasons = ms_api.reasons(namespace, "web")
    assert reasons.count("DriftRepaired") >= 2, reasons


def test_invalid_specs_degrade_without_a_crash(run_operator, namespace, ms_api, wait_until):
    from kubernetes.client import AdmissionregistrationV1Api, ApiException, AppsV1Api

    op = run_operator()
    ms_api.create(namespace, "web", image="labctl.local/hello:latest")
    degraded = wait_until(lambda: (ms_api.condition(namespace, "web", "Degraded") or {}).get("status") == "True"
                          and ms_api.condition(namespace, "web", "Degraded"), what="Degraded")
    assert degraded["reason"] == "InvalidSpec" and "not pinned" in degraded["message"]
    assert ms_api.condition(namespace, "web", "Ready")["status"] == "False"
    wait_until(lambda: "InvalidSpec" in ms_api.reasons(namespace, "web"), what="an InvalidSpec event")
    assert ms_api.deployment(namespace, "web") is None
    assert op.alive()

    ms_api.patch(namespace, "web", {"image": "labctl.local/hello:1.0", "replicas": 2})
    wait_until(lambda: ms_api.is_ready(namespace, "web"), what="Ready once fixed")
    assert (ms_api.condition(namespace, "web", "Degraded") or {}).get("status") == "False"

    # A bad edit of a running service: refused, and what runs keeps running as it was.
    ms_api.patch(namespace, "web", {"image": "labctl.local/hello:2.0", "probes": {
        "readiness": {"path": "/healthz"}, "liveness": {"path": "/healthz"}}})
    wait_until(lambda: (ms_api.condition(namespace, "web", "Degraded") or {}).get("reason") == "InvalidSpec",
               what="Degraded again")
    dep = ms_api.deployment(namespace, "web")
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == "labctl.local/hello:1.0"

    # Refused by the API server when the Deployment is written (here by an admission policy, as a policy engine
    # would): Degraded with the server's reason, and not retried in a loop.
    policy = f"max-replicas-{namespace}"
    admission = AdmissionregistrationV1Api(ms_api.client)
    admission.create_validating_admission_policy({
        "metadata": {"name": policy},
        "spec": {"failurePolicy": "Fail",
                 "matchConstraints": {"resourceRules": [{"apiGroups": ["apps"], "apiVersions": ["v1"],
                                                         "operations": ["CREATE", "UPDATE"],
                                                         "resources": ["deployments"]}]},
                 "validations": [{"expression": "object.spec.replicas <= 5",
                                  "message": "at most 5 replicas in this namespace"}]}})
    admission.create_validating_admission_policy_binding({
        "metadata": {"name": policy},
        "spec": {"policyName": policy, "validationActions": ["Deny"],
                 "matchResources": {"namespaceSelector": {"matchLabels": {
                     "kubernetes.io/metadata.name": namespace}}}}})
    try:
        apps = AppsV1Api(ms_api.client)
        probe = {"metadata": {"name": "probe"}, "spec": {
            "replicas": 6, "selector": {"matchLabels": {"a": "b"}},
            "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "x:1"}]}}}}

        def policy_active() -> bool:
            try:
                apps.create_namespaced_deployment(namespace, probe, dry_run="All")
            except ApiException as e:
                return e.status in (403, 422)
            return False

        wait_until(policy_active, what="the admission policy in force")
        ms_api.patch(namespace, "web", {"image": "labctl.local/hello:1.0", "probes": None, "replicas": 6})
        rejected = wait_until(lambda: (ms_api.condition(namespace, "web", "Degraded") or {}).get("reason")
                              == "Rejected" and ms_api.condition(namespace, "web", "Degraded"), what="Rejected")
        assert "Deployment web" in rejected["message"] and "at most 5 replicas" in rejected["message"]
        assert ms_api.deployment(namespace, "web")["spec"]["replicas"] == 2
    finally:
        admission.delete_validating_admission_policy_binding(policy)
        admission.delete_validating_admission_policy(policy)

    # Refused at the door by the CRD's schema: nothing reaches the operator.
    for bad in ({"replicas": -1}, {"image": ""}, {"port": 70000}, {"resources": {"limits": {"cpu": "lots"}}}):
        with pytest.raises(ApiException) as e:
            ms_api.create(namespace, "bad", **bad)
        assert e.value.status == 422
    with pytest.raises(ApiException) as e:
        ms_api.create(namespace, "Not-A-Label", replicas=1)
    assert e.value.status == 422

    # A Deployment of that name that belongs to someone else is never taken over.
    AppsV1Api(ms_api.client).create_namespaced_deployment(namespace, {
        "metadata": {"name": "theirs"}, "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "theirs"}},
                                                 "template": {"metadata": {"labels": {"app": "theirs"}},
                                                              "spec": {"containers": [{"name": "c", "image": "x:1"}]}}}})
    ms_api.create(namespace, "theirs")
    taken = wait_until(lambda: (ms_api.condition(namespace, "theirs", "Degraded") or {}).get("reason") == "NameTaken"
                       and ms_api.condition(namespace, "theirs", "Degraded"), what="NameTaken")
    assert "already exists" in taken["message"]
    assert ms_api.deployment(namespace, "theirs")["spec"]["template"]["spec"]["containers"][0]["image"] == "x:1"
    assert op.alive()


def test_transient_api_errors_are_retried_with_backoff(run_operator, namespace, ms_api, wait_until):
    """A validating webhook that cannot be reached makes the API server answer 500 to every Deployment write in
    this namespace: a real transient failure, outside the operator's control."""
    from kubernetes.client import AdmissionregistrationV1Api

    admission = AdmissionregistrationV1Api(ms_api.client)
    name = f"fail-{namespace}"
    admission.create_validating_webhook_configuration({
        "metadata": {"name": name},
        "webhooks": [{
            "name": "unreachable.labctl.test",
            "clientConfig": {"url": "https://127.0.0.1:1/validate"},
            "rules": [{"apiGroups": ["apps"], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"],
                       "resources": ["deployments"], "scope": "Namespaced"}],
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
            "failurePolicy": "Fail", "sideEffects": "None", "admissionReviewVersions": ["v1"], "timeoutSeconds": 2,
        }],
    })
    try:
        op = run_operator()
        ms_api.create(namespace, "web")
        retrying = wait_until(lambda: (ms_api.condition(namespace, "web", "Progressing") or {}).get("reason")
                              == "Retrying" and ms_api.condition(namespace, "web", "Progressing"), what="Retrying")
        assert "Deployment web" in retrying["message"]
        time.sleep(3)  # several attempts fail, each a little later than the last
        assert ms_api.deployment(namespace, "web") is None
        assert op.alive()
    finally:
        admission.delete_validating_webhook_configuration(name)
    wait_until(lambda: ms_api.is_ready(namespace, "web"), timeout=60, what="Ready once the API heals")
    assert (ms_api.condition(namespace, "web", "Degraded") or {}).get("status") == "False"


def test_killed_half_way_and_restarted_creates_nothing_twice(run_operator, namespace, ms_api, wait_until):
    from kubernetes.client import AppsV1Api, CoreV1Api

    names = [f"svc-{i:02d}" for i in range(30)]
    op = run_operator()
    for name in names:
        ms_api.create(namespace, name)
    apps, core = AppsV1Api(ms_api.client), CoreV1Api(ms_api.client)
    wait_until(lambda: apps.list_namespaced_deployment(namespace).items, what="the first Deployment")
    op.kill()  # in the middle of the burst: some have children, some half, some none
    half = len(apps.list_namespaced_deployment(namespace).items)

    run_operator()
    wait_until(lambda: all(ms_api.is_ready(namespace, n) for n in names), timeout=120, what="all 30 Ready")
    uids = {n: ms_api.get(namespace, n)["metadata"]["uid"] for n in names}
    deployments = apps.list_namespaced_deployment(namespace).items
    services = core.list_namespaced_service(namespace).items
    assert sorted(d.metadata.name for d in deployments) == names, f"{half} existed at the kill"
    assert sorted(s.metadata.name for s in services) == names
    for obj in [*deployments, *services]:
        (ref,) = obj.metadata.owner_references
        assert ref.uid == uids[obj.metadata.name] and ref.controller
    deployment_uids = {d.metadata.uid for d in deployments}
    for rs in apps.list_namespaced_replica_set(namespace).items:  # every ReplicaSet belongs to a live Deployment
        assert {r.uid for r in rs.metadata.owner_references} & deployment_uids
    for name in names:
        assert not ms_api.get(namespace, name)["metadata"].get("finalizers")


def test_restart_of_a_converged_operator_writes_nothing(run_operator, namespace, ms_api, wait_until):
    from kubernetes.client import AppsV1Api, CoreV1Api

    names = ("a", "b", "c")
    op = run_operator()
    for name in names:
        ms_api.create(namespace, name)
    wait_until(lambda: all(ms_api.is_ready(namespace, n) for n in names), what="Ready")
    apps, core = AppsV1Api(ms_api.client), CoreV1Api(ms_api.client)

    def snapshot() -> dict:
        return {
            "services": {s.metadata.name: s.metadata.resource_version
                         for s in core.list_namespaced_service(namespace).items},
            "deployments": {d.metadata.name: d.metadata.generation
                            for d in apps.list_namespaced_deployment(namespace).items},
            "status": {n: ms_api.get(namespace, n)["status"] for n in names},
            "events": len(core.list_namespaced_event(namespace).items),
        }

    before = snapshot()
    op.kill()
    run_operator()
    time.sleep(7)  # start-up resumes every object, and a resync period passes
    assert snapshot() == before


def test_delete_leaves_nothing_behind_even_without_the_operator(run_operator, namespace, ms_api, wait_until):
    from kubernetes.client import AppsV1Api, CoreV1Api

    op = run_operator()
    ms_api.create(namespace, "web", replicas=2)
    ms_api.create(namespace, "api", replicas=1)
    wait_until(lambda: ms_api.is_ready(namespace, "web") and ms_api.is_ready(namespace, "api"), what="Ready")
    apps, core = AppsV1Api(ms_api.client), CoreV1Api(ms_api.client)

    def left(name: str) -> list[str]:
        sel = f"{OWNER}={name}"
        return ([f"deployment/{d.metadata.name}" for d in apps.list_namespaced_deployment(namespace, label_selector=sel).items]
                + [f"replicaset/{r.metadata.name}" for r in apps.list_namespaced_replica_set(namespace, label_selector=sel).items]
                + [f"service/{s.metadata.name}" for s in core.list_namespaced_service(namespace, label_selector=sel).items]
                + [f"pod/{p.metadata.name}" for p in core.list_namespaced_pod(namespace, label_selector=sel).items])

    ms_api.delete(namespace, "web")
    wait_until(lambda: ms_api.get(namespace, "web") is None, timeout=5, what="web gone (no finalizer)")
    wait_until(lambda: not left("web"), timeout=60, what="web's children gone")

    op.stop()  # owner references, not the operator, clean up: deletion works while it is down
    ms_api.delete(namespace, "api")
    wait_until(lambda: ms_api.get(namespace, "api") is None, timeout=5, what="api gone")
    wait_until(lambda: not left("api"), timeout=60, what="api's children gone")


class StallingProxy:
    """A TCP proxy to the API server whose open connections can be made to go silent without closing: what a
    half-dead NAT, load balancer or network leaves a watch stream as."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.pairs: list[tuple[socket.socket, socket.socket]] = []
        self.frozen: set[int] = set()
        self.closed = False
        self.lock = threading.Lock()
        self.threads: list[threading.Thread] = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            with self.lock:
                if self.closed:
                    client.close()
                    upstream.close()
                    return
                self.pairs.append((client, upstream))
            thread = threading.Thread(target=self._pump, args=(client, upstream), daemon=True)
            self.threads.append(thread)
            thread.start()

    def _pump(self, client: socket.socket, upstream: socket.socket) -> None:
        peers = {client: upstream, upstream: client}
        try:
            while not self.closed:
                if id(client) in self.frozen:
                    time.sleep(0.05)
                    continue
                readable, _, _ = select.select(list(peers), [], [], 0.05)
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    peers[sock].sendall(data)
        except (OSError, ValueError):
            return
        finally:
            client.close()
            upstream.close()

    def freeze(self) -> int:
        """Silence every connection open now; new ones work. Returns how many were frozen."""
        for client, _ in self.pairs:
            self.frozen.add(id(client))
        return len(self.frozen)

    def close(self) -> None:
        with self.lock:
            self.closed = True
        self.listener.close()
        for thread in self.threads:
            thread.join(timeout=5)
        for pair in self.pairs:
            for sock in pair:
                sock.close()


def test_a_silent_watch_stream_is_noticed_and_reopened(run_operator, namespace, ms_api, wait_until, cluster,
                                                       tmp_path):
    config = yaml.safe_load(Path(cluster.kubeconfig).read_text())
    context = next(c["context"] for c in config["contexts"] if c["name"] == cluster.context)
    entry = next(c for c in config["clusters"] if c["name"] == context["cluster"])
    server = urlsplit(entry["cluster"]["server"])
    proxy = StallingProxy(server.hostname, server.port)
    try:
        entry["cluster"]["server"] = f"https://127.0.0.1:{proxy.port}"
        proxied = tmp_path / "proxied-kubeconfig"
        proxied.write_text(yaml.safe_dump(config))
        # No resync to fall back on: only a reopened watch can bring the new Microservice to the operator.
        op = run_operator("--inactivity-timeout", "3", "--watch-timeout", "600", "--resync-seconds", "600",
                          kubeconfig=proxied)
        ms_api.create(namespace, "before")
        wait_until(lambda: ms_api.is_ready(namespace, "before"), what="Ready through the proxy")

        assert proxy.freeze() >= 3  # the watches on Microservices, Deployments and Services at least
        ms_api.create(namespace, "after")
        wait_until(lambda: ms_api.deployment(namespace, "after"), timeout=60, what="Deployment after the stall")
        wait_until(lambda: ms_api.is_ready(namespace, "after"), timeout=30, what="Ready after the stall")
        assert op.alive()
    finally:
        proxy.close()


def test_stops_cleanly_on_sigterm(run_operator):
    op = run_operator()
    started = time.monotonic()
    assert op.stop() == 0
    assert time.monotonic() - started < 10, op.output()


def test_stops_when_its_kubeconfig_is_deleted(run_operator, cluster, tmp_path):
    copy = tmp_path / "kubeconfig"
    copy.write_text(Path(cluster.kubeconfig).read_text())
    op = run_operator("--exit-with-kubeconfig", kubeconfig=copy)
    copy.unlink()
    op.proc.wait(timeout=30)
    assert op.proc.returncode == 0
    assert "was deleted" in op.output()


@pytest.mark.unit
def test_health_readiness_follows_the_api():
    from labctl_operator.health import Health

    now = [100.0]
    health = Health(stale_after=30, clock=lambda: now[0])
    assert health.readiness() == (False, "starting: the watches are not open yet")
    health.started = True
    health.last_api_error = "connection refused"
    assert health.readiness()[0] is False
    health.last_api_ok = 100.0
    assert health.readiness() == (True, "ok")
    now[0] = 131.0
    ready, why = health.readiness()
    assert not ready and "connection refused" in why
