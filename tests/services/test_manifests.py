"""The shop's manifests (manifests/shop and the labs that run the shop) hold to the house rules: restricted Pod
Security, requests and limits, separate probes, a pinned image, and references that resolve."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from labctl import paths
from labctl.checks.evaluate import evaluate
from labctl.checks.model import FetchKey
from labctl.labs import load_lab
from labctl.render import render_objects
from labshop.__main__ import SERVICES  # importable: tests/services/conftest.py puts services/ on the path

ROOT = Path(__file__).resolve().parents[2]
SHOP_MANIFESTS = sorted((ROOT / "manifests" / "shop").glob("*.yaml.j2"))
SHOP = "labctl.local/shop:1.0"
# Every lab that runs the shop's image.
SHOP_LABS = sorted(lab.path.name for lab in (load_lab(p.parent) for p in paths.labs_dir().glob("*/lab.yaml"))
                   if any(image.name == SHOP for image in lab.images))
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob"}
NAMESPACE = "shop-test"


def _sets() -> dict[str, list[dict]]:
    sets = {"manifests/shop": render_objects(SHOP_MANIFESTS, ROOT / "manifests" / "shop", {}, NAMESPACE)}
    for name in SHOP_LABS:
        lab = load_lab(paths.labs_dir() / name)
        sets[f"{name} start"] = render_objects(lab.deploy, lab.path, lab.values, lab.namespace)
        sets[f"{name} solution"] = render_objects(lab.solution, lab.path, lab.values, lab.namespace)
    return sets


SETS = _sets()


def _judge(check_type: str, obj: dict) -> tuple[bool, str]:
    key = FetchKey(obj["apiVersion"], obj["kind"], obj["metadata"]["namespace"])
    check = {"id": "x", "title": "x", "type": check_type, "hints": ["x"],
             "target": {"apiVersion": obj["apiVersion"], "kind": obj["kind"], "name": obj["metadata"]["name"]}}
    result = evaluate(check, {key: [obj]}, obj["metadata"]["namespace"])
    return bool(result.passed), result.reason


@pytest.mark.unit
@pytest.mark.parametrize("name", list(SETS))
def test_every_workload_is_restricted_bounded_and_pinned(name):
    workloads = [o for o in SETS[name] if o["kind"] in WORKLOADS]
    assert workloads
    for obj in workloads:
        for check_type in ("security", "resources", "image-pinned"):
            ok, reason = _judge(check_type, obj)
            assert ok, f"{name}: {reason}"


@pytest.mark.unit
@pytest.mark.parametrize("name", [n for n in SETS if not n.startswith("07-service-discovery start")])
def test_every_workload_has_separate_probes(name):
    # The service-discovery lab starts without a readiness probe on purpose: adding one is its subject.
    for obj in (o for o in SETS[name] if o["kind"] in WORKLOADS):
        ok, reason = _judge("probes", obj)
        assert ok, f"{name}: {reason}"


@pytest.mark.unit
@pytest.mark.parametrize("name", list(SETS))
def test_references_resolve(name):
    objects = SETS[name]
    names = {(o["kind"], o["metadata"]["name"]) for o in objects}
    workloads = [o for o in objects if o["kind"] in WORKLOADS]
    for obj in workloads:
        pod = obj["spec"]["template"]
        # A pod has a ServiceAccount of its own, or no API token at all (the default account, token not mounted).
        account = pod["spec"].get("serviceAccountName")
        if account:
            assert ("ServiceAccount", account) in names, obj["metadata"]["name"]
        else:
            assert pod["spec"].get("automountServiceAccountToken") is False, obj["metadata"]["name"]
        for container in [*pod["spec"].get("initContainers", []), *pod["spec"]["containers"]]:
            assert container["image"].startswith("labctl.local/"), container["image"]
            if container["image"] == SHOP:
                assert container["args"][0] in SERVICES, container["args"]
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    assert ("ConfigMap", source["configMapRef"]["name"]) in names
                else:
                    assert ("Secret", source["secretRef"]["name"]) in names
        # Every pod carries the recommended labels and is selected by its name (plus, at most, a track label
        # when a canary shares the name).
        labels = pod["metadata"]["labels"]
        selector = obj["spec"]["selector"]["matchLabels"]
        assert selector.get("app.kubernetes.io/name") == labels["app.kubernetes.io/name"]
        assert set(selector) <= {"app.kubernetes.io/name", "track"} and selector.items() <= labels.items()
    for service in (o for o in objects if o["kind"] == "Service"):
        selector = service["spec"]["selector"]
        assert any(selector.items() <= w["spec"]["template"]["metadata"]["labels"].items() for w in workloads), \
            f"{name}: Service {service['metadata']['name']} selects no workload's pods"


def test_the_whole_shop_is_admitted_and_becomes_ready(cluster):
    """Applied to a namespace enforcing `restricted`: every pod is admitted and every workload gets ready."""
    from labctl import apply
    from labctl.kube.client import Client

    client = Client.from_kubeconfig(cluster.kubeconfig, cluster.context)
    namespace = f"t-shop-{secrets.token_hex(3)}"
    objects = render_objects(SHOP_MANIFESTS, ROOT / "manifests" / "shop", {}, namespace)
    apply.ensure_namespace(client, namespace, slug="shop", pod_security="restricted")
    try:
        apply.apply_objects(client, objects, origin="manifests/shop")
        apply.wait_ready(client, objects, timeout=120)
    finally:
        client.delete("v1", "Namespace", namespace)
        for obj in objects:
            if obj["kind"] == "ClusterRoleBinding":
                client.delete(obj["apiVersion"], obj["kind"], obj["metadata"]["name"])
