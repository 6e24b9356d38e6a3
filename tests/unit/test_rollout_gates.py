"""The canary gates' statistics: verdicts from intervals, checked by hand-computed cases and simulation."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import fields
from typing import Any

import numpy as np
import orjson
import pytest
from scipy import stats as scipy_stats

from router.config.schema import OPERATIONAL_GATE_METRICS, Gate, MetricKind
from router.reports.stats import compare
from router.rollout.gates import GateResult, Verdict, evaluate_gate
from router.store.stats import LATENCY_BUCKETS_MS, MetricTotals, VariantStats, latency_quantile

PASS, FAIL, INCONCLUSIVE = Verdict.PASS, Verdict.FAIL, Verdict.INCONCLUSIVE
LATENCY_METRICS = ("latency_p50", "latency_p95", "latency_p99")
SAME_FORMULA = 1e-12


def histogram(latencies_ms: Sequence[float] | np.ndarray) -> tuple[int, ...]:
    """Counts per latency bucket, upper bounds inclusive as the store counts them."""
    index = np.searchsorted(LATENCY_BUCKETS_MS, np.asarray(latencies_ms, dtype=np.float64), side="left")
    return tuple(int(c) for c in np.bincount(index, minlength=len(LATENCY_BUCKETS_MS) + 1))


def calls(name: str, requests: int, errors: int = 0, latencies_ms: Sequence[float] | np.ndarray = ()) -> VariantStats:
    """An arm described by its calls; the latency histogram holds one observation per request when given."""
    counts = histogram(latencies_ms) if len(latencies_ms) else (0,) * (len(LATENCY_BUCKETS_MS) + 1)
    return VariantStats(name, requests=requests, errors=errors, latency_counts=counts)


def lognormal_calls(name: str, n: int, *, median_ms: float, seed: int) -> VariantStats:
    latencies = np.random.default_rng(seed).lognormal(math.log(median_ms), 0.3, n)
    return calls(name, n, latencies_ms=latencies)


def conversions(name: str, units: int, converted: int, metric: str = "converted") -> VariantStats:
    return VariantStats(name, units=units, metrics={metric: MetricTotals(units, float(converted), float(converted))})


def values(name: str, units: int, mean: float, sd: float, metric: str = "revenue") -> VariantStats:
    """An arm whose per-unit values have exactly this mean and sample standard deviation."""
    total = units * mean
    sum_squares = (units - 1) * sd**2 + units * mean**2
    return VariantStats(name, units=units, metrics={metric: MetricTotals(units, total, sum_squares)})


def gate(metric: str, **bound: float) -> Gate:
    return Gate.model_validate({"metric": metric, **bound})


def follows_its_interval(result: GateResult) -> bool:
    """The verdict is the one the interval and the bound's direction dictate."""
    assert result.ci_low is not None and result.ci_high is not None
    if result.bound == "no_worse_than":
        violated, satisfied = result.ci_high < result.limit, result.ci_low >= result.limit
    else:
        violated, satisfied = result.ci_low > result.limit, result.ci_high <= result.limit
    expected = FAIL if violated else PASS if satisfied else INCONCLUSIVE
    return result.verdict is expected


# -- error rate ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bound", "control", "canary", "expected"),
    [
        pytest.param({"max_increase": 0.01}, (100_000, 1000), (100_000, 1000), PASS, id="increase-same-rate-passes"),
        pytest.param({"max_increase": 0.01}, (20_000, 200), (20_000, 1000), FAIL, id="increase-1%-to-5%-fails"),
        pytest.param({"max_increase": 0.01}, (20, 0), (20, 1), INCONCLUSIVE, id="increase-20-calls-inconclusive"),
        pytest.param({"max_ratio": 1.25}, (200_000, 2000), (200_000, 2000), PASS, id="ratio-same-rate-passes"),
        pytest.param({"max_ratio": 1.25}, (20_000, 200), (20_000, 600), FAIL, id="ratio-tripled-fails"),
        pytest.param({"max_ratio": 1.25}, (50, 1), (50, 2), INCONCLUSIVE, id="ratio-50-calls-inconclusive"),
    ],
)
def test_error_rate_gate_verdicts(
    bound: dict[str, float], control: tuple[int, int], canary: tuple[int, int], expected: Verdict
) -> None:
    result = evaluate_gate(gate("error_rate", **bound), calls("a", *control), calls("b", *canary), kind=None)

    assert result.verdict is expected
    assert follows_its_interval(result)
    assert (result.control, result.canary) == (control[1] / control[0], canary[1] / canary[0])
    assert (result.control_n, result.canary_n) == (control[0], canary[0])
    assert result.detail is None


