"""resolve_lab: the lab a learner means by a slug, a number or a prefix."""

from __future__ import annotations

from pathlib import Path

import pytest

from labctl.errors import EXIT_USAGE, UsageError
from labctl.labs import Lab, resolve_lab

pytestmark = pytest.mark.unit


def _lab(number: int, slug: str) -> Lab:
    return Lab(
        number=number, slug=slug, path=Path(f"/labs/{number:02d}-{slug}"), title=slug.title(),
        difficulty="Beginner", minutes=10, summary="s", objectives=["o"], prerequisites=[],
        namespace=f"lab-{slug}", pod_security="restricted", images=[], values={}, deploy=[], solution=[],
        checks=[], interview=[], raw={},
    )


LABS = [
    _lab(1, "kubernetes-basics"),
    _lab(2, "services"),
    _lab(3, "service-mesh"),
    _lab(9, "containerization"),
    _lab(10, "config"),
]


@pytest.mark.parametrize(
    ("arg", "number"),
    [
        ("containerization", 9),
        ("9", 9),
        ("09", 9),
        ("09-containerization", 9),
        ("contain", 9),
        ("Containerization", 9),
        (" services ", 2),
        ("services", 2),  # exact slug wins over being a prefix of nothing else
        ("service-", 3),
        ("10", 10),
        ("k", 1),
        ("con", None),
    ],
)
def test_resolve(arg: str, number: int | None) -> None:
    if number is None:
        with pytest.raises(UsageError):
            resolve_lab(arg, LABS)
    else:
        assert resolve_lab(arg, LABS).number == number


def test_an_ambiguous_prefix_lists_the_candidates() -> None:
    with pytest.raises(UsageError) as caught:
        resolve_lab("serv", LABS)
    assert str(caught.value) == "'serv' could be any of: 02-services, 03-service-mesh"
    assert caught.value.hint == "type more of the name, or the number"
    assert caught.value.exit_code == EXIT_USAGE


@pytest.mark.parametrize("arg", ["nope", "12", "0", "", "  ", "1-", "²", "9" * 5000])
def test_an_unknown_lab_lists_every_choice(arg: str) -> None:
    with pytest.raises(UsageError) as caught:
        resolve_lab(arg, LABS)
    assert str(caught.value) == (
        f"no lab called '{arg}'; the labs are: 01-kubernetes-basics, 02-services, 03-service-mesh, "
        "09-containerization, 10-config"
    )
    assert caught.value.hint == "`labctl list` describes them"


def test_no_labs_at_all() -> None:
    with pytest.raises(UsageError, match="the labs are: none"):
        resolve_lab("x", [])
