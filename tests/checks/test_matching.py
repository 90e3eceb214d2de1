"""match_subset: the partial-object rules of labs/FORMAT.md, *Matching*, and the reasons it gives."""

from __future__ import annotations

from typing import Any

import pytest

from labctl.checks import match_subset
from labctl.checks.matching import join_path, show, values_equal

pytestmark = pytest.mark.unit

DEPLOYMENT = {
    "metadata": {"name": "web", "labels": {"app.kubernetes.io/name": "web", "tier": "front"}},
    "spec": {
        "replicas": 3,
        "paused": False,
        "template": {
            "spec": {
                "containers": [
                    {"name": "sidecar", "image": "proxy:2.1"},
                    {"name": "web", "image": "web:1.0", "ports": [{"containerPort": 8080, "name": "http"}]},
                ]
            }
        },
    },
}


@pytest.mark.parametrize(
    "subset",
    [
        {},
        {"spec": {"replicas": 3}},
        {"metadata": {"labels": {"tier": "front"}}},
        {"metadata": {"labels": {"app.kubernetes.io/name": "web"}}},
        {"spec": {"template": {"spec": {"containers": [{"name": "web", "image": "web:1.0"}]}}}},
        {"spec": {"template": {"spec": {"containers": [{"image": "web:1.0"}, {"image": "proxy:2.1"}]}}}},
        {"spec": {"template": {"spec": {"containers": [{"ports": [{"name": "http"}]}]}}}},
        {"spec": {"template": {"spec": {"containers": []}}}},
        {"spec": {"paused": False}},
        {"spec": {"strategy": None}},  # null matches a missing key
    ],
)
def test_subsets_that_match(subset: dict[str, Any]) -> None:
    assert match_subset(subset, DEPLOYMENT) == (True, "")


@pytest.mark.parametrize(
    ("subset", "reason"),
    [
        ({"spec": {"replicas": 2}}, "spec.replicas is 3 (wanted 2)"),
        ({"spec": {"replicas": "3"}}, "spec.replicas is 3 (wanted '3')"),
        ({"spec": {"paused": "false"}}, "spec.paused is false (wanted 'false')"),
        ({"spec": {"paused": 0}}, "spec.paused is false (wanted 0)"),
        ({"spec": {"minReadySeconds": 5}}, "spec.minReadySeconds is missing (wanted 5)"),
        ({"metadata": {"labels": {"app.kubernetes.io/name": "api"}}},
         "metadata.labels['app.kubernetes.io/name'] is 'web' (wanted 'api')"),
        ({"spec": {"replicas": None}}, "spec.replicas is 3 (wanted it unset)"),
        ({"spec": {"replicas": {"min": 1}}}, "spec.replicas is 3 (wanted a mapping with min)"),
        ({"spec": {"replicas": [3]}}, "spec.replicas is 3 (wanted a list)"),
        ({"spec": {"template": {"spec": {"containers": {"name": "web"}}}}},
         "spec.template.spec.containers is a list (wanted a mapping with name)"),
        # The element with the same name is the one the learner meant: its mismatch is reported.
        ({"spec": {"template": {"spec": {"containers": [{"name": "web", "image": "web:2.0"}]}}}},
         "spec.template.spec.containers[1].image is 'web:1.0' (wanted 'web:2.0')"),
        ({"spec": {"template": {"spec": {"containers": [{"name": "web", "ports": [{"containerPort": 80}]}]}}}},
         "spec.template.spec.containers[1].ports[0].containerPort is 8080 (wanted 80)"),
        ({"spec": {"template": {"spec": {"containers": [{"image": "db:1"}]}}}},
         "spec.template.spec.containers has no element matching {image: 'db:1'} (2 elements seen)"),
        ({"spec": {"template": {"spec": {"containers": [{"name": "db"}]}}}},
         "spec.template.spec.containers has no element matching {name: 'db'} (2 elements seen)"),
        # Two expectations cannot share one element.
        ({"spec": {"template": {"spec": {"containers": [{"name": "web"}, {"image": "web:1.0"}]}}}},
         "spec.template.spec.containers has no other element matching {image: 'web:1.0'} "
         "(each expected element needs an element of its own)"),
    ],
)
def test_subsets_that_do_not_match(subset: dict[str, Any], reason: str) -> None:
    assert match_subset(subset, DEPLOYMENT) == (False, reason)