def test_error_rate_difference_is_agresti_caffo() -> None:
    x0, n0, x1, n1 = 3, 150, 7, 120
    z = scipy_stats.norm.ppf(0.975)
    p0, p1 = (3 + 1) / (150 + 2), (7 + 1) / (120 + 2)
    half = z * math.sqrt(p1 * (1 - p1) / 122 + p0 * (1 - p0) / 152)

    result = evaluate_gate(gate("error_rate", max_increase=0.05), calls("a", n0, x0), calls("b", n1, x1), kind=None)

    assert result.estimate == pytest.approx(7 / 120 - 3 / 150, abs=SAME_FORMULA)
    assert result.ci_low == pytest.approx(p1 - p0 - half, abs=SAME_FORMULA)
    assert result.ci_high == pytest.approx(p1 - p0 + half, abs=SAME_FORMULA)


def test_error_rate_ratio_is_katz_log_interval_with_half_counts() -> None:
    x0, n0, x1, n1 = 5, 500, 12, 400
    z = scipy_stats.norm.ppf(0.975)
    ratio = (12.5 / 400.5) / (5.5 / 500.5)
    se = math.sqrt(1 / 12.5 - 1 / 400.5 + 1 / 5.5 - 1 / 500.5)

    result = evaluate_gate(gate("error_rate", max_ratio=2.0), calls("a", n0, x0), calls("b", n1, x1), kind=None)

    assert result.estimate == pytest.approx(ratio, rel=SAME_FORMULA)
    assert result.ci_low == pytest.approx(math.exp(math.log(ratio) - z * se), rel=SAME_FORMULA)
    assert result.ci_high == pytest.approx(math.exp(math.log(ratio) + z * se), rel=SAME_FORMULA)


def test_error_rate_interval_is_wider_at_a_smaller_alpha() -> None:
    control, canary = calls("a", 5000, 50), calls("b", 5000, 70)
    at_5 = evaluate_gate(gate("error_rate", max_increase=0.01), control, canary, kind=None)
    at_1 = evaluate_gate(gate("error_rate", max_increase=0.01), control, canary, kind=None, alpha=0.01)

    assert at_5.ci_low is not None and at_5.ci_high is not None
    assert at_1.ci_low is not None and at_1.ci_high is not None
    assert at_1.ci_low < at_5.ci_low and at_5.ci_high < at_1.ci_high


def test_error_counts_no_real_arm_could_have_are_inconclusive() -> None:
    result = evaluate_gate(gate("error_rate", max_increase=0.01), calls("a", 100, 1), calls("b", 10, 11), kind=None)

    assert result.verdict is INCONCLUSIVE
    assert result.estimate is None
    assert result.detail is not None and "'b'" in result.detail


SIMULATIONS = 2000


@pytest.mark.parametrize(
    "bound", [pytest.param({"max_increase": 0.0}, id="difference"), pytest.param({"max_ratio": 1.0}, id="ratio")]
)
def test_equal_error_rates_fail_a_no_worse_gate_at_most_at_the_one_sided_level(bound: dict[str, float]) -> None:
    """A 95% two-sided interval lies wholly above a true value in 2.5% of samples; rarely more, never much less."""
    rng = np.random.default_rng(20261127)
    n = 2000
    errors = rng.binomial(n, 0.02, size=(SIMULATIONS, 2))
    the_gate = gate("error_rate", **bound)
    verdicts = [
        evaluate_gate(the_gate, calls("a", n, int(x0)), calls("b", n, int(x1)), kind=None).verdict for x0, x1 in errors
    ]
    fail_rate = verdicts.count(FAIL) / SIMULATIONS

    # 2.5% nominal; 0.01 is about three standard errors of a rate over 2000 simulations.
    assert 0.005 <= fail_rate <= 0.025 + 0.01


# -- latency -------------------------------------------------------------------------------------


