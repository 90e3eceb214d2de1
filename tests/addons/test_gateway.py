"""`requires: [gateway-api]`: the Gateway API CRDs from the Go module and the GatewayClass on sim (the API server
then validates Gateways and HTTPRoutes by the real schemas); Traefik's objects are least-privilege and restricted.
Traffic through Traefik on a real node is proven by the API gateway lab's full cycle on the local provider."""

from __future__ import annotations

from pathlib import Path

import pytest

from labctl import gateway
from labctl.session import Target


@pytest.mark.unit
def test_traefik_runs_restricted_with_least_privilege():
    objects = gateway.traefik_objects("labctl.local/traefik:v3.6.12")
    by_kind = {o["kind"]: o for o in objects}
    pod = by_kind["Deployment"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    container = pod["containers"][0]
    assert container["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                            "capabilities": {"drop": ["ALL"]}}
    assert f"--entryPoints.web.address=:{gateway.WEB_PORT}" in container["args"]
    rules = by_kind["ClusterRole"]["rules"]
    verbs = {v for r in rules for v in r["verbs"]}
    assert "*" not in verbs and not verbs & {"create", "delete", "deletecollection"}
    writable = {res for r in rules if "patch" in r["verbs"] for res in r["resources"]}
    assert writable and all(res.endswith("/status") for res in writable)  # it writes statuses, nothing else
    assert all("*" not in r["resources"] for r in rules)


@pytest.fixture
def client(cluster):
    from labctl.kube.client import Client

    return Client.from_kubeconfig(cluster.kubeconfig, cluster.context)


def test_crds_and_class_on_sim_validate_gateways_and_routes(cluster, client, namespace):
    from labctl.errors import LabError
    from labctl.kube.client import ApiError

    target = Target(cluster.provider, cluster.context, Path(cluster.kubeconfig), False)
    seen = []
    gateway.ensure_gateway_api(target, client, seen.append)
    assert any("no Gateway controller" in line for line in seen), seen
    crd = client.get("apiextensions.k8s.io/v1", "CustomResourceDefinition", "httproutes.gateway.networking.k8s.io")
    assert crd["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "labctl"
    assert crd["metadata"]["annotations"]["gateway.networking.k8s.io/bundle-version"] == gateway.GATEWAY_API_VERSION
    assert client.get("gateway.networking.k8s.io/v1", "GatewayClass", "traefik")["spec"]["controllerName"] == \
        gateway.CONTROLLER_NAME

    client.create({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
                   "metadata": {"name": "shop", "namespace": namespace},
                   "spec": {"gatewayClassName": "traefik",
                            "listeners": [{"name": "http", "port": 8000, "protocol": "HTTP"}]}})
    route = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
             "metadata": {"name": "catalog", "namespace": namespace},
             "spec": {"parentRefs": [{"name": "shop"}],
                      "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/api/catalog"}}],
                                 "backendRefs": [{"name": "catalog", "port": 80}]}]}}
    client.create(route)
    bad = {**route, "metadata": {"name": "bad", "namespace": namespace}}
    bad["spec"] = {**route["spec"], "rules": [{"matches": [{"path": {"type": "Prefix", "value": "/x"}}]}]}
    with pytest.raises((ApiError, LabError), match="Prefix"):
        client.create(bad)  # the CRD's own schema refuses a path type that does not exist
    # Nothing programs the Gateway on sim: no status conditions appear.
    assert not (client.get("gateway.networking.k8s.io/v1", "Gateway", "shop", namespace).get("status") or {}).get(
        "addresses")
