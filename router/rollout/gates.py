"""The statistics of a canary's gates (SPEC section 7), as pure functions of the stored per-variant stats.

A gate bounds one metric of the canary against control. Each evaluation builds an interval at
1 - alpha for the quantity the bound limits and compares its two ends with the limit: the gate
fails when the whole interval violates the bound (a violation at 95% confidence), passes when
the whole interval satisfies it (the data rule a violation out), and is inconclusive otherwise,
so a rollout holds rather than rolls back for lack of data. Declared metrics go through the
report's own `compare`, so a gate and the report never disagree about the same numbers.

With `sequential`, every interval is the always-valid one (the report's confidence sequence,
`sequential_multiplier` standard errors wide instead of a normal quantile): a controller looks
at every interval of a rollout, and fixed-sample intervals would fail a canary as good as
control at some look far more often than alpha.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from enum import Enum, StrEnum
from statistics import NormalDist
from typing import Any, Final, NamedTuple

from router.config.schema import OPERATIONAL_GATE_METRICS, Gate, MetricKind
from router.reports.stats import ALPHA, compare, sequential_multiplier
from router.store.stats import LATENCY_BUCKETS_MS, VariantStats, latency_quantile

ERROR_RATE: Final = "error_rate"
LATENCY_QUANTILES: Final[Mapping[str, float]] = {"latency_p50": 0.50, "latency_p95": 0.95, "latency_p99": 0.99}


class Verdict(StrEnum):
    """What one gate says about the canary at one look."""

    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"


class Bound(StrEnum):
    """The kinds of bound a gate can set; the value is the config key."""

    MAX_INCREASE = "max_increase"
    MAX_RATIO = "max_ratio"
    NO_WORSE_THAN = "no_worse_than"


@dataclass(frozen=True, slots=True)
class GateResult:
    """One gate's verdict with the inputs behind it, as the rollout history records it."""

    metric: str
    bound: str  # a `Bound` value
    limit: float  # the configured bound value
    verdict: Verdict
    estimate: float | None  # on the bound's scale: a difference, a ratio, or a relative lift
    ci_low: float | None
    ci_high: float | None
    control: float | None  # the control arm's value of the metric (rate, ms, mean)
    canary: float | None
    control_n: int  # calls for error_rate and latency (one observation each), units for declared metrics
    canary_n: int
    detail: str | None  # why the gate is inconclusive when there is no estimate
    sequential: bool = False  # whether the interval is the always-valid one

    def to_json(self) -> dict[str, Any]:
        """Every field as plain JSON: enums as their values, infinities and NaN as None."""
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}


def gate_bound(gate: Gate) -> tuple[Bound, float]:
    """The one bound a gate sets and its limit (the schema guarantees exactly one)."""
    for bound in Bound:
        limit = getattr(gate, bound.value)
        if limit is not None:
            return bound, float(limit)
    raise ValueError(f"gate on {gate.metric!r} sets none of {[b.value for b in Bound]}")


