"""The sim cluster is a real Kubernetes control plane: controllers, scheduler, admission and RBAC all act."""

import json
import time

import pytest
from kubernetes import client

pytestmark = pytest.mark.timeout(120)

LABELS = {"app": "web"}


def eventually(probe, timeout=30.0, interval=0.1, what="the condition"):
    """Poll `probe` until it returns something truthy; fail with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what} (last seen: {last!r})")


def deployment(name, replicas):
    container = client.V1Container(name="web", image="registry.k8s.io/pause:3.10",
                                   ports=[client.V1ContainerPort(container_port=8080)])
    return client.V1Deployment(
        metadata=client.V1ObjectMeta(name=name, labels=LABELS),
        spec=client.V1DeploymentSpec(
            replicas=replicas,
            selector=client.V1LabelSelector(match_labels=LABELS),
            template=client.V1PodTemplateSpec(metadata=client.V1ObjectMeta(labels=LABELS),
                                              spec=client.V1PodSpec(containers=[container])),
        ),
    )


def test_deployment_becomes_available_on_kwok_nodes_with_ready_endpoints(kube_api, namespace):
    apps, core, discovery = client.AppsV1Api(kube_api), client.CoreV1Api(kube_api), client.DiscoveryV1Api(kube_api)
    apps.create_namespaced_deployment(namespace, deployment("web", 3))
    core.create_namespaced_service(namespace, client.V1Service(
        metadata=client.V1ObjectMeta(name="web"),
        spec=client.V1ServiceSpec(selector=LABELS, ports=[client.V1ServicePort(port=80, target_port=8080)]),
    ))

    def available():
        d = apps.read_namespaced_deployment_status("web", namespace)
        conds = {c.type: c.status for c in d.status.conditions or []}
        return d.status.available_replicas == 3 and conds.get("Available") == "True"

    eventually(available, what="Deployment web to have 3 available replicas")

    pods = core.list_namespaced_pod(namespace, label_selector="app=web").items
    assert len(pods) == 3
    assert {p.status.phase for p in pods} == {"Running"}
    kwok_nodes = {n.metadata.name for n in core.list_node(label_selector="type=kwok").items}
    assert len(kwok_nodes) >= 3
    assert {p.spec.node_name for p in pods} <= kwok_nodes
    assert all(p.status.pod_ip for p in pods)

    def ready_endpoints():
        slices = discovery.list_namespaced_endpoint_slice(
            namespace, label_selector="kubernetes.io/service-name=web").items
        ready = [e for s in slices for e in s.endpoints or [] if e.conditions and e.conditions.ready]
        return len(ready) == 3 and ready

    endpoints = eventually(ready_endpoints, what="3 ready endpoints in the EndpointSlice of Service web")
    assert {e.target_ref.name for e in endpoints} == {p.metadata.name for p in pods}


def test_job_succeeds(kube_api, namespace):
    batch = client.BatchV1Api(kube_api)
    job = client.V1Job(
        metadata=client.V1ObjectMeta(name="once"),
        spec=client.V1JobSpec(backoff_limit=0, template=client.V1PodTemplateSpec(spec=client.V1PodSpec(
            restart_policy="Never",
            containers=[client.V1Container(name="work", image="registry.k8s.io/pause:3.10")],
        ))),
    )
    batch.create_namespaced_job(namespace, job)

    def succeeded():
        status = batch.read_namespaced_job_status("once", namespace).status
        conds = {c.type: c.status for c in status.conditions or []}
        return status.succeeded == 1 and conds.get("Complete") == "True"

    eventually(succeeded, what="Job once to complete")


def test_restricted_namespace_rejects_a_privileged_pod(kube_api, namespace):
    core = client.CoreV1Api(kube_api)
    core.patch_namespace(namespace, {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted"}}})
    pod = client.V1Pod(
        metadata=client.V1ObjectMeta(name="root"),
        spec=client.V1PodSpec(containers=[client.V1Container(
            name="c", image="registry.k8s.io/pause:3.10",
            security_context=client.V1SecurityContext(privileged=True),
        )]),
    )
    with pytest.raises(client.ApiException) as caught:
        core.create_namespaced_pod(namespace, pod)
    assert caught.value.status == 403
    message = json.loads(caught.value.body)["message"]
    assert 'violates PodSecurity "restricted:latest": privileged (container "c" must not set' in message


def test_privileged_pod_is_allowed_where_pod_security_does_not_forbid_it(kube_api, namespace):
    # The control: --allow-privileged=true, so the rejection above comes from PodSecurity, not the apiserver.
    core = client.CoreV1Api(kube_api)
    pod = client.V1Pod(
        metadata=client.V1ObjectMeta(name="root"),
        spec=client.V1PodSpec(containers=[client.V1Container(
            name="c", image="registry.k8s.io/pause:3.10",
            security_context=client.V1SecurityContext(privileged=True),
        )]),
    )
    assert core.create_namespaced_pod(namespace, pod).metadata.name == "root"


def _can_list_pods(authz, namespace, sa):
    review = client.V1SubjectAccessReview(spec=client.V1SubjectAccessReviewSpec(
        user=f"system:serviceaccount:{namespace}:{sa}",
        groups=["system:serviceaccounts", f"system:serviceaccounts:{namespace}", "system:authenticated"],
        resource_attributes=client.V1ResourceAttributes(namespace=namespace, verb="list", resource="pods"),
    ))
    return authz.create_subject_access_review(review).status.allowed


def test_rbac_denies_a_service_account_until_a_role_binding_allows_it(kube_api, namespace):
    core, rbac = client.CoreV1Api(kube_api), client.RbacAuthorizationV1Api(kube_api)
    authz = client.AuthorizationV1Api(kube_api)
    core.create_namespaced_service_account(namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="app")))
    assert _can_list_pods(authz, namespace, "app") is False

    rbac.create_namespaced_role(namespace, client.V1Role(
        metadata=client.V1ObjectMeta(name="pod-reader"),
        rules=[client.V1PolicyRule(api_groups=[""], resources=["pods"], verbs=["get", "list", "watch"])],
    ))
    rbac.create_namespaced_role_binding(namespace, client.V1RoleBinding(
        metadata=client.V1ObjectMeta(name="app-reads-pods"),
        role_ref=client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="Role", name="pod-reader"),
        subjects=[client.RbacV1Subject(kind="ServiceAccount", name="app", namespace=namespace)],
    ))
    eventually(lambda: _can_list_pods(authz, namespace, "app"), timeout=10,
               what="the RoleBinding to allow listing pods")


def test_claim_without_a_class_is_bound_by_the_default_storage_class(kube_api, namespace):
    core, storage = client.CoreV1Api(kube_api), client.StorageV1Api(kube_api)
    sc = storage.read_storage_class("standard")
    assert sc.metadata.annotations["storageclass.kubernetes.io/is-default-class"] == "true"
    core.create_namespaced_persistent_volume_claim(namespace, client.V1PersistentVolumeClaim(
        metadata=client.V1ObjectMeta(name="data"),
        spec=client.V1PersistentVolumeClaimSpec(
            access_modes=["ReadWriteOnce"],
            resources=client.V1VolumeResourceRequirements(requests={"storage": "1Gi"})),
    ))

    def bound():
        pvc = core.read_namespaced_persistent_volume_claim("data", namespace)
        return pvc.status.phase == "Bound" and pvc

    pvc = eventually(bound, what="PVC data to be Bound")
    assert pvc.spec.storage_class_name == "standard"


def test_nodes_have_the_promised_shape(kube_api, cluster):
    if cluster.sim is None:
        pytest.skip("node shape is the sim provider's")
    nodes = client.CoreV1Api(kube_api).list_node(label_selector="type=kwok").items
    assert len(nodes) == 3
    for node in nodes:
        assert node.metadata.annotations["kwok.x-k8s.io/node"] == "fake"
        assert node.status.capacity == {"cpu": "8", "memory": "16Gi", "pods": "110"}
        assert {c.type: c.status for c in node.status.conditions}["Ready"] == "True"


def test_up_again_is_a_fast_no_op(cluster):
    if cluster.sim is None:
        pytest.skip("needs the sim cluster this session started")
    sim = cluster.sim
    before = {name: sim.procs.running(name) for name in ("etcd", "kube-apiserver", "kwok")}
    assert all(before.values())
    messages = []
    started = time.monotonic()
    sim.up(progress=messages.append)
    elapsed = time.monotonic() - started
    assert elapsed < 2.0, f"second up took {elapsed:.1f} s"
    assert messages == ["The sim cluster is already up (context labctl-sim)"]
    assert {name: sim.procs.running(name) for name in before} == before
