"""Lab 08's declared checks judged on its own manifests, no cluster: the starting state fails them for the reasons
the lab is about, the solution passes them, and the NetworkPolicy check is not fooled by policies that look
right but admit more than the owner."""

from __future__ import annotations

import copy

import pytest

from labctl import paths
from labctl.checks.evaluate import evaluate
from labctl.checks.model import FetchKey
from labctl.labs import load_lab
from labctl.render import render_objects

pytestmark = pytest.mark.unit

LAB = load_lab(paths.labs_dir() / "08-data-management")
START = render_objects(LAB.deploy, LAB.path, LAB.values, LAB.namespace)
SOLUTION = render_objects(LAB.solution, LAB.path, LAB.values, LAB.namespace)
DECLARED = [c for c in LAB.checks if not c.needs_running and c.type != "ready"]


def _objects(objects: list[dict]) -> dict[FetchKey, list[dict]]:
    # Every kind a check reads was fetched, even when none of its objects exist (that is a failure, not "not
    # verifiable").
    by_key: dict[FetchKey, list[dict]] = {
        FetchKey(c.spec["target"]["apiVersion"], c.spec["target"]["kind"], LAB.namespace): [] for c in DECLARED}
    for obj in objects:
        key = FetchKey(obj["apiVersion"], obj["kind"], obj["metadata"].get("namespace", LAB.namespace))
        by_key.setdefault(key, []).append(obj)
    return by_key


def _with_bound_claims(objects: list[dict]) -> list[dict]:
    """What the cluster adds to the solution: each StatefulSet's claim, Bound; Secrets' stringData as data."""
    out = []
    for obj in objects:
        obj = copy.deepcopy(obj)
        obj["metadata"].setdefault("namespace", LAB.namespace)
        if obj["kind"] == "Secret" and "stringData" in obj:
            obj["data"] = {k: "eA==" for k in obj.pop("stringData")}
        out.append(obj)
        if obj["kind"] == "StatefulSet":
            for template in obj["spec"].get("volumeClaimTemplates", []):
                out.append({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                            "metadata": {"name": f"{template['metadata']['name']}-{obj['metadata']['name']}-0",
                                         "namespace": LAB.namespace},
                            "status": {"phase": "Bound"}})
    return out


def _judge(check, objects: list[dict]):
    return evaluate(check.spec, _objects(objects), LAB.namespace)


@pytest.mark.parametrize("check", DECLARED, ids=[c.id for c in DECLARED])
def test_the_solution_passes_each_declared_check(check):
    result = _judge(check, _with_bound_claims(SOLUTION))
    assert result.passed, result.reason


@pytest.mark.parametrize("check", DECLARED, ids=[c.id for c in DECLARED])
def test_the_starting_state_fails_each_declared_check(check):
    result = _judge(check, _with_bound_claims(START))
    assert result.passed is False, result.reason


def test_the_starting_state_has_the_flaws_the_lab_names():
    by_name = {(o["kind"], o["metadata"]["name"]): o for o in START}
    config = by_name[("ConfigMap", "orders-config")]["data"]
    assert "shop-db" in config["ORDERS_DATABASE_URL"] and config["ORDERS_PUBLISH"] == "direct"
    assert "shop-db" in by_name[("ConfigMap", "inventory-config")]["data"]["INVENTORY_DATABASE_URL"]
    inline = [e for kind, name in (("Deployment", "orders"), ("Deployment", "inventory"), ("StatefulSet", "shop-db"))
              for c in by_name[(kind, name)]["spec"]["template"]["spec"]["containers"] for e in c["env"]
              if "PASSWORD" in e["name"]]
    assert len(inline) == 3 and all("value" in e for e in inline)
    assert not [o for o in START if o["kind"] == "NetworkPolicy"]