def evaluate_gate(
    gate: Gate,
    control: VariantStats,
    canary: VariantStats,
    *,
    kind: MetricKind | None,
    alpha: float = ALPHA,
    sequential: bool = False,
) -> GateResult:
    """The verdict of `gate` on `canary` against `control`; `kind` is a declared metric's, None if operational.

    `sequential` judges on always-valid intervals (the rollout's `intervals: sequential`).
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be between 0 and 1, got {alpha}")
    bound, limit = gate_bound(gate)
    if kind is not None:
        return _declared(gate.metric, kind, bound, limit, control, canary, alpha, sequential)
    if gate.metric not in OPERATIONAL_GATE_METRICS:
        raise ValueError(
            f"gate metric {gate.metric!r} is not one of {sorted(OPERATIONAL_GATE_METRICS)} "
            "and has no declared kind to analyse it by"
        )
    if bound is Bound.NO_WORSE_THAN:
        raise ValueError(
            f"gate on {gate.metric!r}: `no_worse_than` bounds the relative lift of a declared metric; "
            "an operational metric takes `max_increase` or `max_ratio`"
        )
    if gate.metric == ERROR_RATE:
        return _error_rate(bound, limit, control, canary, alpha, sequential)
    return _latency(gate.metric, bound, limit, control, canary, alpha, sequential)


class _Interval(NamedTuple):
    estimate: float
    low: float
    high: float


def _verdict(bound: Bound, limit: float, low: float, high: float) -> Verdict:
    """FAIL when the whole interval violates the bound, PASS when all of it satisfies it (NaN decides nothing)."""
    if bound is Bound.NO_WORSE_THAN:
        if high < limit:
            return Verdict.FAIL
        if low >= limit:
            return Verdict.PASS
    else:
        if low > limit:
            return Verdict.FAIL
        if high <= limit:
            return Verdict.PASS
    return Verdict.INCONCLUSIVE


def _z(confidence: float) -> float:
    return NormalDist().inv_cdf(confidence)


def _multiplier(n: int, alpha: float, sequential: bool) -> float:
    """Standard errors each side for a two-sided 1 - alpha interval after `n` observations (infinite at none)."""
    if not sequential:
        return _z(1.0 - alpha / 2.0)
    return float(sequential_multiplier(n, alpha)) if n > 0 else math.inf


def _error_rate(
    bound: Bound, limit: float, control: VariantStats, canary: VariantStats, alpha: float, sequential: bool
) -> GateResult:
    x0, n0, x1, n1 = control.errors, control.requests, canary.errors, canary.requests
    rates = (x0 / n0 if n0 > 0 else None, x1 / n1 if n1 > 0 else None)
    problem = _calls_problem(control, canary)
    for arm in (control, canary):
        if problem is None and not 0 <= arm.errors <= arm.requests:
            problem = f"the counts of {arm.name!r} cannot be real: {arm.errors} errors in {arm.requests} requests"
    if problem is not None:
        return _inconclusive(ERROR_RATE, bound, limit, *rates, n0, n1, problem, sequential)
    z = _multiplier(n0 + n1, alpha, sequential)
    interval = _agresti_caffo(x0, n0, x1, n1, z) if bound is Bound.MAX_INCREASE else _katz(x0, n0, x1, n1, z)
    return _result(ERROR_RATE, bound, limit, interval, *rates, n0, n1, sequential)


def _agresti_caffo(x0: int, n0: int, x1: int, n1: int, z: float) -> _Interval:
    """Rate difference: a Wald interval after adding one error and one success to each arm.

    The plain Wald interval collapses to a point while neither arm has errors, which would let a
    small canary pass; the adjustment keeps near-nominal coverage for rare errors.
    """
    p0, p1 = (x0 + 1) / (n0 + 2), (x1 + 1) / (n1 + 2)
    centre = p1 - p0
    half = z * math.sqrt(p1 * (1.0 - p1) / (n1 + 2) + p0 * (1.0 - p0) / (n0 + 2))
    # A difference of rates lies in [-1, 1] whatever the approximation says.
    return _Interval(x1 / n1 - x0 / n0, max(-1.0, centre - half), min(1.0, centre + half))


def _katz(x0: int, n0: int, x1: int, n1: int, z: float) -> _Interval:
    """Rate ratio: Katz's log interval with 0.5 added to each count, defined even when an arm has no errors."""
    ratio = ((x1 + 0.5) / (n1 + 0.5)) / ((x0 + 0.5) / (n0 + 0.5))
    se = math.sqrt(1.0 / (x1 + 0.5) - 1.0 / (n1 + 0.5) + 1.0 / (x0 + 0.5) - 1.0 / (n0 + 0.5))
    return _Interval(ratio, ratio * math.exp(-z * se), ratio * math.exp(z * se))


class _Quantile(NamedTuple):
    """One arm's latency quantile (ms) and its order-statistic interval."""

    point: float
    low: float
    high: float  # +inf when the interval reaches the unbounded slowest bucket


def _latency(
    metric: str,
    bound: Bound,
    limit: float,
    control: VariantStats,
    canary: VariantStats,
    alpha: float,
    sequential: bool,
) -> GateResult:
    q = LATENCY_QUANTILES[metric]
    n0, n1 = sum(control.latency_counts), sum(canary.latency_counts)
    # Each arm's interval at 1 - alpha/2 (Bonferroni), so both hold together with 1 - alpha.
    c = _quantile_interval(control.latency_counts, q, _multiplier(n0, alpha / 2.0, sequential))
    t = _quantile_interval(canary.latency_counts, q, _multiplier(n1, alpha / 2.0, sequential))
    values = (c.point if c else None, t.point if t else None)
    if c is None or t is None:
        problem = _calls_problem(control, canary, by_latency=True)
        return _inconclusive(metric, bound, limit, *values, n0, n1, problem, sequential)
    if bound is Bound.MAX_INCREASE:
        interval = _Interval(t.point - c.point, t.low - c.high, t.high - c.low)
    else:
        interval = _Interval(_ratio(t.point, c.point), _ratio(t.low, c.high), _ratio(t.high, c.low))
    return _result(metric, bound, limit, interval, *values, n0, n1, sequential)


