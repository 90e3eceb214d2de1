"""The chart's RBAC is enough and no more: the operator runs under its ServiceAccount's own token against the
real API server and does everything it does; the API server denies it everything else."""

from __future__ import annotations

import base64
import secrets
import subprocess
from pathlib import Path

import pytest
import yaml

from labctl import addons

RELEASE_SUFFIX = "labctl-operator"

# (verb, group, resource) the operator needs, and what it must never be allowed.
ALLOWED = [
    ("get", "labctl.dev", "microservices"), ("list", "labctl.dev", "microservices"),
    ("watch", "labctl.dev", "microservices"), ("patch", "labctl.dev", "microservices"),
    ("patch", "labctl.dev", "microservices/status"),
    ("create", "apps", "deployments"), ("patch", "apps", "deployments"), ("update", "apps", "deployments"),
    ("create", "", "services"), ("patch", "", "services"), ("watch", "", "services"),
    ("create", "", "events"),
]
DENIED = [
    ("delete", "apps", "deployments"), ("deletecollection", "apps", "deployments"),
    ("delete", "", "services"), ("create", "", "pods"), ("delete", "", "pods"), ("create", "", "pods/exec"),
    ("get", "", "secrets"), ("list", "", "secrets"), ("get", "", "configmaps"),
    ("create", "labctl.dev", "microservices"), ("update", "labctl.dev", "microservices"),
    ("delete", "labctl.dev", "microservices"), ("update", "labctl.dev", "microservices/status"),
    ("update", "apiextensions.k8s.io", "customresourcedefinitions"),
    ("list", "apiextensions.k8s.io", "customresourcedefinitions"),
    ("list", "", "namespaces"), ("get", "", "nodes"), ("patch", "", "events"), ("delete", "", "events"),
    ("create", "rbac.authorization.k8s.io", "clusterrolebindings"), ("escalate", "rbac.authorization.k8s.io", "clusterroles"),
    ("impersonate", "", "serviceaccounts"), ("create", "", "serviceaccounts/token"),
    ("create", "coordination.k8s.io", "leases"), ("list", "kopf.dev", "clusterkopfpeerings"),
]


@pytest.fixture
def installed_chart(cluster, kube_api, operator_crd, unavailable):
    """The chart installed (no operator pod: replicas 0) in a namespace of its own; (namespace, ServiceAccount)."""
    from kubernetes import client

    from labctl.errors import ToolboxError
    from labctl.toolbox import binary

    try:
        helm = str(binary("helm"))
    except ToolboxError as e:
        unavailable(f"helm is not in the toolbox: {e}")
    core = client.CoreV1Api(kube_api)
    namespace = f"t-rbac-{secrets.token_hex(3)}"
    core.create_namespace({"metadata": {"name": namespace}})
    release = f"rbac-{secrets.token_hex(3)}"
    base = [helm, "--kubeconfig", str(cluster.kubeconfig), "--kube-context", cluster.context, "--namespace", namespace]
    done = subprocess.run([*base, "install", release, str(addons.chart_dir()), "--skip-crds", "--set", "replicas=0"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    try:
        yield namespace, f"{release}-{RELEASE_SUFFIX}"
    finally:
        subprocess.run([*base, "uninstall", release], capture_output=True, timeout=120)
        core.delete_namespace(namespace)


def token_kubeconfig(cluster, token: str, path: Path) -> Path:
    """A kubeconfig holding only the API server, its CA and the token: no admin certificate to fall back on."""
    config = yaml.safe_load(Path(cluster.kubeconfig).read_text())
    context = next(c["context"] for c in config["contexts"] if c["name"] == cluster.context)
    entry = next(c["cluster"] for c in config["clusters"] if c["name"] == context["cluster"])
    ca = entry.get("certificate-authority-data") or base64.b64encode(
        Path(entry["certificate-authority"]).read_bytes()).decode()
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "sa",
        "clusters": [{"name": "c", "cluster": {"server": entry["server"], "certificate-authority-data": ca}}],
        "users": [{"name": "sa", "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "c", "user": "sa"}}],
    }))
    return path


def test_the_chart_role_is_enough(installed_chart, cluster, kube_api, run_operator, namespace, ms_api, wait_until,
                                  tmp_path):
    from kubernetes import client

    sa_namespace, sa = installed_chart
    token = client.CoreV1Api(kube_api).create_namespaced_service_account_token(
        sa, sa_namespace, {"spec": {"expirationSeconds": 3600}}).status.token
    kubeconfig = token_kubeconfig(cluster, token, tmp_path / "sa-kubeconfig")
    op = run_operator(kubeconfig=kubeconfig, context="sa")

    ms_api.create(namespace, "web", replicas=2)
    wait_until(lambda: ms_api.is_ready(namespace, "web"), what="Ready under the chart's role")
    apps, core = client.AppsV1Api(kube_api), client.CoreV1Api(kube_api)
    apps.delete_namespaced_deployment("web", namespace)
    core.patch_namespaced_service("web", namespace, [{"op": "replace", "path": "/spec/ports/0/port", "value": 81}])
    wait_until(lambda: ms_api.deployment(namespace, "web") and
               [p["port"] for p in ms_api.service(namespace, "web")["spec"]["ports"]] == [80], what="repaired")
    ms_api.scale(namespace, "web", 3)
    wait_until(lambda: ms_api.is_ready(namespace, "web")
               and ms_api.get(namespace, "web")["status"]["readyReplicas"] == 3, what="scaled")
    ms_api.patch(namespace, "web", {"image": "hello:latest"})
    wait_until(lambda: (ms_api.condition(namespace, "web", "Degraded") or {}).get("reason") == "InvalidSpec",
               what="Degraded")
    reasons = wait_until(lambda: (lambda r: {"Created", "Ready", "DriftRepaired", "Scaled", "InvalidSpec"} <= set(r)
                                  and r)(ms_api.reasons(namespace, "web")), what="its events")
    assert reasons
    ms_api.delete(namespace, "web")
    wait_until(lambda: ms_api.get(namespace, "web") is None, timeout=5, what="deleted")
    output = op.output()
    assert "forbidden" not in output.lower(), output


def test_everything_else_is_denied(installed_chart, kube_api):
    from kubernetes import client

    sa_namespace, sa = installed_chart
    authz = client.AuthorizationV1Api(kube_api)
    user = f"system:serviceaccount:{sa_namespace}:{sa}"
    groups = ["system:serviceaccounts", f"system:serviceaccounts:{sa_namespace}", "system:authenticated"]

    def allowed(verb: str, group: str, resource: str) -> bool:
        resource, _, sub = resource.partition("/")
        review = authz.create_subject_access_review({"spec": {
            "user": user, "groups": groups,
            "resourceAttributes": {"verb": verb, "group": group, "resource": resource, "subresource": sub,
                                   "namespace": "any-namespace"}}})
        return review.status.allowed

    assert [a for a in ALLOWED if not allowed(*a)] == []
    assert [d for d in DENIED if allowed(*d)] == []
