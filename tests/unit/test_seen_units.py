"""SeenUnits: the bounded memory of units this process exposed, which spares repeated calls an event."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from router.store.events import SeenUnits


def test_a_unit_is_new_once_per_experiment() -> None:
    seen = SeenUnits(100)
    assert seen.add("churn", "u1")
    assert not seen.add("churn", "u1")
    assert seen.add("pricing", "u1")  # the same unit id in another experiment is another exposure
    assert ("churn", "u1") in seen
    assert ("churn", "u2") not in seen


def test_a_unit_is_remembered_for_at_least_half_the_size_in_newer_units() -> None:
    seen = SeenUnits(10)
    seen.add("churn", "first")
    for i in range(4):  # 4 newer units: 5 in all, still within half of the size
        seen.add("churn", f"u{i}")
    assert ("churn", "first") in seen
    assert not seen.add("churn", "first")


def test_units_not_met_again_are_forgotten_after_the_size_in_newer_units() -> None:
    seen = SeenUnits(10)
    seen.add("churn", "first")
    for i in range(10):
        seen.add("churn", f"u{i}")
    assert ("churn", "first") not in seen
    assert seen.add("churn", "first")  # forgotten: its exposure goes to Redis again, which keeps the first


def test_a_unit_met_again_is_kept_while_units_around_it_are_forgotten() -> None:
    seen = SeenUnits(10)
    seen.add("churn", "regular")
    for i in range(40):
        seen.add("churn", f"u{i}")
        if i % 4 == 0:
            assert not seen.add("churn", "regular")
    assert ("churn", "regular") in seen
    assert ("churn", "u0") not in seen


@given(st.lists(st.tuples(st.sampled_from(["a", "b"]), st.integers(0, 60)), max_size=400), st.integers(1, 40))
def test_it_never_holds_more_than_its_size_and_never_calls_a_remembered_unit_new(
    calls: list[tuple[str, int]], size: int
) -> None:
    seen = SeenUnits(size)
    for experiment, number in calls:
        unit = f"u{number}"
        remembered = (experiment, unit) in seen
        assert seen.add(experiment, unit) is not remembered
        assert (experiment, unit) in seen
        assert len(seen) <= max(size, 2)  # a size of 1 still keeps one unit in each generation