@pytest.mark.parametrize("metric", [pytest.param(m, id=m) for m in LATENCY_METRICS])
@pytest.mark.parametrize(
    ("bound", "calls_per_arm", "slowdown", "expected"),
    [
        pytest.param({"max_increase": 50.0}, 20_000, 1.0, PASS, id="increase-same-latency-passes"),
        pytest.param({"max_increase": 50.0}, 20_000, 2.0, FAIL, id="increase-twice-as-slow-fails"),
        pytest.param({"max_increase": 20.0}, 10, 1.0, INCONCLUSIVE, id="increase-10-calls-inconclusive"),
        pytest.param({"max_ratio": 1.25}, 20_000, 1.0, PASS, id="ratio-same-latency-passes"),
        pytest.param({"max_ratio": 1.25}, 20_000, 2.0, FAIL, id="ratio-twice-as-slow-fails"),
        pytest.param({"max_ratio": 1.25}, 10, 1.0, INCONCLUSIVE, id="ratio-10-calls-inconclusive"),
    ],
)
def test_latency_gate_verdicts(
    metric: str, bound: dict[str, float], calls_per_arm: int, slowdown: float, expected: Verdict
) -> None:
    control = lognormal_calls("a", calls_per_arm, median_ms=100, seed=1)
    canary = lognormal_calls("b", calls_per_arm, median_ms=100 * slowdown, seed=2)

    result = evaluate_gate(gate(metric, **bound), control, canary, kind=None)

    assert result.verdict is expected
    assert follows_its_interval(result)
    assert (result.control_n, result.canary_n) == (calls_per_arm, calls_per_arm)
    q = {"latency_p50": 0.50, "latency_p95": 0.95, "latency_p99": 0.99}[metric]
    assert result.control == latency_quantile(control.latency_counts, q)
    assert result.canary == latency_quantile(canary.latency_counts, q)


def read(arm: VariantStats, q: float) -> float:
    value = latency_quantile(arm.latency_counts, q)
    assert value is not None
    return value


def test_latency_interval_reads_each_arms_order_statistics_at_bonferroni_level() -> None:
    control = calls("a", 200, latencies_ms=[90] * 50 + [110] * 100 + [140] * 50)
    canary = calls("b", 300, latencies_ms=[110] * 100 + [140] * 150 + [180] * 50)
    z = scipy_stats.norm.ppf(1 - 0.05 / 4)  # each arm at 97.5%, so both hold together with 95%
    half_c, half_t = z * math.sqrt(0.25 / 200), z * math.sqrt(0.25 / 300)
    c_lo, c_mid, c_hi = read(control, 0.5 - half_c), read(control, 0.5), read(control, 0.5 + half_c)
    t_lo, t_mid, t_hi = read(canary, 0.5 - half_t), read(canary, 0.5), read(canary, 0.5 + half_t)

    increase = evaluate_gate(gate("latency_p50", max_increase=10.0), control, canary, kind=None)
    ratio = evaluate_gate(gate("latency_p50", max_ratio=1.1), control, canary, kind=None)

    assert (increase.estimate, increase.ci_low, increase.ci_high) == pytest.approx(
        (t_mid - c_mid, t_lo - c_hi, t_hi - c_lo), abs=SAME_FORMULA
    )
    assert (ratio.estimate, ratio.ci_low, ratio.ci_high) == pytest.approx(
        (t_mid / c_mid, t_lo / c_hi, t_hi / c_lo), rel=SAME_FORMULA
    )
    assert c_lo < c_mid < c_hi and t_lo < t_mid < t_hi  # the case has intervals of some width


def test_latency_ratio_is_unbounded_when_control_can_be_zero() -> None:
    # 4 calls: the 50% interval reaches the 0-quantile, and the fastest bucket starts at 0 ms.
    control, canary = calls("a", 4, latencies_ms=[0.3] * 4), calls("b", 4, latencies_ms=[0.3] * 4)

    result = evaluate_gate(gate("latency_p50", max_ratio=1.25), control, canary, kind=None)

    assert result.verdict is INCONCLUSIVE
    assert result.ci_high == math.inf
    assert result.to_json()["ci_high"] is None


