"""Ranges, choice and namespaces against GrowthBook's shared vectors, plus our normalised ranges."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from router.assignment.ranges import (
    BucketRange,
    bucket_ranges,
    choose_variation,
    equal_weights,
    in_namespace,
    normalized_ranges,
)

CASES = Path(__file__).parent.parent / "data" / "growthbook_cases.json"
# GrowthBook's own SDK tests round ranges and weights to 6 places before comparing.
PLACES = 6


def _section(name: str) -> list[Any]:
    cases: list[Any] = json.loads(CASES.read_text(encoding="utf-8"))[name]
    return cases


def _rounded(ranges: Sequence[Sequence[float]]) -> list[list[float]]:
    return [[round(x, PLACES) for x in r] for r in ranges]


@pytest.mark.parametrize(
    ("count", "coverage", "weights", "expected"),
    [pytest.param(*args, expected, id=name) for name, args, expected in _section("getBucketRange")],
)
def test_bucket_ranges_match_growthbook_vectors(
    count: int, coverage: float, weights: list[float] | None, expected: list[list[float]]
) -> None:
    assert _rounded(bucket_ranges(count, coverage, weights)) == _rounded(expected)


@pytest.mark.parametrize(
    ("n", "ranges", "expected"),
    [pytest.param(n, ranges, expected, id=name) for name, n, ranges, expected in _section("chooseVariation")],
)
def test_choose_variation_matches_growthbook_vectors(n: float, ranges: list[list[float]], expected: int) -> None:
    assert choose_variation(n, [(start, end) for start, end in ranges]) == expected


@pytest.mark.parametrize(
    ("unit_id", "namespace", "expected"),
    [pytest.param(unit, ns, expected, id=name) for name, unit, ns, expected in _section("inNamespace")],
)
def test_in_namespace_matches_growthbook_vectors(unit_id: str, namespace: list[Any], expected: bool) -> None:
    namespace_id, start, end = namespace
    assert in_namespace(unit_id, namespace_id, start, end) is expected


@pytest.mark.parametrize(
    ("n", "expected"),
    [pytest.param(n, expected, id=f"n={n}") for n, expected in _section("getEqualWeights")],
)
def test_equal_weights_match_growthbook_vectors(n: int, expected: list[float]) -> None:
    assert [round(w, PLACES) for w in equal_weights(n)] == [round(w, PLACES) for w in expected]


def test_bucket_ranges_fall_back_to_equal_weights_when_a_weight_is_negative() -> None:
    assert bucket_ranges(2, 1, [1.2, -0.2]) == [(0, 0.5), (0.5, 1)]


@pytest.mark.parametrize(
    ("weights", "expected"),
    [
        pytest.param((50, 50), ((0, 0.5), (0.5, 1)), id="percent"),
        pytest.param((9, 1), ((0, 0.9), (0.9, 1)), id="ratio"),
        pytest.param((0.25, 0.75), ((0, 0.25), (0.25, 1)), id="already-shares"),
        pytest.param((3, 0, 1), ((0, 0.75), (0.75, 0.75), (0.75, 1)), id="zero-weight-gets-an-empty-range"),
    ],
)
def test_normalized_ranges_scale_any_weights_to_shares(
    weights: tuple[float, ...], expected: tuple[BucketRange, ...]
) -> None:
    assert _rounded(normalized_ranges(1.0, weights)) == _rounded(expected)


def test_normalized_ranges_shrink_each_range_from_its_start_with_coverage() -> None:
    assert _rounded(normalized_ranges(0.5, (60, 40))) == [[0, 0.3], [0.6, 0.8]]


def test_normalized_ranges_are_cached_for_the_request_path() -> None:
    assert normalized_ranges(1.0, (7, 3)) is normalized_ranges(1.0, (7, 3))


@pytest.mark.parametrize(
    "weights",
    [
        pytest.param((0, 0), id="zero-sum"),
        pytest.param((1, -1, 1), id="negative"),
        pytest.param((1, float("inf")), id="infinite"),
        pytest.param((1, float("nan")), id="nan"),
        pytest.param((), id="empty"),
    ],
)
def test_normalized_ranges_reject_weights_that_cannot_be_shares(weights: tuple[float, ...]) -> None:
    with pytest.raises(ValueError, match="weights must be"):
        normalized_ranges(1.0, weights)


def test_in_namespace_includes_the_start_of_its_range() -> None:
    # user-1 hashes to exactly 0.694 in the checkout namespace (v1 hashes are thousandths).
    assert in_namespace("user-1", "checkout", 0.694, 1.0)


def test_in_namespace_excludes_the_end_of_its_range() -> None:
    assert not in_namespace("user-1", "checkout", 0.0, 0.694)
