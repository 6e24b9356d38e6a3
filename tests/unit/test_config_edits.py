"""Edits of a stored experiment (PATCH bodies, promotions) give whole, valid configs or name each problem."""

from __future__ import annotations

from typing import Any

import pytest

from router.config.edits import ConfigPatch, Promotion, validated
from router.config.schema import Experiment, Status
from router.errors import InvalidConfig


def experiment(**fields: Any) -> Experiment:
    base: dict[str, Any] = {
        "name": "churn",
        "control": "current",
        "variants": [
            {"name": "current", "weight": 90, "url": "http://127.0.0.1:9/a"},
            {"name": "candidate", "weight": 10, "url": "http://127.0.0.1:9/b"},
        ],
        "shadow": {"variant": "candidate", "percent": 5},
    }
    return Experiment.model_validate(base | fields)


def patch(**fields: Any) -> ConfigPatch:
    return validated(ConfigPatch, fields)


def problems(body: dict[str, Any], base: Experiment | None = None) -> list[str]:
    with pytest.raises(InvalidConfig) as invalid:
        validated(ConfigPatch, body).apply(base or experiment())
    assert invalid.value.code == "invalid_config"
    return invalid.value.details


def test_a_weights_patch_changes_only_the_variants_it_names() -> None:
    assert patch(weights={"candidate": 30}).apply(experiment()).weights == (90, 30)


def test_a_patch_leaves_the_fields_it_does_not_send() -> None:
    after = patch(status="paused").apply(experiment())
    assert after == experiment(status="paused")


def test_a_null_shadow_stops_shadowing() -> None:
    assert patch(shadow=None).apply(experiment()).shadow is None


def test_force_replaces_the_whole_map() -> None:
    after = patch(force={"qa-2": "current"}).apply(experiment(force={"qa-1": "candidate"}))
    assert after.force == {"qa-2": "current"}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param(
            {"weights": {"nope": 5}},
            ["weights.nope: 'nope' is not one of the variants ['current', 'candidate']"],
            id="unknown-variant",
        ),
        pytest.param({"weights": {"candidate": -5}}, ["weights.candidate: must be >= 0, got -5"], id="negative"),
        pytest.param({"coverage": 1.5}, ["coverage: must be <= 1, got 1.5"], id="coverage"),
        pytest.param({"colour": "red"}, ["colour: is not a known field"], id="unknown-field"),
        pytest.param({"status": None}, ["status: cannot be null"], id="null-status"),
        pytest.param(
            {"status": "concluded"}, ["winner: is required when status is concluded"], id="concluded-without-winner"
        ),
        pytest.param(
            {"weights": {"current": 0, "candidate": 0}}, ["variants: weights must have a positive sum"], id="all-zero"
        ),
    ],
)
def test_an_invalid_patch_names_the_field(body: dict[str, Any], expected: list[str]) -> None:
    assert problems(body) == expected


def test_a_promotion_concludes_with_the_winner() -> None:
    after = Promotion(variant="candidate").apply(experiment())
    assert (after.status, after.winner, after.weights) == (Status.CONCLUDED, "candidate", (90, 10))


def test_promoting_an_unknown_variant_names_it() -> None:
    with pytest.raises(InvalidConfig) as invalid:
        Promotion(variant="nope").apply(experiment())
    assert invalid.value.details == ["variant: 'nope' is not one of the variants ['current', 'candidate']"]
