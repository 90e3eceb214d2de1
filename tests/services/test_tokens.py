"""Service-to-service authentication against a real API server: a caller presents a projected ServiceAccount
token minted for one audience, and inventory validates it with the TokenReview API."""

from __future__ import annotations

import base64
import secrets

import grpc
import pytest
import yaml

from labshop import inventory_pb2, inventory_pb2_grpc

CALLER = "orders"


def _token(core, namespace: str, account: str, audiences: list[str] | None) -> str:
    from kubernetes import client

    spec = client.V1TokenRequestSpec(audiences=audiences or [], expiration_seconds=600)
    answer = core.create_namespaced_service_account_token(account, namespace, client.AuthenticationV1TokenRequest(spec=spec))
    return answer.status.token


def _api_server(kubeconfig, context: str, folder) -> tuple[str, str]:
    """The API server's URL and a file holding the CA that signed its certificate."""
    config = yaml.safe_load(kubeconfig.read_text())
    cluster_name = next(c["context"]["cluster"] for c in config["contexts"] if c["name"] == context)
    cluster = next(c["cluster"] for c in config["clusters"] if c["name"] == cluster_name)
    if "certificate-authority-data" in cluster:
        ca = folder / "ca.crt"
        ca.write_bytes(base64.b64decode(cluster["certificate-authority-data"]))
        return cluster["server"], str(ca)
    return cluster["server"], cluster["certificate-authority"]


@pytest.fixture(scope="module")
def tokens(cluster, kube_api, tmp_path_factory):
    """A namespace with ServiceAccounts inventory (allowed to review tokens), orders and payments, and tokens:
    inventory's own, orders' for audience inventory and for audience payments, payments' for inventory."""
    from kubernetes import client

    core = client.CoreV1Api(kube_api)
    rbac = client.RbacAuthorizationV1Api(kube_api)
    namespace = f"t-tokens-{secrets.token_hex(3)}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    binding = f"{namespace}-inventory-auth-delegator"
    try:
        for account in ("inventory", CALLER, "payments"):
            core.create_namespaced_service_account(namespace, client.V1ServiceAccount(
                metadata=client.V1ObjectMeta(name=account)))
        rbac.create_cluster_role_binding(client.V1ClusterRoleBinding(
            metadata=client.V1ObjectMeta(name=binding),
            role_ref=client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="ClusterRole",
                                      name="system:auth-delegator"),
            subjects=[client.RbacV1Subject(kind="ServiceAccount", name="inventory", namespace=namespace)],
        ))
        folder = tmp_path_factory.mktemp("tokens")
        files = {}
        for key, account, audiences in (("reviewer", "inventory", None), ("right", CALLER, ["inventory"]),
                                        ("wrong", CALLER, ["payments"]), ("stranger", "payments", ["inventory"])):
            path = folder / f"{key}.token"
            path.write_text(_token(core, namespace, account, audiences))
            files[key] = path
        server, ca = _api_server(cluster.kubeconfig, cluster.context, folder)
        yield {"namespace": namespace, "server": server, "ca": ca, **files}
    finally:
        try:
            rbac.delete_cluster_role_binding(binding)
        except client.ApiException as e:
            if e.status != 404:
                raise
        core.delete_namespace(namespace)


@pytest.fixture(scope="module")
def guarded(tokens, start_service):
    """inventory requiring tokens for audience `inventory` from orders only; orders callers with each token."""
    inventory = start_service("inventory", {
        "AUTH_AUDIENCE": "inventory",
        "AUTH_ALLOWED_CALLERS": f"system:serviceaccount:{tokens['namespace']}:{CALLER}",
        "TOKENREVIEW_API_SERVER": tokens["server"],
        "TOKENREVIEW_CA_FILE": tokens["ca"],
        "TOKENREVIEW_TOKEN_FILE": str(tokens["reviewer"]),
    }, grpc=True)
    callers = {key: start_service("orders", {"INVENTORY_URL": inventory.url,
                                             "INVENTORY_TOKEN_FILE": str(tokens[key])}, wait=False)
               for key in ("right", "wrong")}
    return inventory, {key: c.wait_ready() for key, c in callers.items()}


def _bearer(path) -> dict[str, str]:
    return {"Authorization": f"Bearer {path.read_text().strip()}"}


def test_a_token_for_the_right_audience_is_accepted(tokens, guarded, http):
    inventory, _ = guarded
    answer = http.get(f"{inventory.url}/stock/tea", headers=_bearer(tokens["right"]))
    assert answer.status_code == 200, answer.text
    assert answer.json()["caller"] == f"system:serviceaccount:{tokens['namespace']}:{CALLER}"


def test_a_token_for_another_audience_is_rejected(tokens, guarded, http):
    inventory, _ = guarded
    answer = http.get(f"{inventory.url}/stock/tea", headers=_bearer(tokens["wrong"]))
    assert answer.status_code == 401, answer.text
    assert "audience" in answer.json()["error"]


def test_no_token_or_a_forged_one_is_rejected(guarded, http):
    inventory, _ = guarded
    missing = http.get(f"{inventory.url}/stock/tea")
    assert missing.status_code == 401 and missing.headers["WWW-Authenticate"].startswith("Bearer")
    forged = http.get(f"{inventory.url}/stock/tea", headers={"Authorization": "Bearer eyJhbGciOiJub25lIn0.e30."})
    assert forged.status_code == 401
    # Probes and metrics stay open: the kubelet and Prometheus present no token.
    assert http.get(f"{inventory.url}/readyz").status_code == 200


def test_a_valid_caller_that_is_not_allowed_is_forbidden(tokens, guarded, http):
    inventory, _ = guarded
    answer = http.get(f"{inventory.url}/stock/tea", headers=_bearer(tokens["stranger"]))
    assert answer.status_code == 403, answer.text
    assert "payments may not call" in answer.json()["error"]


def test_orders_presents_its_projected_token(guarded, http):
    _, callers = guarded
    assert http.get(f"{callers['right'].url}/availability/tea").status_code == 200
    refused = http.get(f"{callers['wrong'].url}/availability/tea")
    assert refused.status_code == 502 and "inventory answered 401" in refused.json()["error"]


def test_grpc_checks_the_same_token(tokens, guarded):
    inventory, _ = guarded
    with grpc.insecure_channel(f"127.0.0.1:{inventory.grpc_port}") as channel:
        stub = inventory_pb2_grpc.InventoryStub(channel)
        request = inventory_pb2.GetStockRequest(sku="tea")
        token = tokens["right"].read_text().strip()
        assert stub.GetStock(request, metadata=[("authorization", f"Bearer {token}")], timeout=10).available > 0
        wrong = tokens["wrong"].read_text().strip()
        with pytest.raises(grpc.RpcError) as refused:
            stub.GetStock(request, metadata=[("authorization", f"Bearer {wrong}")], timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