def test_latency_beyond_the_last_bucket_cannot_pass() -> None:
    # 5% of both arms slower than the last bound: their p99 reads as that bound, but could be anything above it.
    slow = [100.0] * 950 + [LATENCY_BUCKETS_MS[-1] * 2] * 50
    control, canary = calls("a", 1000, latencies_ms=slow), calls("b", 1000, latencies_ms=slow)

    result = evaluate_gate(gate("latency_p99", max_ratio=1.25), control, canary, kind=None)

    assert result.estimate == 1.0
    assert result.ci_high == math.inf
    assert result.verdict is INCONCLUSIVE


def test_canary_slower_than_the_last_bucket_still_fails() -> None:
    control = calls("a", 1000, latencies_ms=[100.0] * 1000)
    canary = calls("b", 1000, latencies_ms=[100.0] * 900 + [LATENCY_BUCKETS_MS[-1] * 2] * 100)

    result = evaluate_gate(gate("latency_p99", max_increase=1000.0), control, canary, kind=None)

    assert result.verdict is FAIL
    assert result.ci_low is not None and result.ci_low >= LATENCY_BUCKETS_MS[-1] - 100


@pytest.mark.parametrize(
    "bound", [pytest.param({"max_increase": 0.0}, id="difference"), pytest.param({"max_ratio": 1.0}, id="ratio")]
)
def test_equal_latencies_rarely_fail_a_no_slower_gate(bound: dict[str, float]) -> None:
    rng = np.random.default_rng(7)
    n, simulations = 300, 500
    the_gate = gate("latency_p95", **bound)
    fails = 0
    for _ in range(simulations):
        latencies = rng.lognormal(math.log(100), 0.5, size=(2, n))
        result = evaluate_gate(
            the_gate, calls("a", n, latencies_ms=latencies[0]), calls("b", n, latencies_ms=latencies[1]), kind=None
        )
        fails += result.verdict is FAIL

    # At most the one-sided 2.5% of the joint interval, plus three standard errors over 500 simulations.
    assert fails / simulations <= 0.025 + 0.021


# -- arms without calls, config errors ------------------------------------------------------------


@pytest.mark.parametrize("metric", [pytest.param(m, id=m) for m in sorted(OPERATIONAL_GATE_METRICS)])
@pytest.mark.parametrize(
    ("empty", "named"),
    [
        pytest.param(("a",), ("control 'a'",), id="control-empty"),
        pytest.param(("b",), ("canary 'b'",), id="canary-empty"),
        pytest.param(("a", "b"), ("control 'a'", "canary 'b'"), id="both-empty"),
    ],
)
def test_an_arm_without_calls_is_inconclusive_and_named(
    metric: str, empty: tuple[str, ...], named: tuple[str, ...]
) -> None:
    def arm(name: str) -> VariantStats:
        return calls(name, 0) if name in empty else calls(name, 100, 3, latencies_ms=[50.0] * 100)

    result = evaluate_gate(gate(metric, max_ratio=1.5), arm("a"), arm("b"), kind=None)

    assert result.verdict is INCONCLUSIVE
    assert (result.estimate, result.ci_low, result.ci_high) == (None, None, None)
    assert result.detail is not None and "no calls" in result.detail
    assert all(name in result.detail for name in named)
    assert ("control 'a'" in result.detail) == ("a" in empty)


@pytest.mark.parametrize("metric", [pytest.param(m, id=m) for m in sorted(OPERATIONAL_GATE_METRICS)])
def test_no_worse_than_on_an_operational_metric_is_refused(metric: str) -> None:
    arm = calls("a", 100, 1, latencies_ms=[50.0] * 100)

    with pytest.raises(ValueError, match=metric):
        evaluate_gate(gate(metric, no_worse_than=-0.02), arm, arm, kind=None)


def test_a_metric_neither_operational_nor_declared_is_refused() -> None:
    with pytest.raises(ValueError, match="'converted'"):
        evaluate_gate(
            gate("converted", no_worse_than=-0.02), conversions("a", 100, 5), conversions("b", 100, 5), kind=None
        )


