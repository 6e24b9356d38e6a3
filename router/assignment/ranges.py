"""Bucket ranges and the choice of a variant, with GrowthBook's semantics.

Pure: the same inputs give the same ranges in every process and in every GrowthBook SDK.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Final

from router.assignment.hashing import gb_hash

BucketRange = tuple[float, float]

# GrowthBook's tolerance: weight vectors summing outside it are replaced by equal weights.
WEIGHT_SUM_MIN: Final = 0.99
WEIGHT_SUM_MAX: Final = 1.01


def equal_weights(n: int) -> list[float]:
    """Equal shares for `n` variants (GrowthBook's getEqualWeights), the fallback for bad weights."""
    if n < 1:
        return []
    return [1 / n] * n


def _usable_weights(weights: Sequence[float], count: int) -> bool:
    # The GrowthBook python SDK's rule; it also refuses negative and non-finite weights so a
    # range can never be inverted.
    if len(weights) != count:
        return False
    if not all(math.isfinite(w) and w >= 0 for w in weights):
        return False
    return WEIGHT_SUM_MIN <= sum(weights) <= WEIGHT_SUM_MAX


def bucket_ranges(count: int, coverage: float, weights: Sequence[float] | None = None) -> list[BucketRange]:
    """GrowthBook's getBucketRanges: variant i holds [c_i, c_i + coverage * w_i) of the unit interval."""
    coverage = min(max(coverage, 0.0), 1.0)
    chosen = list(weights) if weights is not None and _usable_weights(weights, count) else equal_weights(count)
    ranges: list[BucketRange] = []
    cumulative = 0.0
    for w in chosen:
        start = cumulative
        cumulative += w
        ranges.append((start, start + coverage * w))
    return ranges


@functools.lru_cache(maxsize=1024)
def normalized_ranges(coverage: float, weights: tuple[float, ...]) -> tuple[BucketRange, ...]:
    """The ranges of a config's weights (any non-negative numbers); cached as it runs on every request."""
    total = math.fsum(weights)
    if not all(math.isfinite(w) and w >= 0 for w in weights) or not (math.isfinite(total) and total > 0):
        raise ValueError(f"weights must be finite, non-negative and have a positive sum, got {list(weights)}")
    # Normalised weights sum to 1 within rounding, so GrowthBook's validity check always keeps them.
    return tuple(bucket_ranges(len(weights), coverage, [w / total for w in weights]))


def choose_variation(n: float, ranges: Sequence[BucketRange]) -> int:
    """The index of the range holding `n` (start inclusive, end exclusive), -1 when none does."""
    for i, (start, end) in enumerate(ranges):
        if start <= n < end:
            return i
    return -1


def in_namespace(unit_id: str, namespace_id: str, start: float, end: float) -> bool:
    """Whether the unit falls in [start, end) of the namespace, so experiments there can share no unit."""
    n = gb_hash("__" + namespace_id, unit_id, 1)
    return n is not None and start <= n < end