def _quantile_interval(counts: Sequence[int], q: float, z: float) -> _Quantile | None:
    """The quantiles at q ± z·sqrt(q(1-q)/n): the normal approximation of the order statistics that cover q."""
    n = sum(counts)
    if n <= 0:
        return None
    half = z * math.sqrt(q * (1.0 - q) / n)
    low_q, high_q = max(0.0, q - half), min(1.0, q + half)
    # The slowest bucket has no upper bound: a quantile in it reads as the bucket's lower bound,
    # which is a lower bound, never an upper one.
    high = math.inf if _beyond_last_bound(counts, high_q) else _read(counts, high_q)
    return _Quantile(_read(counts, q), _read(counts, low_q), high)


def _read(counts: Sequence[int], q: float) -> float:
    value = latency_quantile(counts, q)
    if value is None:  # unreachable: callers check that there are observations
        raise ValueError("a latency histogram without observations has no quantiles")
    return value


def _beyond_last_bound(counts: Sequence[int], q: float) -> bool:
    """Whether the q-quantile falls in the overflow bucket (slower than the last finite bound)."""
    below = sum(counts[: len(LATENCY_BUCKETS_MS)])
    return below == 0 or q * sum(counts) > below


def _ratio(numerator: float, denominator: float) -> float:
    """`numerator / denominator` of latencies; a control that can be 0 ms leaves the ratio unbounded."""
    return numerator / denominator if denominator > 0 else math.inf


def _declared(
    metric: str,
    kind: MetricKind,
    bound: Bound,
    limit: float,
    control: VariantStats,
    canary: VariantStats,
    alpha: float,
    sequential: bool,
) -> GateResult:
    comparison = compare(
        control.metric(metric), canary.metric(metric), kind, alpha=alpha, names=(control.name, canary.name)
    )
    means = (comparison.control.mean, comparison.treatment.mean)
    units = (comparison.control.n, comparison.treatment.n)
    if comparison.absolute is None or comparison.relative is None:
        detail = f"{comparison.reason}: {comparison.detail}"
        return _inconclusive(metric, bound, limit, *means, *units, detail, sequential)
    effect = comparison.absolute if bound is Bound.MAX_INCREASE else comparison.relative
    low, high = (effect.sequential_ci_low, effect.sequential_ci_high) if sequential else (effect.ci_low, effect.ci_high)
    if bound is Bound.MAX_RATIO:  # canary / control = 1 + relative lift, for a positive control mean
        interval = _Interval(1.0 + effect.estimate, 1.0 + low, 1.0 + high)
    else:
        interval = _Interval(effect.estimate, low, high)
    return _result(metric, bound, limit, interval, *means, *units, sequential)


def _calls_problem(control: VariantStats, canary: VariantStats, *, by_latency: bool = False) -> str | None:
    """A sentence naming the arms without calls, or None when both have some."""

    def calls(arm: VariantStats) -> int:
        return sum(arm.latency_counts) if by_latency else arm.requests

    empty = [f"{role} {arm.name!r}" for role, arm in (("control", control), ("canary", canary)) if calls(arm) <= 0]
    if not empty:
        return None
    return f"{' and '.join(empty)} {'has' if len(empty) == 1 else 'have'} no calls yet"


def _result(
    metric: str,
    bound: Bound,
    limit: float,
    interval: _Interval,
    control: float | None,
    canary: float | None,
    control_n: int,
    canary_n: int,
    sequential: bool,
) -> GateResult:
    return GateResult(
        metric=metric,
        bound=bound.value,
        limit=limit,
        verdict=_verdict(bound, limit, interval.low, interval.high),
        estimate=interval.estimate,
        ci_low=interval.low,
        ci_high=interval.high,
        control=control,
        canary=canary,
        control_n=control_n,
        canary_n=canary_n,
        detail=None,
        sequential=sequential,
    )


def _inconclusive(
    metric: str,
    bound: Bound,
    limit: float,
    control: float | None,
    canary: float | None,
    control_n: int,
    canary_n: int,
    detail: str | None,
    sequential: bool,
) -> GateResult:
    return GateResult(
        metric=metric,
        bound=bound.value,
        limit=limit,
        verdict=Verdict.INCONCLUSIVE,
        estimate=None,
        ci_low=None,
        ci_high=None,
        control=control,
        canary=canary,
        control_n=control_n,
        canary_n=canary_n,
        detail=detail,
        sequential=sequential,
    )


def _plain(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