# -- declared metrics ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bound", "control", "canary", "expected"),
    [
        pytest.param(
            {"no_worse_than": -0.02},
            conversions("a", 500_000, 50_000),
            conversions("b", 500_000, 50_000),
            PASS,
            id="binomial-lift-same-rate-passes",
        ),
        pytest.param(
            {"no_worse_than": -0.02},
            conversions("a", 20_000, 2000),
            conversions("b", 20_000, 1600),
            FAIL,
            id="binomial-lift-20%-worse-fails",
        ),
        pytest.param(
            {"no_worse_than": -0.02},
            conversions("a", 200, 20),
            conversions("b", 200, 20),
            INCONCLUSIVE,
            id="binomial-lift-200-units-inconclusive",
        ),
        pytest.param(
            {"max_increase": 0.01},
            conversions("a", 200_000, 20_000),
            conversions("b", 200_000, 20_000),
            PASS,
            id="binomial-increase-same-rate-passes",
        ),
        pytest.param(
            {"max_increase": 0.01},
            conversions("a", 20_000, 2000),
            conversions("b", 20_000, 3000),
            FAIL,
            id="binomial-increase-5-points-fails",
        ),
        pytest.param(
            {"max_increase": 0.01},
            conversions("a", 200, 20),
            conversions("b", 200, 20),
            INCONCLUSIVE,
            id="binomial-increase-200-units-inconclusive",
        ),
        pytest.param(
            {"max_ratio": 1.1},
            conversions("a", 200_000, 20_000),
            conversions("b", 200_000, 20_000),
            PASS,
            id="binomial-ratio-same-rate-passes",
        ),
        pytest.param(
            {"max_ratio": 1.1},
            conversions("a", 20_000, 2000),
            conversions("b", 20_000, 3000),
            FAIL,
            id="binomial-ratio-1.5-fails",
        ),
        pytest.param(
            {"max_ratio": 1.1},
            conversions("a", 200, 20),
            conversions("b", 200, 20),
            INCONCLUSIVE,
            id="binomial-ratio-200-units-inconclusive",
        ),
        pytest.param(
            {"no_worse_than": -0.02},
            values("a", 100_000, 10, 5),
            values("b", 100_000, 10, 5),
            PASS,
            id="mean-lift-same-mean-passes",
        ),
        pytest.param(
            {"no_worse_than": -0.02},
            values("a", 10_000, 10, 5),
            values("b", 10_000, 9, 5),
            FAIL,
            id="mean-lift-10%-worse-fails",
        ),
        pytest.param(
            {"no_worse_than": -0.02},
            values("a", 20, 10, 5),
            values("b", 20, 10, 5),
            INCONCLUSIVE,
            id="mean-lift-20-units-inconclusive",
        ),
        pytest.param(
            {"max_increase": 0.5},
            values("a", 100_000, 10, 5),
            values("b", 100_000, 10, 5),
            PASS,
            id="mean-increase-same-mean-passes",
        ),
        pytest.param(
            {"max_increase": 0.5},
            values("a", 10_000, 10, 5),
            values("b", 10_000, 11, 5),
            FAIL,
            id="mean-increase-by-1-fails",
        ),
        pytest.param(
            {"max_increase": 0.5},
            values("a", 20, 10, 5),
            values("b", 20, 10, 5),
            INCONCLUSIVE,
            id="mean-increase-20-units-inconclusive",
        ),
        pytest.param(
            {"max_ratio": 1.05},
            values("a", 100_000, 10, 5),
            values("b", 100_000, 10, 5),
            PASS,
            id="mean-ratio-same-mean-passes",
        ),
        pytest.param(
            {"max_ratio": 1.05},
            values("a", 10_000, 10, 5),
            values("b", 10_000, 11, 5),
            FAIL,
            id="mean-ratio-1.1-fails",
        ),
        pytest.param(
            {"max_ratio": 1.05},
            values("a", 20, 10, 5),
            values("b", 20, 10, 5),
            INCONCLUSIVE,
            id="mean-ratio-20-units-inconclusive",
        ),
    ],
)
def test_declared_metric_gate_verdicts(
    bound: dict[str, float], control: VariantStats, canary: VariantStats, expected: Verdict
) -> None:
    (metric,) = control.metrics
    kind = MetricKind.BINOMIAL if metric == "converted" else MetricKind.MEAN

    result = evaluate_gate(gate(metric, **bound), control, canary, kind=kind)

    assert result.verdict is expected
    assert follows_its_interval(result)
    assert result.control == pytest.approx(control.metrics[metric].sum / control.units)
    assert result.canary == pytest.approx(canary.metrics[metric].sum / canary.units)
    assert (result.control_n, result.canary_n) == (control.units, canary.units)


