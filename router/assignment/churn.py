"""Which share of units a config change moves from which variant to which (the admin preview).

Pure, like the rest of `router.assignment`, and computed from the bucket ranges of both configs
rather than by sampling units: a unit with hash `n` moves from `a` to `b` exactly when `n` lies in
what `a` served before and in what `b` serves after, so each move is the length of an overlap.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from router.assignment.ranges import normalized_ranges
from router.config.schema import Experiment, Status

# Shares are rounded to this many decimals: float sums of weights leave slivers near 1e-16 that
# are no units at all (the hash has 1/10 000 granularity).
SHARE_DECIMALS: Final = 9

#: (start, end, variant): the units whose hash falls in [start, end) are served `variant`
Segment = tuple[float, float, str]


@dataclass(frozen=True, slots=True)
class Move:
    """`share` of all units would be served `target` instead of `source`."""

    source: str
    target: str
    share: float


def served_segments(experiment: Experiment) -> list[Segment]:
    """The unit interval cut into what each variant serves; coverage gaps serve control (not enrolled)."""
    if experiment.status is Status.PAUSED:
        return [(0.0, 1.0, experiment.control)]
    if experiment.status is Status.CONCLUDED:
        return [(0.0, 1.0, experiment.winner or experiment.control)]
    ranges = normalized_ranges(experiment.coverage, experiment.weights)
    segments: list[Segment] = []
    cursor = 0.0
    for (start, end), name in zip(ranges, experiment.variant_names, strict=True):
        if start > cursor:
            segments.append((cursor, start, experiment.control))
        if end > start:
            segments.append((start, end, name))
        cursor = max(cursor, end)
    if cursor < 1.0:
        segments.append((cursor, 1.0, experiment.control))
    return segments


def unit_moves(before: Experiment, after: Experiment) -> list[Move]:
    """Every (from, to) pair of variants with the share of all units that would move, largest first.

    Both configs must hash alike (seed, hash version, namespace): the fields an edit of a running
    experiment leaves alone. Forced units and sticky records are a handful of named units and are
    not counted.
    """
    if (before.hash_seed, before.hash_version, before.namespace) != (
        after.hash_seed,
        after.hash_version,
        after.namespace,
    ):
        raise ValueError(f"experiment {after.name!r}: a change of seed, hash version or namespace re-randomises")
    # Units outside the namespace are served control before and after; only those inside can move.
    enrolled = before.namespace.end - before.namespace.start if before.namespace is not None else 1.0
    shares: defaultdict[tuple[str, str], float] = defaultdict(float)
    for old_start, old_end, source in served_segments(before):
        for new_start, new_end, target in served_segments(after):
            overlap = min(old_end, new_end) - max(old_start, new_start)
            if source != target and overlap > 0:
                shares[source, target] += overlap * enrolled
    moves = [Move(source, target, round(share, SHARE_DECIMALS)) for (source, target), share in shares.items()]
    return sorted((m for m in moves if m.share > 0), key=lambda m: (-m.share, m.source, m.target))


def moved_share(moves: Sequence[Move]) -> float:
    """The share of all units that would be served a different variant."""
    return round(sum(m.share for m in moves), SHARE_DECIMALS)
