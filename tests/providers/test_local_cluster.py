"""The local provider runs real pods: images without a registry, DNS, Services, probes, PodSecurity,
NetworkPolicy and volumes all behave as on any cluster; `down` leaves the host as it found it.

The workload is `httpecho` (testdata/httpecho), a static Go HTTP server and client in an image of one file.
The last test takes the cluster down and brings it up again, so it runs last.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
import time

import pytest
from kubernetes import client, config

pytestmark = [pytest.mark.local, pytest.mark.timeout(300)]

HTTPECHO = "labctl.local/httpecho:test"
PAUSE = "labctl.local/pause:1.0"
SOURCE = __import__("pathlib").Path(__file__).parent / "testdata" / "httpecho" / "main.go"
RESTRICTED = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "runAsNonRoot": True,
              "runAsUser": 65532, "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}


def eventually(probe, timeout=60.0, interval=0.25, what="the condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what} (last seen: {last!r})")


@pytest.fixture(scope="module")
def api(local_cluster):
    api_client = config.new_client_from_config(config_file=str(local_cluster.kubeconfig),
                                               context=local_cluster.context)
    yield api_client
    api_client.close()


@pytest.fixture(scope="module")
def httpecho(local_cluster, tmp_path_factory):
    """The test workload's image, built from its Go source and imported into the node."""
    from labctl.images.archive import write_image

    go = shutil.which("go")
    if go is None:
        pytest.fail("Go is needed to build the test workload", pytrace=False)
    out = tmp_path_factory.mktemp("httpecho")
    subprocess.run([go, "build", "-trimpath", "-ldflags=-s -w", "-o", str(out / "httpecho"), str(SOURCE)],
                   cwd=out, env={**__import__("os").environ, "CGO_ENABLED": "0"}, check=True, timeout=300)
    tar = out / "httpecho.tar"
    write_image(tar, HTTPECHO, {"/httpecho": out / "httpecho"}, entrypoint=["/httpecho"], user="65532:65532")
    local_cluster.provider.import_image_tar(tar)
    return HTTPECHO


@pytest.fixture
def ns(request, api):
    core = client.CoreV1Api(api)
    name = f"t-local-{request.node.name[5:30].replace('_', '-').strip('-')}-{secrets.token_hex(2)}"
    core.create_namespace({"metadata": {"name": name}})
    yield name
    core.delete_namespace(name, grace_period_seconds=0)


def container(name, image, args=(), **extra):
    return {"name": name, "image": image, "imagePullPolicy": "IfNotPresent", "args": list(args),
            "securityContext": dict(RESTRICTED), **extra}


def server_deployment(name, image, replicas, labels=None):
    labels = labels or {"app": name}
    probe = {"httpGet": {"path": "/ready", "port": 8080}, "periodSeconds": 1, "failureThreshold": 1}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                 "template": {"metadata": {"labels": labels}, "spec": {
                     "terminationGracePeriodSeconds": 1,
                     "containers": [container("server", image, ["serve"], readinessProbe=probe,
                                              ports=[{"containerPort": 8080}])]}}},
    }


def service(name, labels=None):
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
            "spec": {"selector": labels or {"app": name}, "ports": [{"port": 80, "targetPort": 8080}]}}


def available(apps, ns, name, replicas):
    def check():
        d = apps.read_namespaced_deployment_status(name, ns)
        return (d.status.ready_replicas or 0) == replicas and (d.status.available_replicas or 0) == replicas
    return check


def run_to_completion(core, ns, name, image, args, labels=None, timeout=60.0):
    """Run a one-shot pod; returns (phase, logs)."""
    core.create_namespaced_pod(ns, {
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
                 "containers": [container("client", image, args)]},
    })

    def done():
        phase = core.read_namespaced_pod(name, ns).status.phase
        return phase if phase in ("Succeeded", "Failed") else None

    phase = eventually(done, timeout, what=f"pod {name} to finish")
    return phase, core.read_namespaced_pod_log(name, ns)


def proxy_get(api, ns, pod, path):
    """GET a path of a pod's port 8080 through the API server's pod proxy (an error status raises)."""
    return client.CoreV1Api(api).connect_get_namespaced_pod_proxy_with_path(f"{pod}:8080", ns, path)


def ready_endpoints(discovery, ns, service_name):
    slices = discovery.list_namespaced_endpoint_slice(ns, label_selector=f"kubernetes.io/service-name={service_name}")
    return {(e.target_ref.name if e.target_ref else None): bool(e.conditions and e.conditions.ready)
            for s in slices.items for e in s.endpoints or []}