@pytest.mark.parametrize("alpha", [pytest.param(0.05, id="alpha-5%"), pytest.param(0.01, id="alpha-1%")])
@pytest.mark.parametrize(
    ("kind", "control", "canary"),
    [
        pytest.param(MetricKind.BINOMIAL, conversions("a", 3000, 310), conversions("b", 2800, 270), id="binomial"),
        pytest.param(MetricKind.MEAN, values("a", 800, 4.2, 3.1), values("b", 900, 4.5, 3.6), id="mean"),
    ],
)
def test_declared_metric_interval_is_the_reports_own(
    kind: MetricKind, control: VariantStats, canary: VariantStats, alpha: float
) -> None:
    (metric,) = control.metrics
    comparison = compare(control.metrics[metric], canary.metrics[metric], kind, alpha=alpha)
    assert comparison.absolute is not None and comparison.relative is not None
    absolute, relative = comparison.absolute, comparison.relative

    lift = evaluate_gate(gate(metric, no_worse_than=-0.05), control, canary, kind=kind, alpha=alpha)
    increase = evaluate_gate(gate(metric, max_increase=0.1), control, canary, kind=kind, alpha=alpha)
    ratio = evaluate_gate(gate(metric, max_ratio=1.2), control, canary, kind=kind, alpha=alpha)

    assert (lift.estimate, lift.ci_low, lift.ci_high) == (relative.estimate, relative.ci_low, relative.ci_high)
    assert (increase.estimate, increase.ci_low, increase.ci_high) == (
        absolute.estimate,
        absolute.ci_low,
        absolute.ci_high,
    )
    assert (ratio.estimate, ratio.ci_low, ratio.ci_high) == pytest.approx(
        (1 + relative.estimate, 1 + relative.ci_low, 1 + relative.ci_high), rel=SAME_FORMULA
    )


def test_declared_metric_without_enough_units_is_inconclusive_with_the_reports_reason() -> None:
    control, canary = conversions("a", 500, 40), conversions("b", 1, 1)
    expected = compare(control.metric("converted"), canary.metric("converted"), MetricKind.BINOMIAL, names=("a", "b"))

    result = evaluate_gate(gate("converted", no_worse_than=-0.02), control, canary, kind=MetricKind.BINOMIAL)

    assert result.verdict is INCONCLUSIVE
    assert result.estimate is None
    assert expected.reason is not None and expected.detail is not None
    assert result.detail == f"{expected.reason}: {expected.detail}"
    assert "'b'" in result.detail


def test_declared_metric_nobody_reported_is_inconclusive() -> None:
    control, canary = VariantStats("a", units=1000), VariantStats("b", units=1000)

    result = evaluate_gate(gate("revenue", no_worse_than=-0.02), control, canary, kind=MetricKind.MEAN)

    assert result.verdict is INCONCLUSIVE
    assert result.detail is not None and "zero_variance" in result.detail
    assert (result.control_n, result.canary_n) == (1000, 1000)


# -- always-valid intervals (a rollout's `intervals: sequential`) ---------------------------------


def confidence_sequence_width(n: int, alpha: float = 0.05, tuning_n: float = 5000.0) -> float:
    """Standard errors each side of gbstats' asymptotic confidence sequence, from STATS.md's formula."""
    rho_squared = (-2 * math.log(alpha) + math.log(1 - 2 * math.log(alpha))) / tuning_n
    x = n * rho_squared
    return math.sqrt((x + 1) / x * math.log((x + 1) / alpha**2))


