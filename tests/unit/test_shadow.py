"""Which units the shadow share mirrors: a pure function of the seed, the unit and the percent."""

from __future__ import annotations

import pytest

from router.assignment.hashing import gb_hash
from router.shadow import mirrors_unit

UNITS = [f"user-{i}" for i in range(100_000)]


@pytest.mark.parametrize("percent", [pytest.param(1, id="1%"), pytest.param(25, id="25%"), pytest.param(90, id="90%")])
def test_the_share_of_units_mirrored_is_within_half_a_point_of_the_percent(percent: float) -> None:
    share = sum(mirrors_unit("exp", unit, percent) for unit in UNITS) / len(UNITS)
    assert share == pytest.approx(percent / 100, abs=0.005)


@pytest.mark.parametrize(("percent", "expected"), [pytest.param(0, 0, id="none"), pytest.param(100, 1, id="all")])
def test_zero_percent_mirrors_no_unit_and_a_hundred_every_unit(percent: float, expected: int) -> None:
    assert {mirrors_unit("exp", unit, percent) for unit in UNITS[:10_000]} == {bool(expected)}


@pytest.mark.parametrize("unit", [pytest.param(None, id="none"), pytest.param("", id="empty")])
def test_a_call_without_a_unit_is_never_mirrored(unit: str | None) -> None:
    assert not mirrors_unit("exp", unit, 100)


def test_whether_a_unit_is_mirrored_does_not_depend_on_its_assignment_bucket() -> None:
    # A seed of its own: mirrored units are spread over the assignment buckets, not the lowest ones.
    mirrored = [unit for unit in UNITS if mirrors_unit("exp", unit, 50)]
    low = sum(1 for unit in mirrored if (gb_hash("exp", unit, 2) or 0) < 0.5)
    assert low / len(mirrored) == pytest.approx(0.5, abs=0.01)