def test_no_solution_workload_carries_a_password_inline():
    for obj in SOLUTION:
        if obj["kind"] in ("Deployment", "StatefulSet"):
            for container in obj["spec"]["template"]["spec"]["containers"]:
                for env in container.get("env", []):
                    if any(word in env["name"] for word in ("PASSWORD", "USER")):
                        assert "secretKeyRef" in env.get("valueFrom", {}), (obj["metadata"]["name"], env)


def _policy_check():
    return next(c for c in LAB.checks if c.id == "orders-db-network-policy")


def _solution_policy() -> dict:
    policy = next(o for o in SOLUTION if o["kind"] == "NetworkPolicy" and o["metadata"]["name"] == "orders-db")
    return {**copy.deepcopy(policy), "metadata": {**policy["metadata"], "namespace": LAB.namespace}}


def _rule(policy: dict) -> dict:
    return policy["spec"]["ingress"][0]


@pytest.mark.parametrize("spoil, why", [
    (lambda p: _rule(p).pop("from"), "a rule without from admits every pod"),
    (lambda p: _rule(p).update({"from": [{}]}), "an empty peer admits every pod"),
    (lambda p: _rule(p).pop("ports"), "a rule without ports admits every port"),
    (lambda p: _rule(p)["from"].append({"podSelector": {"matchLabels": {"app.kubernetes.io/name": "inventory"}}}),
     "inventory is admitted as well"),
    (lambda p: _rule(p)["from"][0].update({"namespaceSelector": {}}), "orders pods of every namespace are admitted"),
    (lambda p: _rule(p)["from"].append({"ipBlock": {"cidr": "0.0.0.0/0"}}), "every address is admitted"),
    (lambda p: p["spec"].update({"ingress": []}), "nobody is admitted, orders included"),
    (lambda p: p["spec"].update({"policyTypes": ["Egress"]}), "the policy does not restrict ingress"),
    (lambda p: p["spec"]["podSelector"]["matchLabels"].update({"app.kubernetes.io/name": "orders"}),
     "the policy guards orders, not its database"),
    (lambda p: p["spec"]["ingress"].append({"ports": [{"port": 5432}]}), "a second rule admits everyone"),
])
def test_the_network_policy_check_refuses_a_policy_that_admits_the_wrong_pods(spoil, why):
    policy = _solution_policy()
    assert _judge(_policy_check(), [policy]).passed, "the reference policy must pass"
    spoil(policy)
    result = _judge(_policy_check(), [policy])
    assert result.passed is False, why
    assert "must select the pods app.kubernetes.io/name=orders-db" in result.reason


def test_the_network_policy_check_accepts_the_port_by_name_and_an_implied_policy_type():
    policy = _solution_policy()
    del policy["spec"]["policyTypes"]
    _rule(policy)["ports"] = [{"protocol": "TCP", "port": "postgres"}]
    assert _judge(_policy_check(), [policy]).passed


def test_the_secret_checks_do_not_print_the_password():
    check = next(c for c in LAB.checks if c.id == "orders-db-secret")
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "orders-db-credentials",
                                                                  "namespace": LAB.namespace},
              "data": {"username": "b3JkZXJz", "password": "c2VjcmV0LXZhbHVl"}}
    result = _judge(check, [secret])
    assert result.passed and "c2VjcmV0LXZhbHVl" not in result.reason
    del secret["data"]["password"]
    assert _judge(check, [secret]).passed is False


@pytest.mark.parametrize("objects", [START, SOLUTION], ids=["start", "solution"])
def test_every_workload_is_restricted_bounded_pinned_and_probed(objects):
    workloads = [o for o in objects if o["kind"] in ("Deployment", "StatefulSet")]
    assert len(workloads) == (3 if objects is START else 4)
    for obj in workloads:
        target = {"apiVersion": obj["apiVersion"], "kind": obj["kind"], "name": obj["metadata"]["name"]}
        for check_type in ("security", "resources", "image-pinned", "probes"):
            check = {"id": "x", "title": "x", "type": check_type, "hints": ["x"], "target": target}
            result = evaluate(check, _objects(_with_bound_claims([obj])), LAB.namespace)
            assert result.passed, result.reason