def test_sequential_error_rate_intervals_use_the_confidence_sequence_over_both_arms_calls() -> None:
    x0, n0, x1, n1 = 30, 4000, 52, 3500
    width = confidence_sequence_width(n0 + n1)
    p0, p1 = (x0 + 1) / (n0 + 2), (x1 + 1) / (n1 + 2)
    half = width * math.sqrt(p1 * (1 - p1) / (n1 + 2) + p0 * (1 - p0) / (n0 + 2))
    ratio = ((x1 + 0.5) / (n1 + 0.5)) / ((x0 + 0.5) / (n0 + 0.5))
    log_se = math.sqrt(1 / (x1 + 0.5) - 1 / (n1 + 0.5) + 1 / (x0 + 0.5) - 1 / (n0 + 0.5))
    control, canary = calls("a", n0, x0), calls("b", n1, x1)

    increase = evaluate_gate(gate("error_rate", max_increase=0.01), control, canary, kind=None, sequential=True)
    times = evaluate_gate(gate("error_rate", max_ratio=2.0), control, canary, kind=None, sequential=True)

    assert (increase.ci_low, increase.ci_high) == pytest.approx((p1 - p0 - half, p1 - p0 + half), abs=SAME_FORMULA)
    assert (times.ci_low, times.ci_high) == pytest.approx(
        (ratio * math.exp(-width * log_se), ratio * math.exp(width * log_se)), rel=SAME_FORMULA
    )
    assert increase.sequential and times.sequential
    assert width > 1.96 * 1.4  # much wider than a fixed 95% interval at this size


def test_sequential_latency_reads_each_arm_at_its_own_always_valid_level() -> None:
    control = calls("a", 200, latencies_ms=[90] * 50 + [110] * 100 + [140] * 50)
    canary = calls("b", 300, latencies_ms=[110] * 100 + [140] * 150 + [180] * 50)
    # each arm at alpha/2 over its own calls (Bonferroni), as the fixed intervals
    half_c = confidence_sequence_width(200, 0.025) * math.sqrt(0.25 / 200)
    half_t = confidence_sequence_width(300, 0.025) * math.sqrt(0.25 / 300)

    result = evaluate_gate(gate("latency_p50", max_increase=10.0), control, canary, kind=None, sequential=True)

    assert (result.ci_low, result.ci_high) == pytest.approx(
        (
            read(canary, 0.5 - half_t) - read(control, 0.5 + half_c),
            read(canary, 0.5 + half_t) - read(control, 0.5 - half_c),
        ),
        abs=SAME_FORMULA,
    )


@pytest.mark.parametrize(
    ("kind", "control", "canary"),
    [
        pytest.param(MetricKind.BINOMIAL, conversions("a", 3000, 310), conversions("b", 2800, 270), id="binomial"),
        pytest.param(MetricKind.MEAN, values("a", 800, 4.2, 3.1), values("b", 900, 4.5, 3.6), id="mean"),
    ],
)
def test_sequential_declared_metric_interval_is_the_reports_always_valid_one(
    kind: MetricKind, control: VariantStats, canary: VariantStats
) -> None:
    (metric,) = control.metrics
    comparison = compare(control.metrics[metric], canary.metrics[metric], kind)
    assert comparison.absolute is not None and comparison.relative is not None
    absolute, relative = comparison.absolute, comparison.relative

    lift = evaluate_gate(gate(metric, no_worse_than=-0.05), control, canary, kind=kind, sequential=True)
    increase = evaluate_gate(gate(metric, max_increase=0.1), control, canary, kind=kind, sequential=True)
    ratio = evaluate_gate(gate(metric, max_ratio=1.2), control, canary, kind=kind, sequential=True)

    assert (lift.ci_low, lift.ci_high) == (relative.sequential_ci_low, relative.sequential_ci_high)
    assert (increase.ci_low, increase.ci_high) == (absolute.sequential_ci_low, absolute.sequential_ci_high)
    assert (ratio.ci_low, ratio.ci_high) == pytest.approx(
        (1 + relative.sequential_ci_low, 1 + relative.sequential_ci_high), rel=SAME_FORMULA
    )
    assert lift.estimate == relative.estimate and increase.estimate == absolute.estimate


