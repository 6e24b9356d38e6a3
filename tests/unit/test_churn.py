"""The preview of an edit: which share of units moves from which variant to which, from the ranges alone."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest

from router.assignment.assign import assign
from router.assignment.churn import Move, moved_share, served_segments, unit_moves
from router.config.schema import Experiment


def canary(control: float = 90, candidate: float = 10, **fields: Any) -> Experiment:
    base: dict[str, Any] = {
        "name": "churn",
        "control": "current",
        "variants": [
            {"name": "current", "weight": control, "url": "http://127.0.0.1:9/a"},
            {"name": "candidate", "weight": candidate, "url": "http://127.0.0.1:9/b"},
        ],
    }
    return Experiment.model_validate(base | fields)


def three_arms(a: float, b: float, c: float) -> Experiment:
    return Experiment.model_validate(
        {
            "name": "ranking",
            "control": "a",
            "variants": [
                {"name": n, "weight": w, "url": f"http://127.0.0.1:9/{n}"}
                for n, w in zip("abc", (a, b, c), strict=True)
            ],
        }
    )


def test_raising_a_canary_from_10_to_25_percent_moves_15_percent_from_control_to_canary_only() -> None:
    assert unit_moves(canary(90, 10), canary(75, 25)) == [Move("current", "candidate", 0.15)]


def test_lowering_the_canary_moves_units_back_to_control_only() -> None:
    assert unit_moves(canary(75, 25), canary(90, 10)) == [Move("candidate", "current", 0.15)]


def test_an_edit_that_keeps_the_shares_moves_nobody() -> None:
    assert unit_moves(canary(90, 10), canary(9, 1)) == []


@pytest.mark.parametrize(
    ("before", "after", "expected"),
    [
        pytest.param(
            canary(),
            canary(status="paused"),
            [Move("candidate", "current", 0.1)],
            id="pause-sends-the-canary-units-to-control",
        ),
        pytest.param(
            canary(),
            canary(status="concluded", winner="candidate"),
            [Move("current", "candidate", 0.9)],
            id="promoting-the-canary-moves-every-control-unit",
        ),
        pytest.param(
            canary(50, 50),
            canary(50, 50, coverage=0.5),
            [Move("candidate", "current", 0.25)],
            id="halving-coverage-sends-the-uncovered-canary-units-to-control",
        ),
        pytest.param(
            three_arms(50, 25, 25),
            three_arms(40, 30, 30),
            [Move("a", "b", 0.1), Move("b", "c", 0.05)],
            id="three-arms-shift-along-the-ranges",
        ),
        pytest.param(
            canary(namespace=["checkout", 0.0, 0.5]),
            canary(75, 25, namespace=["checkout", 0.0, 0.5]),
            [Move("current", "candidate", 0.075)],
            id="a-namespace-scales-the-share-by-its-width",
        ),
    ],
)
def test_moves_follow_the_ranges(before: Experiment, after: Experiment, expected: list[Move]) -> None:
    assert unit_moves(before, after) == expected


def test_moved_share_adds_up_every_move() -> None:
    assert moved_share(unit_moves(three_arms(50, 25, 25), three_arms(40, 30, 30))) == 0.15


def test_served_segments_cover_the_unit_interval_with_coverage_gaps_served_by_control() -> None:
    assert served_segments(canary(50, 50, coverage=0.5)) == [
        (0.0, 0.25, "current"),
        (0.25, 0.5, "current"),
        (0.5, 0.75, "candidate"),
        (0.75, 1.0, "current"),
    ]


def test_a_change_of_seed_is_refused_as_it_re_randomises_every_unit() -> None:
    with pytest.raises(ValueError, match=r"re-randomises"):
        unit_moves(canary(), canary(seed="other"))


def test_the_preview_agrees_with_assignment_on_20000_units() -> None:
    before, after = three_arms(50, 25, 25), three_arms(40, 30, 30)
    rng = random.Random(5)
    units = [f"u-{rng.getrandbits(40):x}" for _ in range(20_000)]
    moved = Counter(
        (assign(before, u).variant, assign(after, u).variant)
        for u in units
        if assign(before, u).variant != assign(after, u).variant
    )
    assert set(moved) == {("a", "b"), ("b", "c")}
    for move in unit_moves(before, after):
        # binomial standard error at 20 000 units is under 0.0022; 4 of them
        assert moved[move.source, move.target] / len(units) == pytest.approx(move.share, abs=0.009)