# -- the cluster ----------------------------------------------------------------------------------------------

def test_every_component_is_healthy_the_node_ready_and_dns_available(local_cluster, api):
    provider = local_cluster.provider
    st = provider.status()
    unhealthy = [(c.name, c.detail) for c in st.components if not c.healthy]
    assert st.healthy and not unhealthy, unhealthy
    names = {c.name for c in st.components}
    assert {"containerd", "kubelet", "kube-proxy", "kube-router", "buildkitd", "local-path-provisioner",
            "node labctl-local", "dns (CoreDNS)"} <= names
    assert (st.nodes_ready, st.nodes_total) == (1, 1)

    node = client.CoreV1Api(api).read_node("labctl-local")
    internal = [a.address for a in node.status.addresses if a.type == "InternalIP"]
    assert internal == [provider.node_ip] and not provider.node_ip.startswith("127.")
    endpoints = client.CoreV1Api(api).read_namespaced_endpoints("kubernetes", "default")
    assert [a.ip for s in endpoints.subsets for a in s.addresses] == [provider.node_ip]
    memory = provider.memory_bytes()
    print(f"\nlocal cluster: up in {local_cluster.up_seconds:.1f} s, idle RSS {memory / 2**20:.0f} MiB")
    assert memory > 0


def test_up_on_a_running_cluster_is_a_no_op(local_cluster):
    provider = local_cluster.provider
    pids = {n: provider.procs.read(n).pid for n in provider.procs.names()}
    said = []
    started = time.monotonic()
    provider.up(progress=said.append)
    elapsed = time.monotonic() - started
    assert {n: provider.procs.read(n).pid for n in provider.procs.names()} == pids
    assert any("already up" in line for line in said), said
    assert elapsed < 5, f"a second `up` took {elapsed:.1f} s"


def test_a_three_replica_deployment_becomes_ready(api, ns):
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    labels = {"app": "sleepers"}
    apps.create_namespaced_deployment(ns, {
        "metadata": {"name": "sleepers"},
        "spec": {"replicas": 3, "selector": {"matchLabels": labels},
                 "template": {"metadata": {"labels": labels},
                              "spec": {"containers": [container("pause", PAUSE)]}}},
    })
    eventually(available(apps, ns, "sleepers", 3), what="3 ready replicas")
    pods = core.list_namespaced_pod(ns, label_selector="app=sleepers").items
    assert {p.spec.node_name for p in pods} == {"labctl-local"}
    ips = {p.status.pod_ip for p in pods}
    assert len(ips) == 3 and all(ip.startswith("10.244.0.") for ip in ips)


def test_a_pod_resolves_a_service_by_name_and_gets_an_answer_through_its_cluster_ip(api, ns, httpecho):
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    apps.create_namespaced_deployment(ns, server_deployment("web", httpecho, 2))
    core.create_namespaced_service(ns, service("web"))
    eventually(available(apps, ns, "web", 2), what="2 ready web replicas")
    phase, logs = run_to_completion(core, ns, "client", httpecho,
                                    ["get", "-attempts", "5", "-interval", "1s", "http://web/"])
    assert phase == "Succeeded", logs
    assert "ok 200 hello from web-" in logs.splitlines()[-1]


def test_a_failing_readiness_probe_takes_the_pod_out_of_the_endpointslice(api, ns, httpecho):
    apps, core, discovery = client.AppsV1Api(api), client.CoreV1Api(api), client.DiscoveryV1Api(api)
    apps.create_namespaced_deployment(ns, server_deployment("web", httpecho, 2))
    core.create_namespaced_service(ns, service("web"))
    eventually(available(apps, ns, "web", 2), what="2 ready web replicas")
    eventually(lambda: list(ready_endpoints(discovery, ns, "web").values()) == [True, True],
               what="2 ready endpoints")
    sick, healthy = sorted(p.metadata.name for p in core.list_namespaced_pod(ns, label_selector="app=web").items)

    assert "readiness will fail" in proxy_get(api, ns, sick, "unready")

    eventually(lambda: ready_endpoints(discovery, ns, "web") == {sick: False, healthy: True},
               what=f"{sick} not ready and {healthy} ready in the EndpointSlice")
    conditions = {c.type: c.status for c in core.read_namespaced_pod(sick, ns).status.conditions}
    assert conditions["Ready"] == "False"