def test_an_equal_canary_looked_at_twenty_times_fails_some_look_rarely_only_with_sequential_intervals() -> None:
    """The reason for `intervals: sequential`: a controller looks at every interval of a rollout.

    Both arms err at 2%; each of 400 simulated rollouts adds 500 calls per arm between looks and
    is judged 20 times against `max_increase: 0` (the bound at the true difference, the hardest
    case). A rollout fails once any look fails.
    """
    rollouts, looks, calls_per_look = 400, 20, 500
    errors = np.random.default_rng(20261127).binomial(calls_per_look, 0.02, size=(rollouts, looks, 2)).cumsum(axis=1)
    the_gate = gate("error_rate", max_increase=0.0)

    def failed_some_look(sequential: bool) -> float:
        failed = 0
        for rollout in errors:
            for look, (x0, x1) in enumerate(rollout, start=1):
                n = look * calls_per_look
                arms = calls("a", n, int(x0)), calls("b", n, int(x1))
                if evaluate_gate(the_gate, *arms, kind=None, sequential=sequential).verdict is FAIL:
                    failed += 1
                    break
        return failed / rollouts

    # One look fails 2.5% of the time (one side of a 95% interval); twenty looks many times that.
    assert failed_some_look(sequential=False) > 0.06
    # Always valid: at most 2.5% over all looks together, plus three standard errors of 400 rollouts.
    assert failed_some_look(sequential=True) <= 0.025 + 3 * math.sqrt(0.025 * 0.975 / rollouts)


@pytest.mark.parametrize("metric", [pytest.param(m, id=m) for m in (*LATENCY_METRICS, "error_rate")])
def test_a_sequential_gate_on_an_arm_without_calls_is_inconclusive(metric: str) -> None:
    """Right after a step's weights are written, the step's control may have no calls yet."""
    canary = lognormal_calls("b", 500, median_ms=50, seed=3)
    with np.errstate(all="raise"):
        result = evaluate_gate(gate(metric, max_ratio=1.25), calls("a", 0), canary, kind=None, sequential=True)
    assert result.verdict is INCONCLUSIVE and result.detail == "control 'a' has no calls yet"


@pytest.mark.parametrize(
    ("the_gate", "control", "canary", "kind"),
    [
        pytest.param(
            gate("error_rate", max_increase=0.01), calls("a", 20_000, 200), calls("b", 20_000, 1000), None, id="errors"
        ),
        pytest.param(
            gate("latency_p95", max_ratio=1.25),
            lognormal_calls("a", 20_000, median_ms=50, seed=1),
            lognormal_calls("b", 20_000, median_ms=100, seed=2),
            None,
            id="latency",
        ),
        pytest.param(
            gate("converted", no_worse_than=-0.02),
            conversions("a", 20_000, 2000),
            conversions("b", 20_000, 1400),
            MetricKind.BINOMIAL,
            id="declared",
        ),
    ],
)
def test_sequential_intervals_still_fail_a_clearly_worse_canary(
    the_gate: Gate, control: VariantStats, canary: VariantStats, kind: MetricKind | None
) -> None:
    result = evaluate_gate(the_gate, control, canary, kind=kind, sequential=True)

    assert result.verdict is FAIL and follows_its_interval(result)


# -- JSON ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("the_gate", "control", "canary", "kind"),
    [
        pytest.param(
            gate("error_rate", max_increase=0.01), calls("a", 900, 9), calls("b", 800, 12), None, id="error-rate"
        ),
        pytest.param(
            gate("latency_p50", max_ratio=1.25),
            calls("a", 4, latencies_ms=[0.3] * 4),
            calls("b", 4, latencies_ms=[0.4] * 4),
            None,
            id="latency-unbounded",
        ),
        pytest.param(gate("error_rate", max_ratio=1.5), calls("a", 0), calls("b", 10, 1), None, id="no-calls"),
        pytest.param(
            gate("converted", no_worse_than=-0.02),
            conversions("a", 3000, 310),
            conversions("b", 2800, 270),
            MetricKind.BINOMIAL,
            id="declared",
        ),
    ],
)
def test_result_json_round_trips_through_orjson(
    the_gate: Gate, control: VariantStats, canary: VariantStats, kind: MetricKind | None
) -> None:
    result = evaluate_gate(the_gate, control, canary, kind=kind)
    document = result.to_json()

    decoded: dict[str, Any] = orjson.loads(orjson.dumps(document))

    assert decoded == document
    assert list(decoded) == [f.name for f in fields(GateResult)]
    assert decoded["verdict"] == result.verdict.value and type(decoded["verdict"]) is str
    assert decoded["bound"] in ("max_increase", "max_ratio", "no_worse_than") and type(decoded["bound"]) is str
    for name, value in decoded.items():
        original = getattr(result, name)
        if isinstance(original, float) and not math.isfinite(original):
            assert value is None
        elif name != "verdict":
            assert value == original