def test_list_elements_are_assigned_as_a_whole_not_greedily() -> None:
    # A greedy pass gives the first element to {a: 1} and has nothing left for {a: 1, b: 2}.
    expected = [{"a": 1}, {"a": 1, "b": 2}]
    assert match_subset(expected, [{"a": 1, "b": 2}, {"a": 1}]) == (True, "")
    assert match_subset(expected, [{"a": 1, "b": 2}, {"a": 2}])[0] is False


def test_repeated_expectations_need_repeated_elements() -> None:
    assert match_subset(["x", "x"], ["x", "y", "x"]) == (True, "")
    assert match_subset(["x", "x"], ["x", "y"]) == (
        False,
        "the object has no other element matching 'x' (each expected element needs an element of its own)",
    )


def test_scalars_in_lists_and_order() -> None:
    assert match_subset(["b", "a"], ["a", "b", "c"]) == (True, "")
    assert match_subset([1], ["1"]) == (False, "[0] is '1' (wanted 1)")
    assert match_subset([1], []) == (False, "the object has no element matching 1 (the list is empty)")


def test_the_only_element_is_the_closest() -> None:
    actual = {"ports": [{"port": 80, "targetPort": 8080}]}
    assert match_subset({"ports": [{"port": 80, "targetPort": "http"}]}, actual) == (
        False,
        "ports[0].targetPort is 8080 (wanted 'http')",
    )


@pytest.mark.parametrize(
    ("expected", "actual", "reason"),
    [
        ({"a": 1}, None, "the object is null (wanted a mapping with a)"),
        ({"a": 1}, "text", "the object is 'text' (wanted a mapping with a)"),
        ({"a": 1}, [1], "the object is a list (wanted a mapping with a)"),
        ([1], {"a": 1}, "the object is a mapping (wanted a list)"),
        ([1], "1", "the object is '1' (wanted a list)"),
        (1, 1.5, "the object is 1.5 (wanted 1)"),
        (True, 1, "the object is 1 (wanted true)"),
        ("a", None, "the object is null (wanted 'a')"),
        (None, {}, "the object is {} (wanted it unset)"),
    ],
)
def test_wrong_types_are_mismatches_not_errors(expected: Any, actual: Any, reason: str) -> None:
    assert match_subset(expected, actual) == (False, reason)


def test_the_path_argument_prefixes_reasons() -> None:
    assert match_subset({"b": 1}, {"b": 2}, "spec") == (False, "spec.b is 2 (wanted 1)")


@pytest.mark.parametrize(
    ("a", "b", "equal"),
    [
        (1, 1.0, True),
        (1, "1", False),
        (True, 1, False),
        (False, 0, False),
        (None, None, True),
        ({"a": [1, {"b": True}]}, {"a": [1.0, {"b": True}]}, True),
        ({"a": 1}, {"a": 1, "b": 2}, False),
        ([1, 2], [2, 1], False),
        ("x", "x", True),
    ],
)
def test_values_equal(a: Any, b: Any, equal: bool) -> None:
    assert values_equal(a, b) is equal
    assert values_equal(b, a) is equal


def test_show_writes_values_as_yaml_on_one_line() -> None:
    assert show({"name": "web", "ready": True, "n": None, "list": [1, "a"]}) == (
        "{name: 'web', ready: true, n: null, list: [1, 'a']}"
    )
    assert show("line\nbreak") == "'line\\nbreak'"
    long = show("x" * 500)
    assert len(long) == 80 and long.endswith("…")


def test_join_path() -> None:
    assert join_path("", "spec") == "spec"
    assert join_path("spec", "containers") == "spec.containers"
    assert join_path("spec.containers", 0) == "spec.containers[0]"
    assert join_path("labels", "app.kubernetes.io/name") == "labels['app.kubernetes.io/name']"
    assert join_path("", 2) == "[2]"