def test_a_podsecurity_restricted_workload_really_runs_as_non_root_on_a_read_only_root(api, ns, httpecho):
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    core.patch_namespace(ns, {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted"}}})
    with pytest.raises(client.ApiException) as refused:
        core.create_namespaced_pod(ns, {"metadata": {"name": "root"}, "spec": {"containers": [
            {"name": "c", "image": httpecho, "securityContext": {"privileged": True}}]}})
    assert refused.value.status == 403 and "violates PodSecurity" in refused.value.body

    apps.create_namespaced_deployment(ns, server_deployment("locked", httpecho, 1))
    eventually(available(apps, ns, "locked", 1), what="the restricted workload to be ready")
    pod = core.list_namespaced_pod(ns, label_selector="app=locked").items[0].metadata.name
    assert proxy_get(api, ns, pod, "whoami").startswith("uid=65532 ")
    assert "read-only file system" in proxy_get(api, ns, pod, "write-root")


def test_networkpolicy_denies_then_allows_by_label(api, ns, httpecho):
    apps, core, net = client.AppsV1Api(api), client.CoreV1Api(api), client.NetworkingV1Api(api)
    apps.create_namespaced_deployment(ns, server_deployment("web", httpecho, 1))
    core.create_namespaced_service(ns, service("web"))
    eventually(available(apps, ns, "web", 1), what="the web server to be ready")
    get = ["get", "-attempts", "4", "-interval", "1s", "-timeout", "1s", "http://web/"]

    phase, logs = run_to_completion(core, ns, "before", httpecho, get)
    assert phase == "Succeeded", f"without a policy the client must get through:\n{logs}"

    net.create_namespaced_network_policy(ns, {
        "metadata": {"name": "deny-all"}, "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}})
    time.sleep(2)  # kube-router applies a new policy within about a second
    phase, logs = run_to_completion(core, ns, "denied", httpecho, get)
    last = logs.splitlines()[-2:]
    assert phase == "Failed" and all(line.startswith("error") for line in last), logs
    # Denied by the policy, not for want of a backend: the server stayed ready (the node may probe it).
    assert available(apps, ns, "web", 1)()

    net.create_namespaced_network_policy(ns, {
        "metadata": {"name": "allow-clients"},
        "spec": {"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Ingress"],
                 "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "client"}}}]}]}})
    time.sleep(2)
    phase, logs = run_to_completion(core, ns, "allowed", httpecho, get, labels={"role": "client"})
    assert phase == "Succeeded" and logs.splitlines()[-1].startswith("ok 200"), logs


def test_a_claim_of_the_default_storage_class_gets_a_volume_on_the_node(local_cluster, api, ns, httpecho):
    core = client.CoreV1Api(api)
    core.create_namespaced_persistent_volume_claim(ns, {
        "metadata": {"name": "data"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "16Mi"}}}})
    core.create_namespaced_pod(ns, {
        "metadata": {"name": "writer"},
        "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
                 "containers": [container("w", httpecho, ["write", "/data/hello"],
                                          volumeMounts=[{"name": "data", "mountPath": "/data"}])],
                 "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}]},
    })
    eventually(lambda: core.read_namespaced_pod("writer", ns).status.phase == "Succeeded", 90,
               what="the writer pod to succeed")
    pvc = core.read_namespaced_persistent_volume_claim("data", ns)
    assert pvc.status.phase == "Bound" and pvc.spec.storage_class_name == "standard"
    pv = core.read_persistent_volume(pvc.spec.volume_name)
    path = (pv.spec.host_path or pv.spec.local).path
    volumes = local_cluster.provider.dir / "volumes"
    assert path.startswith(str(volumes))
    assert (__import__("pathlib").Path(path) / "hello").read_text() == "written by writer\n"

    core.delete_namespaced_pod("writer", ns, grace_period_seconds=0)
    core.delete_namespaced_persistent_volume_claim("data", ns)
    eventually(lambda: not __import__("pathlib").Path(path).exists(), 90,
               what="the volume's directory to be deleted with its claim")


# -- behaviour checks: probe Pods and scenarios, on real pods -----------------------------------------------

@pytest.fixture(scope="module")
def labctl_client(local_cluster):
    from labctl.kube.client import Client

    return Client.from_kubeconfig(local_cluster.kubeconfig, local_cluster.context)


@pytest.fixture(scope="module")
def probe_image(local_cluster):
    """labctl's probe image, built by `labctl image build` into the node as `labctl start` would."""
    from pathlib import Path

    from click.testing import CliRunner

    from labctl.checks.probe import PROBE_IMAGE
    from labctl.cli import main

    provider = local_cluster.provider
    env = {"LABCTL_STATE_DIR": str(Path(provider.dir).parent.parent), "KUBECONFIG": str(provider.user_kubeconfig)}
    folder = Path(__file__).resolve().parents[2] / "manifests" / "probe"
    result = CliRunner().invoke(main, ["image", "build", str(folder), "-t", PROBE_IMAGE, "-q",
                                       "--context", local_cluster.context], env=env)
    assert result.exit_code == 0, result.output
    return PROBE_IMAGE


def probe_pods(core, ns):
    return [p.metadata.name for p in core.list_namespaced_pod(ns, label_selector="labctl.dev/probe").items
            if p.metadata.deletion_timestamp is None]


def test_probe_pods_resolve_names_connect_and_carry_an_audience_bound_token(api, ns, httpecho, probe_image,
                                                                           labctl_client):
    from labctl.behaviour import Probe, run_probes

    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    apps.create_namespaced_deployment(ns, server_deployment("web", httpecho, 1))
    core.create_namespaced_service(ns, service("web"))
    core.create_namespaced_service_account(ns, {"metadata": {"name": "caller"}})
    eventually(available(apps, ns, "web", 1), 90, what="web to be available")

    results = run_probes(labctl_client, ns, [
        Probe({"dns": "web"}),
        Probe({"dns": f"web.{ns}.svc.cluster.local"}, {"min_addresses": 1}),
        Probe({"dns": "no-such-service"}, timeout=3),
        Probe({"tcp": {"host": "web", "port": 80}}),
        Probe({"http": {"url": "http://web/"}}, {"status": 200, "contains": "hello from web-"}),
        Probe({"http": {"url": "http://web/auth", "token_audience": "shop"}},
              {"json": {"aud[0]": "shop", "\"kubernetes.io\".serviceaccount.name": "caller"}},
              pod={"service_account": "caller"}),
        Probe({"http": {"url": "http://web/auth"}}, {"status": 200}),
    ])
    reasons = [r.reason for r in results]
    assert [r.passed for r in results] == [True, True, False, True, True, True, False], reasons
    assert "does not resolve" in reasons[2]
    assert reasons[6].startswith("GET http://web/auth from a pod: status 401 (wanted 200)"), reasons[6]
    eventually(lambda: not probe_pods(core, ns), 30, what="the probe Pods to be deleted")


def test_a_networkpolicy_lets_only_the_labelled_probe_through(api, ns, httpecho, probe_image, labctl_client):
    from labctl.behaviour import Probe, run_probes

    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    net = client.NetworkingV1Api(api)
    apps.create_namespaced_deployment(ns, server_deployment("db", httpecho, 1))
    core.create_namespaced_service(ns, service("db"))
    net.create_namespaced_network_policy(ns, {
        "metadata": {"name": "db-from-owner"},
        "spec": {"podSelector": {"matchLabels": {"app": "db"}}, "policyTypes": ["Ingress"],
                 "ingress": [{"from": [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "owner"}}}],
                              "ports": [{"port": 8080}]}]},
    })
    eventually(available(apps, ns, "db", 1), 90, what="db to be available")
    owner = {"labels": {"app.kubernetes.io/name": "owner"}}
    results = run_probes(labctl_client, ns, [
        Probe({"tcp": {"host": "db", "port": 80}}, {"connects": True}, timeout=20, pod=owner),
        Probe({"tcp": {"host": "db", "port": 80}}, {"connects": False}, timeout=5),
        Probe({"tcp": {"host": "db", "port": 80}}, {"connects": True}, timeout=5),
    ])
    reasons = [r.reason for r in results]
    assert [r.passed for r in results] == [True, True, False], reasons
    # The owner-labelled probe was never Ready, so it was never one of the Service's endpoints.
    assert all(not ready for name, ready in ready_endpoints(client.DiscoveryV1Api(api), ns, "db").items()
               if name and name.startswith("labctl-probe-"))


def _greeting_app(api, ns, httpecho):
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    core.create_namespaced_config_map(ns, {"metadata": {"name": "greeting"}, "data": {"MESSAGE": "hello"}})
    deployment = server_deployment("web", httpecho, 1)
    deployment["spec"]["template"]["spec"]["containers"][0]["env"] = [
        {"name": "MESSAGE", "valueFrom": {"configMapKeyRef": {"name": "greeting", "key": "MESSAGE"}}}]
    apps.create_namespaced_deployment(ns, deployment)
    core.create_namespaced_service(ns, service("web"))
    eventually(available(apps, ns, "web", 1), 90, what="web to be available")
    return core


SWITCH = [
    {"title": "the greeting changes", "patch": {"target": {"apiVersion": "v1", "kind": "ConfigMap", "name": "greeting"},
                                                "merge": {"data": {"MESSAGE": "bye", "EXTRA": "x"}}}},
    {"restart": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"}, "timeout_seconds": 90},
]


def test_a_scenario_changes_the_app_sees_the_change_and_puts_everything_back(api, ns, httpecho, probe_image,
                                                                            labctl_client):
    from labctl.behaviour import run_scenario

    core = _greeting_app(api, ns, httpecho)
    result = run_scenario(labctl_client, {"steps": [
        *SWITCH,
        {"http": {"service": "web", "port": 80, "path": "/env/MESSAGE", "count": 3}, "expect": {"contains": "bye"}},
        {"probe": {"http": {"url": "http://web/env/MESSAGE"}}, "expect": {"contains": "bye"}},
    ]}, ns)
    assert result.passed, result.reason
    assert result.reason.startswith("4 steps passed (last: GET http://web/env/MESSAGE from a pod: 200"), result.reason
    assert core.read_namespaced_config_map("greeting", ns).data == {"MESSAGE": "hello"}
    answer = labctl_client.service_proxy(ns, "web", 80, "/env/MESSAGE")
    assert answer.body.decode().strip() == "hello"  # restarted again after the ConfigMap was put back


def test_a_failing_scenario_names_its_step_and_still_puts_everything_back(api, ns, httpecho, probe_image,
                                                                          labctl_client):
    from labctl.behaviour import run_scenario

    core = _greeting_app(api, ns, httpecho)
    result = run_scenario(labctl_client, {"steps": [
        *SWITCH,
        {"http": {"service": "web", "port": 80, "path": "/env/MESSAGE"}, "expect": {"contains": "ciao"},
         "until": True, "timeout_seconds": 2},
        {"sleep": 30},
    ]}, ns)
    assert result.passed is False
    assert result.reason.startswith("step 3 (GET /env/MESSAGE on Service web:80): GET /env/MESSAGE on Service "
                                    "web:80: the body does not contain 'ciao' (seen 'bye"), result.reason
    assert "(still, after 2 s)" in result.reason
    assert core.read_namespaced_config_map("greeting", ns).data == {"MESSAGE": "hello"}
    assert labctl_client.service_proxy(ns, "web", 80, "/env/MESSAGE").body.decode().strip() == "hello"


def test_a_second_local_cluster_is_refused_while_one_runs(local_cluster, tmp_path_factory):
    from labctl.errors import ProviderError
    from labctl.providers.local import LocalProvider

    root = tmp_path_factory.mktemp("second")
    other = LocalProvider(state_root=root / "state", user_kubeconfig=root / "kubeconfig")
    with pytest.raises(ProviderError, match="another labctl local cluster runs on this machine"):
        other.up()
    assert local_cluster.provider.status().healthy


# -- down: last, since it takes the cluster down and up again -------------------------------------------------

def test_down_leaves_nothing_behind_and_up_works_again(local_cluster, tmp_path):
    from labctl.errors import ProviderError

    provider = local_cluster.provider
    started = time.monotonic()
    provider.down()
    down_seconds = time.monotonic() - started
    after = local_cluster.host_state()
    before = local_cluster.host_before
    for key in before:
        assert after[key] == before[key], f"down left {key} changed"
    assert not provider.dir.exists()

    # Another cluster's node program makes `up` refuse before it changes anything on the host.
    foreign = tmp_path / "kubelet"
    shutil.copy("/bin/sleep", foreign)
    kubelet = subprocess.Popen([str(foreign), "300"])
    try:
        with pytest.raises(ProviderError, match=rf"kubelet \(pid {kubelet.pid}\) is running"):
            provider.up()
        assert local_cluster.host_state() == before
    finally:
        kubelet.kill()
        kubelet.wait()

    started = time.monotonic()
    provider.up()
    warm = time.monotonic() - started
    print(f"\nlocal cluster: down in {down_seconds:.1f} s, warm up again in {warm:.1f} s, "
          f"idle RSS {provider.memory_bytes() / 2**20:.0f} MiB")
    assert provider.status().healthy
