"""assign() follows SPEC section 2: each reason, and which step wins when several apply."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from router.assignment.assign import EXPOSING_REASONS, Assignment, Reason, assign
from router.assignment.hashing import gb_hash
from router.assignment.ranges import choose_variation, normalized_ranges
from router.config.schema import Experiment
from router.errors import InvalidPayload, MissingUnit

# Pinned with the default seed "churn", hash v2, 50/50:
#   user-1 -> 0.8676 (candidate), user-2 -> 0.2813 (current);
#   namespace checkout [0, 0.5): user-1 is outside, user-4 (0.8518, candidate) inside.
HASHED_TO_CANDIDATE = "user-1"
HASHED_TO_CURRENT = "user-2"
OUTSIDE_CHECKOUT = "user-1"
INSIDE_CHECKOUT = "user-4"


def experiment(**fields: Any) -> Experiment:
    config: dict[str, Any] = {
        "name": "churn",
        "control": "current",
        "variants": [
            {"name": "current", "weight": 50, "url": "http://127.0.0.1:9001/predict"},
            {"name": "candidate", "weight": 50, "url": "http://127.0.0.1:9002/predict"},
        ],
    }
    config.update(fields)
    return Experiment.model_validate(config)


def v2_bucket(seed: str, unit_id: str) -> float:
    n = gb_hash(seed, unit_id, 2)
    assert n is not None, "hash version 2 is defined"
    return n


# 1. missing unit


@pytest.mark.parametrize("unit_id", [pytest.param(None, id="absent"), pytest.param("", id="empty")])
def test_a_missing_unit_gets_control_by_default(unit_id: str | None) -> None:
    assert assign(experiment(), unit_id) == Assignment("current", Reason.NO_UNIT)


def test_a_missing_unit_is_rejected_when_the_experiment_says_reject() -> None:
    with pytest.raises(MissingUnit, match=r"'churn'.*header:X-Session"):
        assign(experiment(on_missing_unit="reject", unit="header:X-Session"), None)


def test_a_missing_unit_is_decided_before_the_status() -> None:
    assert assign(experiment(status="paused"), None).reason is Reason.NO_UNIT


# 2. status


def test_a_paused_experiment_serves_control() -> None:
    assert assign(experiment(status="paused"), HASHED_TO_CANDIDATE) == Assignment("current", Reason.PAUSED)


def test_a_concluded_experiment_serves_the_winner() -> None:
    concluded = experiment(status="concluded", winner="candidate")
    assert assign(concluded, HASHED_TO_CURRENT) == Assignment("candidate", Reason.CONCLUDED)


def test_paused_wins_over_force() -> None:
    paused = experiment(status="paused", force={HASHED_TO_CURRENT: "candidate"})
    assert assign(paused, HASHED_TO_CURRENT).reason is Reason.PAUSED


def test_concluded_wins_over_an_override() -> None:
    concluded = experiment(status="concluded", winner="current", allow_override_header=True)
    assert assign(concluded, HASHED_TO_CANDIDATE, override="candidate") == Assignment("current", Reason.CONCLUDED)


# 3. force and override


def test_a_forced_unit_gets_its_variant() -> None:
    forced = experiment(force={HASHED_TO_CURRENT: "candidate"})
    assert assign(forced, HASHED_TO_CURRENT) == Assignment("candidate", Reason.FORCED)


def test_force_wins_over_an_override() -> None:
    forced = experiment(force={HASHED_TO_CURRENT: "candidate"}, allow_override_header=True)
    assert assign(forced, HASHED_TO_CURRENT, override="current") == Assignment("candidate", Reason.FORCED)


def test_force_wins_over_the_namespace() -> None:
    forced = experiment(namespace=["checkout", 0.0, 0.5], force={OUTSIDE_CHECKOUT: "candidate"})
    assert assign(forced, OUTSIDE_CHECKOUT) == Assignment("candidate", Reason.FORCED)


def test_an_allowed_override_picks_the_named_variant() -> None:
    allowed = experiment(allow_override_header=True)
    assert assign(allowed, HASHED_TO_CURRENT, override="candidate") == Assignment("candidate", Reason.OVERRIDE)


def test_an_override_is_ignored_when_the_header_is_not_allowed() -> None:
    assert assign(experiment(), HASHED_TO_CURRENT, override="candidate").reason is Reason.HASHED


def test_an_unknown_override_is_ignored_when_the_header_is_not_allowed() -> None:
    assert assign(experiment(), HASHED_TO_CURRENT, override="nonsense").reason is Reason.HASHED


def test_an_override_naming_no_variant_is_invalid_payload() -> None:
    with pytest.raises(InvalidPayload, match=r"'nonsense'.*current, candidate"):
        assign(experiment(allow_override_header=True), HASHED_TO_CURRENT, override="nonsense")


def test_an_override_wins_over_the_namespace() -> None:
    allowed = experiment(namespace=["checkout", 0.0, 0.5], allow_override_header=True)
    assert assign(allowed, OUTSIDE_CHECKOUT, override="candidate").reason is Reason.OVERRIDE


def test_an_override_wins_over_a_sticky_record() -> None:
    allowed = experiment(sticky=True, allow_override_header=True)
    assert assign(allowed, HASHED_TO_CURRENT, override="candidate", sticky="current").reason is Reason.OVERRIDE


# 4. namespace


def test_a_unit_outside_the_namespace_is_not_enrolled() -> None:
    spaced = experiment(namespace=["checkout", 0.0, 0.5])
    assert assign(spaced, OUTSIDE_CHECKOUT) == Assignment("current", Reason.NOT_ENROLLED)


def test_a_unit_inside_the_namespace_is_hashed() -> None:
    spaced = experiment(namespace=["checkout", 0.0, 0.5])
    assert assign(spaced, INSIDE_CHECKOUT) == Assignment("candidate", Reason.HASHED, bucket=0.8518)


def test_the_namespace_wins_over_a_sticky_record() -> None:
    spaced = experiment(namespace=["checkout", 0.0, 0.5], sticky=True)
    assert assign(spaced, OUTSIDE_CHECKOUT, sticky="candidate").reason is Reason.NOT_ENROLLED


# 5. sticky


def test_a_sticky_record_keeps_the_first_variant() -> None:
    assert assign(experiment(sticky=True), HASHED_TO_CANDIDATE, sticky="current") == Assignment(
        "current", Reason.STICKY
    )


def test_a_sticky_record_for_a_removed_variant_is_ignored() -> None:
    assert assign(experiment(sticky=True), HASHED_TO_CANDIDATE, sticky="retired").reason is Reason.HASHED


def test_a_sticky_record_is_ignored_when_the_experiment_is_not_sticky() -> None:
    # SPEC step 5 needs `sticky: true`; a record left from before stickiness was turned off is not used.
    assert assign(experiment(sticky=False), HASHED_TO_CANDIDATE, sticky="current").reason is Reason.HASHED


# 6. hash


@pytest.mark.parametrize(
    ("unit_id", "expected"),
    [
        pytest.param(HASHED_TO_CANDIDATE, Assignment("candidate", Reason.HASHED, bucket=0.8676), id="user-1"),
        pytest.param(HASHED_TO_CURRENT, Assignment("current", Reason.HASHED, bucket=0.2813), id="user-2"),
    ],
)
def test_a_running_experiment_hashes_the_unit(unit_id: str, expected: Assignment) -> None:
    assert assign(experiment(), unit_id) == expected


def test_the_seed_replaces_the_name_in_the_hash() -> None:
    # user-1 hashes to 0.2858 under "other-seed" against 0.8676 under the name.
    assert assign(experiment(seed="other-seed"), HASHED_TO_CANDIDATE) == Assignment(
        "current", Reason.HASHED, bucket=0.2858
    )


def test_hash_version_1_uses_growthbooks_first_hash() -> None:
    assert assign(experiment(hash_version=1), HASHED_TO_CANDIDATE) == Assignment("current", Reason.HASHED, bucket=0.334)


def test_a_unit_outside_the_coverage_is_not_enrolled_with_its_bucket() -> None:
    # Coverage 0.5 leaves [0, 0.25) and [0.5, 0.75); user-1 at 0.8676 is in neither.
    assert assign(experiment(coverage=0.5), HASHED_TO_CANDIDATE) == Assignment(
        "current", Reason.NOT_ENROLLED, bucket=0.8676
    )


def test_reduced_coverage_leaves_some_units_out_and_enrolls_others() -> None:
    reasons = {assign(experiment(coverage=0.5), f"user-{i}").reason for i in range(200)}
    assert reasons == {Reason.NOT_ENROLLED, Reason.HASHED}


def test_zero_coverage_enrolls_no_unit() -> None:
    reasons = {assign(experiment(coverage=0.0), f"user-{i}").reason for i in range(200)}
    assert reasons == {Reason.NOT_ENROLLED}


def test_a_zero_weight_variant_is_never_chosen() -> None:
    three = experiment(
        variants=[
            {"name": "current", "weight": 50, "url": "http://127.0.0.1:9001/predict"},
            {"name": "dormant", "weight": 0, "url": "http://127.0.0.1:9003/predict"},
            {"name": "candidate", "weight": 50, "url": "http://127.0.0.1:9002/predict"},
        ]
    )
    assert {assign(three, f"user-{i}").variant for i in range(2000)} == {"current", "candidate"}


def test_a_hashed_assignment_is_the_growthbook_chain_of_hash_ranges_and_choice() -> None:
    exp = experiment(coverage=0.8)
    ranges = normalized_ranges(0.8, (50, 50))
    units = [f"unit-{i}" for i in range(300)]
    indexes = [choose_variation(v2_bucket("churn", unit), ranges) for unit in units]
    expected = ["current" if index == -1 else exp.variant_names[index] for index in indexes]
    assert [assign(exp, unit).variant for unit in units] == expected


# the Assignment value


@pytest.mark.parametrize("reason", [pytest.param(reason, id=reason.value) for reason in Reason])
def test_only_sticky_and_hashed_assignments_are_exposures(reason: Reason) -> None:
    assert Assignment("current", reason).exposed is (reason in {Reason.STICKY, Reason.HASHED})


def test_the_exposing_reasons_are_sticky_and_hashed() -> None:
    assert frozenset({Reason.STICKY, Reason.HASHED}) == EXPOSING_REASONS


def test_an_assignment_is_immutable() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Assignment("current", Reason.HASHED).variant = "candidate"  # type: ignore[misc]


def test_reasons_render_as_their_header_values() -> None:
    assert f"{Reason.NOT_ENROLLED}" == "not_enrolled"
