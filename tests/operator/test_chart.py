"""charts/labctl-operator with the real helm: lint, render, values schema, and an install into a namespace that
enforces the restricted Pod Security Standard."""

from __future__ import annotations

import json
import secrets
import subprocess
from pathlib import Path

import pytest
import yaml

from labctl import addons
from labctl.checks import FetchKey, evaluate

CHART = addons.chart_dir()


@pytest.fixture(scope="module")
def helm(unavailable) -> str:
    from labctl.errors import ToolboxError
    from labctl.toolbox import binary

    try:
        return str(binary("helm"))
    except ToolboxError as e:
        unavailable(f"helm is not in the toolbox: {e}")


def run(argv: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


def render(helm: str, *sets: str) -> list[dict]:
    argv = [helm, "template", "op", str(CHART), "--namespace", "labctl-system"]
    for s in sets:
        argv += ["--set", s]
    done = run(argv)
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def test_lint_is_clean(helm):
    done = run([helm, "lint", "--strict", str(CHART)])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 chart(s) failed" in done.stdout


def test_renders_exactly_the_operator_and_its_rbac(helm):
    objects = render(helm)
    assert sorted(f"{o['kind']}/{o['metadata']['name']}" for o in objects) == [
        "ClusterRole/op-labctl-operator", "ClusterRoleBinding/op-labctl-operator", "Deployment/op-labctl-operator",
        "ServiceAccount/op-labctl-operator"]
    (dep,) = [o for o in objects if o["kind"] == "Deployment"]
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"] == {"type": "Recreate"}
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    assert container["image"] == f"labctl.local/operator:{yaml.safe_load((CHART / 'Chart.yaml').read_text())['appVersion']}"
    assert "--health-host=0.0.0.0" in container["args"]
    assert dep["spec"]["template"]["spec"]["serviceAccountName"] == "op-labctl-operator"


@pytest.mark.parametrize("check", [
    {"type": "security"},        # every requirement of restricted, and a read-only root filesystem
    {"type": "resources"},
    {"type": "probes"},
    {"type": "image-pinned"},
], ids=lambda c: c["type"])
def test_the_deployment_passes_labctls_own_checks(helm, check):
    objects = render(helm)
    spec = {"id": "c", "title": "c", "hints": ["h"], **check,
            "target": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "op-labctl-operator"}}
    deployments = [o for o in objects if o["kind"] == "Deployment"]
    result = evaluate(spec, {FetchKey("apps/v1", "Deployment", "labctl-system"): deployments}, "labctl-system")
    assert result.passed, result.reason


@pytest.mark.parametrize(("values", "words"), [
    ("replicas=2", "/replicas"),
    ("image.tag=latest", "/image/tag"),
    ("operator.logFormat=xml", "/operator/logFormat"),
    ("operator.healthPort=80", "/operator/healthPort"),
    ("surprise=1", "surprise"),
])
def test_the_values_schema_refuses_bad_values(helm, values, words):
    done = run([helm, "template", "op", str(CHART), "--set", values])
    assert done.returncode != 0
    assert words in done.stderr


def test_the_crd_in_the_chart_is_the_one_labctl_applies(helm):
    done = run([helm, "template", "op", str(CHART), "--include-crds"])
    assert done.returncode == 0, done.stderr
    crds = [d for d in yaml.safe_load_all(done.stdout) if d and d["kind"] == "CustomResourceDefinition"]
    (applied,) = addons.crd_objects()
    assert [c["metadata"]["name"] for c in crds] == [applied["metadata"]["name"]] == ["microservices.labctl.dev"]
    assert crds[0]["spec"] == applied["spec"]
    assert applied["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "labctl"
    (version,) = applied["spec"]["versions"]
    assert version["subresources"]["status"] == {}
    assert version["subresources"]["scale"]["specReplicasPath"] == ".spec.replicas"
    assert {c["name"] for c in version["additionalPrinterColumns"]} >= {"Desired", "Ready", "Status", "Age"}


def test_installs_into_a_restricted_namespace(helm, cluster, kube_api, operator_crd):
    """Pods are simulated on sim, but Pod Security admission is real: a pod template it refused would leave
    the Deployment without pods and `--wait` would time out."""
    from kubernetes import client

    core = client.CoreV1Api(kube_api)
    rbac = client.RbacAuthorizationV1Api(kube_api)
    namespace = f"t-chart-{secrets.token_hex(3)}"
    core.create_namespace({"metadata": {"name": namespace, "labels": {
        "pod-security.kubernetes.io/enforce": "restricted", "pod-security.kubernetes.io/enforce-version": "latest"}}})
    release = f"op-{secrets.token_hex(3)}"
    base = [helm, "--kubeconfig", str(cluster.kubeconfig), "--kube-context", cluster.context, "--namespace", namespace]
    try:
        done = run([*base, "install", release, str(CHART), "--skip-crds", "--wait", "--timeout", "120s"], timeout=180)
        assert done.returncode == 0, done.stderr
        apps = client.AppsV1Api(kube_api)
        dep = apps.read_namespaced_deployment(f"{release}-labctl-operator", namespace)
        assert dep.status.available_replicas == 1
        pods = core.list_namespaced_pod(namespace, label_selector=f"app.kubernetes.io/instance={release}").items
        assert len(pods) == 1
        listed = json.loads(run([*base, "list", "-o", "json"]).stdout)
        assert [(r["name"], r["status"]) for r in listed] == [(release, "deployed")]
    finally:
        done = run([*base, "uninstall", release, "--wait"], timeout=120)
        core.delete_namespace(namespace)
    assert done.returncode == 0, done.stderr
    names = [r.metadata.name for r in rbac.list_cluster_role().items]
    assert f"{release}-labctl-operator" not in names
