"""The assignment of one unit to a variant, in the order SPEC section 2 fixes.

Pure: the caller reads the unit id, the X-Variant header and the sticky record; this module only
decides, so every replica and every process decides the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from router.assignment.hashing import gb_hash
from router.assignment.ranges import choose_variation, in_namespace, normalized_ranges
from router.config.schema import Experiment, Status
from router.errors import InvalidPayload, MissingUnit

OVERRIDE_HEADER: Final = "X-Variant"


class Reason(StrEnum):
    """Why a unit got its variant; sent as the X-Assignment header and used as a metric label."""

    NO_UNIT = "no_unit"
    PAUSED = "paused"
    CONCLUDED = "concluded"
    FORCED = "forced"
    OVERRIDE = "override"
    NOT_ENROLLED = "not_enrolled"
    STICKY = "sticky"
    HASHED = "hashed"
    # Never returned by assign(): the caller sets it when a failing variant falls back to control.
    FALLBACK = "fallback"


EXPOSING_REASONS: Final[frozenset[Reason]] = frozenset({Reason.STICKY, Reason.HASHED})


@dataclass(frozen=True, slots=True)
class Assignment:
    """The variant served to a unit and why, so callers can tell analysed traffic from the rest."""

    variant: str
    reason: Reason
    bucket: float | None = None  # the hash value n when one was computed

    @property
    def exposed(self) -> bool:
        """Whether this assignment starts an exposure: only randomised traffic enters the analysis."""
        return self.reason in EXPOSING_REASONS


def assign(
    experiment: Experiment, unit_id: str | None, *, override: str | None = None, sticky: str | None = None
) -> Assignment:
    """Pick the variant for one unit. Order matters: see SPEC section 2."""
    # 1. No unit: nothing to hash, so either refuse or serve the control unanalysed.
    if not unit_id:
        if experiment.on_missing_unit == "reject":
            raise MissingUnit(
                f"experiment {experiment.name!r} needs a unit id from {experiment.unit}, and the request has none"
            )
        return Assignment(experiment.control, Reason.NO_UNIT)

    # 2. A stopped experiment serves one arm to everyone.
    if experiment.status is Status.PAUSED:
        return Assignment(experiment.control, Reason.PAUSED)
    if experiment.status is Status.CONCLUDED:
        # The schema requires a winner when concluded; control is the safe arm should one slip through.
        winner = experiment.winner if experiment.winner is not None else experiment.control
        return Assignment(winner, Reason.CONCLUDED)

    # 3. Hand-picked traffic: served, but kept out of the analysis.
    forced = experiment.force.get(unit_id)
    if forced is not None:
        return Assignment(forced, Reason.FORCED)
    names = experiment.variant_names
    if experiment.allow_override_header and override is not None:
        if override not in names:
            valid = ", ".join(names)
            raise InvalidPayload(
                f"{OVERRIDE_HEADER} {override!r} is not a variant of experiment {experiment.name!r}; "
                f"valid variants: {valid}",
                details=[f"{OVERRIDE_HEADER}: {override!r} is not one of {list(names)}"],
            )
        return Assignment(override, Reason.OVERRIDE)

    # 4. Outside the namespace share: another experiment may own this unit.
    namespace = experiment.namespace
    if namespace is not None and not in_namespace(unit_id, namespace.id, namespace.start, namespace.end):
        return Assignment(experiment.control, Reason.NOT_ENROLLED)

    # 5. A stored first assignment outlives weight edits; one naming a removed variant is stale.
    if experiment.sticky and sticky is not None and sticky in names:
        return Assignment(sticky, Reason.STICKY)

    # 6. The hash, as GrowthBook computes it.
    n = gb_hash(experiment.hash_seed, unit_id, experiment.hash_version)
    if n is None:
        # The schema allows versions 1 and 2 only, both defined; never guess a bucket.
        raise ValueError(f"experiment {experiment.name!r}: unknown hash_version {experiment.hash_version}")
    index = choose_variation(n, normalized_ranges(experiment.coverage, experiment.weights))
    if index == -1:
        return Assignment(experiment.control, Reason.NOT_ENROLLED, bucket=n)
    return Assignment(names[index], Reason.HASHED, bucket=n)
