"""The statistics of the experiment report (STATS.md), as pure functions over sufficient statistics.

No I/O, no clock, no randomness: the report reads each arm's `n`, `sum` and `sum_squares` from
Redis and calls these. The core works element-wise on numpy arrays, so the A/A simulation pushes
thousands of looks through the very code the report uses; `compare()` is the one-pair view of it.
Conventions are GrowthBook's gbstats, so the numbers can be checked against its published tests.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from enum import StrEnum
from typing import Any, Final, Generic, Literal, Protocol, TypeVar

import numpy as np
import numpy.typing as npt
from scipy import special, stats

from router.config.schema import MetricKind

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

ALPHA: Final = 0.05
SEQUENTIAL_TUNING_N: Final = 5000.0  # gbstats' default: the sample size where the sequence is tightest
SRM_ALPHA: Final = 0.001
SSRM_CONCENTRATION: Final = 10_000.0  # optimizely/ssrm's default Dirichlet concentration
MIN_UNITS: Final = 2  # a sample variance needs two units
# `sum_squares - sum^2/n` cancels catastrophically: a variance below this share of the second
# moment is rounding noise, i.e. every unit has the same value.
ZERO_VARIANCE_RTOL: Final = 1e-9


class InsufficientReason(StrEnum):
    """Why a comparison gives no estimate; shown to the reader instead of NaN or an error."""

    INCONSISTENT_DATA = "inconsistent_data"
    TOO_FEW_UNITS = "too_few_units"
    ZERO_VARIANCE = "zero_variance"
    ZERO_CONTROL_MEAN = "zero_control_mean"


# Code 0 is "ok"; the order is the precedence when several reasons apply.
_REASON_CODES: Final[tuple[InsufficientReason | None, ...]] = (None, *InsufficientReason)


class SufficientStats(Protocol):
    """What the statistics need of one arm and metric; the store's totals satisfy it as they are."""

    @property
    def n(self) -> int: ...

    @property
    def sum(self) -> float: ...

    @property
    def sum_squares(self) -> float: ...


@dataclass(frozen=True, slots=True)
class ArmStats:
    """Sufficient statistics of one arm for one metric: units, and the sum and sum of squares of per-unit values."""

    n: int
    sum: float
    sum_squares: float

    @classmethod
    def binomial(cls, n: int, conversions: int) -> ArmStats:
        """A 0/1 metric, whose squares sum to the count."""
        return cls(n, float(conversions), float(conversions))


@dataclass(frozen=True, slots=True)
class Moments:
    """Per-arm mean and variance, element-wise over any shape; NaN where undefined."""

    n: FloatArray
    mean: FloatArray
    variance: FloatArray
    consistent: BoolArray  # the sums can come from real per-unit values
    zero_variance: BoolArray  # every unit has the same value (variance clamped to 0)


def moments(n: npt.ArrayLike, total: npt.ArrayLike, sum_squares: npt.ArrayLike, kind: MetricKind) -> Moments:
    """Mean and variance from sufficient statistics: binomial `p(1-p)`, mean `(ss - s^2/n)/(n-1)`."""
    n_, s, ss = np.broadcast_arrays(*(np.asarray(x, dtype=np.float64) for x in (n, total, sum_squares)))
    # Undefined entries (n = 0, corrupt sums) are masked explicitly below; numpy's warnings about
    # them would only repeat what the masks already say.
    with np.errstate(all="ignore"):
        finite = np.isfinite(n_) & np.isfinite(s) & np.isfinite(ss) & (n_ >= 0)
        mean = np.where(finite & (n_ > 0), s / n_, np.nan)
        if kind is MetricKind.BINOMIAL:
            consistent = finite & (s >= 0) & (s <= n_)
            raw_variance = mean * (1.0 - mean)
            second_moment = mean  # x^2 = x for 0/1 values
        else:
            consistent = finite & (ss >= 0)
            raw_variance = np.where(finite & (n_ > 1), (ss - s * s / n_) / (n_ - 1.0), np.nan)
            second_moment = ss / n_
        tolerance = ZERO_VARIANCE_RTOL * np.abs(second_moment)
        # A clearly negative variance means sum_squares < sum^2/n: no real values give that.
        consistent &= ~(raw_variance < -tolerance) & ~np.isinf(raw_variance)
        zero_variance = consistent & (raw_variance <= tolerance)
        variance = np.where(zero_variance, 0.0, np.where(consistent, raw_variance, np.nan))
        mean = np.where(consistent, mean, np.nan)
    return Moments(n_, mean, variance, consistent, zero_variance)


T = TypeVar("T", float, FloatArray)


@dataclass(frozen=True, slots=True)
class Inference(Generic[T]):
    """Every statistic of one effect (absolute or relative) of a treatment against control."""

    estimate: T
    se: T
    dof: T
    t: T
    ci_low: T
    ci_high: T
    p_value: T
    chance_to_win: T
    credible_low: T
    credible_high: T
    risk_control: T  # expected loss of keeping control: E[max(effect, 0)]
    risk_treatment: T  # expected loss of shipping the treatment: E[max(-effect, 0)]
    sequential_halfwidth: T
    sequential_ci_low: T
    sequential_ci_high: T
    sequential_log_e_value: T
    sequential_p_value: T

    def item(self: Inference[FloatArray], index: tuple[int, ...] = ()) -> Inference[float]:
        """The plain-float statistics of one element."""
        values = {f.name: float(getattr(self, f.name)[index]) for f in fields(self)}
        return Inference(**values)

    @property
    def e_value(self) -> float:
        """The e-value behind the sequential p-value (capped where exp would overflow)."""
        return math.exp(min(float(self.sequential_log_e_value), 709.0))


def sequential_rho(alpha: float = ALPHA, tuning_n: float = SEQUENTIAL_TUNING_N) -> float:
    """The mixture parameter of gbstats' confidence sequence, tightest around `tuning_n` units."""
    return math.sqrt((-2.0 * math.log(alpha) + math.log(1.0 - 2.0 * math.log(alpha))) / tuning_n)


def sequential_multiplier(
    n_total: npt.ArrayLike, alpha: float = ALPHA, tuning_n: float = SEQUENTIAL_TUNING_N
) -> FloatArray:
    """The confidence sequence's halfwidth in standard errors after `n_total` observations.

    The always-valid counterpart of a normal quantile: an interval of the estimate plus or minus
    this many standard errors covers the true value at every look at once, with 1 - alpha.
    """
    rho2_n = sequential_rho(alpha, tuning_n) ** 2 * np.asarray(n_total, dtype=np.float64)
    multiplier: FloatArray = np.sqrt((rho2_n + 1.0) / rho2_n * np.log((rho2_n + 1.0) / alpha**2))
    return multiplier


def welch_dof(control: Moments, treatment: Moments) -> FloatArray:
    """Welch-Satterthwaite degrees of freedom on the raw arm variances (used for both scales)."""
    a = control.variance / control.n
    b = treatment.variance / treatment.n
    dof: FloatArray = (a + b) ** 2 / (a**2 / (control.n - 1.0) + b**2 / (treatment.n - 1.0))
    return dof


def absolute_effect(control: Moments, treatment: Moments) -> tuple[FloatArray, FloatArray]:
    """`m_t - m_c` and its standard error."""
    estimate = treatment.mean - control.mean
    se = np.sqrt(treatment.variance / treatment.n + control.variance / control.n)
    return estimate, se


def relative_effect(control: Moments, treatment: Moments) -> tuple[FloatArray, FloatArray]:
    """`(m_t - m_c)/|m_c|` and its delta-method standard error."""
    m_c, m_t = control.mean, treatment.mean
    estimate = (m_t - m_c) / np.abs(m_c)
    se = np.sqrt(treatment.variance / (treatment.n * m_c**2) + control.variance * m_t**2 / (control.n * m_c**4))
    return estimate, se


def infer(
    estimate: npt.ArrayLike,
    se: npt.ArrayLike,
    dof: npt.ArrayLike,
    n_total: npt.ArrayLike,
    *,
    alpha: float = ALPHA,
    tuning_n: float = SEQUENTIAL_TUNING_N,
) -> Inference[FloatArray]:
    """Welch t, flat-prior Bayesian and sequential statistics of an estimate with standard error `se`."""
    est, se_, dof_, n_ = np.broadcast_arrays(*(np.asarray(x, dtype=np.float64) for x in (estimate, se, dof, n_total)))
    t = est / se_
    # scipy.special directly: the same routines scipy.stats wraps, without its per-call overhead.
    t_quantile = special.stdtrit(dof_, 1.0 - alpha / 2.0)
    # The survival function (the lower tail at -|t|) keeps tiny p-values that 1 - cdf rounds to 0.
    p_value = 2.0 * special.stdtr(dof_, -np.abs(t))
    z_quantile = special.ndtri(1.0 - alpha / 2.0)
    density = np.exp(-0.5 * t**2) / math.sqrt(2.0 * math.pi)
    chance = special.ndtr(t)
    # gbstats' asymptotic confidence sequence (Waudby-Smith et al. 2023): valid at every look.
    rho2_n = sequential_rho(alpha, tuning_n) ** 2 * n_
    halfwidth = se_ * sequential_multiplier(n_, alpha, tuning_n)
    log_e = rho2_n * t**2 / (2.0 * (rho2_n + 1.0)) - 0.5 * np.log(rho2_n + 1.0)
    return Inference(
        estimate=est,
        se=se_,
        dof=dof_,
        t=t,
        ci_low=est - t_quantile * se_,
        ci_high=est + t_quantile * se_,
        p_value=p_value,
        chance_to_win=chance,
        credible_low=est - z_quantile * se_,
        credible_high=est + z_quantile * se_,
        risk_control=est * chance + se_ * density,
        risk_treatment=se_ * density - est * special.ndtr(-t),
        sequential_halfwidth=halfwidth,
        sequential_ci_low=est - halfwidth,
        sequential_ci_high=est + halfwidth,
        sequential_log_e_value=log_e,
        # min(1, 1/E) without overflowing E
        sequential_p_value=np.exp(np.minimum(-log_e, 0.0)),
    )


@dataclass(frozen=True, slots=True)
class Comparisons:
    """Treatment-vs-control statistics element-wise; NaN wherever `reason_code` is not 0 (ok)."""

    reason_code: npt.NDArray[np.int64]
    absolute: Inference[FloatArray]
    relative: Inference[FloatArray]

    def reason(self, index: tuple[int, ...] = ()) -> InsufficientReason | None:
        """Why element `index` has no estimate, or None when it has one."""
        return _REASON_CODES[int(self.reason_code[index])]


def compare_arrays(
    control: Moments,
    treatment: Moments,
    *,
    alpha: float = ALPHA,
    tuning_n: float = SEQUENTIAL_TUNING_N,
    min_units: int = MIN_UNITS,
) -> Comparisons:
    """Absolute and relative effects of `treatment` over `control`, element-wise, with explicit guards."""
    reason_code = np.select(
        [
            ~(control.consistent & treatment.consistent),
            (control.n < max(min_units, MIN_UNITS)) | (treatment.n < max(min_units, MIN_UNITS)),
            control.zero_variance | treatment.zero_variance,
            _zero_up_to_rounding(control),
        ],
        [1, 2, 3, 4],
        default=0,
    ).astype(np.int64)
    ok = reason_code == 0
    # Masked inputs become NaN before any division, so nothing undefined is ever computed.
    c = _masked(control, ok)
    t = _masked(treatment, ok)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        lift, lift_se = relative_effect(c, t)
    # A control mean that is tiny but not zero can still overflow the lift or its error: no estimate then either.
    overflowed = ok & ~(np.isfinite(lift) & np.isfinite(lift_se))
    if overflowed.any():
        reason_code = np.where(overflowed, 4, reason_code)
        ok = reason_code == 0
        c = _masked(control, ok)
        t = _masked(treatment, ok)
    dof = welch_dof(c, t)
    n_total = c.n + t.n
    absolute = infer(*absolute_effect(c, t), dof, n_total, alpha=alpha, tuning_n=tuning_n)
    relative = infer(*relative_effect(c, t), dof, n_total, alpha=alpha, tuning_n=tuning_n)
    return Comparisons(reason_code, absolute, relative)


def _zero_up_to_rounding(arm: Moments) -> BoolArray:
    """Whether the arm's mean is 0 within the rounding of its stored sum.

    Sums of decimal values are floats: values whose true total is 0 (0.1 + 0.2 - 0.3, a purchase
    and its refund) leave a residue around 1e-17, and a lift against it came out near 1e17. Adding
    n values errs by at most n·eps·sum|x| <= n·eps·n·rms, so a mean within n·eps·rms of 0 may be 0.
    """
    with np.errstate(invalid="ignore"):
        second_moment = np.where(arm.n > 1, arm.variance * (arm.n - 1.0) / arm.n, 0.0) + arm.mean**2
        rounding = arm.n * np.finfo(np.float64).eps * np.sqrt(second_moment)
        zero: BoolArray = np.abs(arm.mean) <= rounding
    return zero


def _masked(arm: Moments, ok: BoolArray) -> Moments:
    return Moments(
        n=np.where(ok, arm.n, np.nan),
        mean=np.where(ok, arm.mean, np.nan),
        variance=np.where(ok, arm.variance, np.nan),
        consistent=arm.consistent,
        zero_variance=arm.zero_variance,
    )


@dataclass(frozen=True, slots=True)
class ArmSummary:
    """Mean and variance of one arm, None where undefined (no units)."""

    n: int
    mean: float | None
    variance: float | None


@dataclass(frozen=True, slots=True)
class Comparison:
    """One treatment against control: both scales, or the reason there is no estimate."""

    control: ArmSummary
    treatment: ArmSummary
    reason: InsufficientReason | None
    detail: str | None
    absolute: Inference[float] | None
    relative: Inference[float] | None

    @property
    def status(self) -> Literal["ok", "insufficient_data"]:
        return "ok" if self.reason is None else "insufficient_data"


def summarize(arm: SufficientStats, kind: MetricKind) -> ArmSummary:
    """Mean and variance of one arm as plain numbers."""
    m = moments(arm.n, arm.sum, arm.sum_squares, kind)
    return ArmSummary(int(arm.n), finite_or_none(m.mean[()]), finite_or_none(m.variance[()]))


def compare(
    control: SufficientStats,
    treatment: SufficientStats,
    kind: MetricKind,
    *,
    alpha: float = ALPHA,
    tuning_n: float = SEQUENTIAL_TUNING_N,
    min_units: int = MIN_UNITS,
    names: tuple[str, str] = ("control", "treatment"),
) -> Comparison:
    """Every statistic of `treatment` against `control`, or an explicit insufficient-data state."""
    c = moments(control.n, control.sum, control.sum_squares, kind)
    t = moments(treatment.n, treatment.sum, treatment.sum_squares, kind)
    result = compare_arrays(c, t, alpha=alpha, tuning_n=tuning_n, min_units=min_units)
    reason = result.reason()
    summaries = (summarize(control, kind), summarize(treatment, kind))
    if reason is not None:
        detail = _explain(reason, (control, treatment), (c, t), names, max(min_units, MIN_UNITS))
        return Comparison(*summaries, reason=reason, detail=detail, absolute=None, relative=None)
    return Comparison(
        *summaries, reason=None, detail=None, absolute=result.absolute.item(), relative=result.relative.item()
    )


def _explain(
    reason: InsufficientReason,
    arms: tuple[SufficientStats, SufficientStats],
    arm_moments: tuple[Moments, Moments],
    names: tuple[str, str],
    min_units: int,
) -> str:
    """A sentence naming the arm and the value behind `reason`."""
    if reason is InsufficientReason.ZERO_CONTROL_MEAN:
        return f"the mean of control {names[0]!r} is 0 (up to rounding), so a relative lift is undefined"
    for arm, m, name in zip(arms, arm_moments, names, strict=True):
        if reason is InsufficientReason.INCONSISTENT_DATA and not bool(m.consistent[()]):
            return (
                f"the statistics of {name!r} cannot come from real values "
                f"(n={arm.n}, sum={arm.sum}, sum_squares={arm.sum_squares})"
            )
        if reason is InsufficientReason.TOO_FEW_UNITS and arm.n < min_units:
            return f"{name!r} has {arm.n} unit{'' if arm.n == 1 else 's'}; at least {min_units} per arm are needed"
        if reason is InsufficientReason.ZERO_VARIANCE and bool(m.zero_variance[()]):
            return f"every unit of {name!r} has the same value ({float(m.mean[()]):g}), so its variance is 0"
    return str(reason)  # unreachable: each reason code comes from one of the checks above


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm-Bonferroni adjusted p-values over the comparisons that have one (None stays None)."""
    present = [(p, i) for i, p in enumerate(p_values) if p is not None]
    m = len(present)
    adjusted: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(sorted(present)):
        # Step-down: the k-th smallest is multiplied by (m - k + 1), and adjusted values never decrease.
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted


@dataclass(frozen=True, slots=True)
class ChiSquare:
    """Pearson's goodness of fit of the units per arm against the configured weights."""

    statistic: float
    df: int
    p_value: float


def _srm_arms(units: Sequence[int], weights: Sequence[float]) -> tuple[FloatArray, FloatArray] | None:
    """Counts and null probabilities of the arms with positive weight, or None when there is nothing to test."""
    if len(units) != len(weights):
        raise ValueError(f"{len(units)} unit counts for {len(weights)} weights")
    counts = np.asarray(units, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    # An arm with weight 0 expects no units; its stragglers (exposed before a weight edit) say nothing
    # about the split of the others. So does one whose share is 0 in floats (a weight of 5e-324 beside
    # 1e12): it would expect 0 units and put 0/0 into the test.
    total = w[w > 0].sum() if np.any(w > 0) else 0.0
    shares = np.where(w > 0, w / total, 0.0) if total > 0 else np.zeros_like(w)
    keep = shares > 0
    counts, shares = counts[keep], shares[keep]
    if len(counts) < 2 or not np.all(np.isfinite(counts)) or np.any(counts < 0) or counts.sum() <= 0:
        return None
    return counts, shares / shares.sum()


def srm_chi_square(units: Sequence[int], weights: Sequence[float]) -> ChiSquare | None:
    """Chi-square SRM test (zero-weight arms dropped, df = k - 1), or None without two weighted arms and a unit."""
    arms = _srm_arms(units, weights)
    if arms is None:
        return None
    counts, p0 = arms
    expected = counts.sum() * p0
    statistic = float(np.sum((counts - expected) ** 2 / expected))
    df = len(counts) - 1
    return ChiSquare(statistic, df, float(stats.chi2.sf(statistic, df)))


def srm_log_bayes_factor(
    units: Sequence[int], weights: Sequence[float], *, concentration: float = SSRM_CONCENTRATION
) -> float | None:
    """log BF of a Dirichlet(concentration * p0) mixture against multinomial(p0) (Optimizely's ssrm)."""
    arms = _srm_arms(units, weights)
    if arms is None:
        return None
    counts, p0 = arms
    a = concentration * p0
    # The multinomial coefficient is common to both hypotheses and cancels.
    log_mixture = special.gammaln(a.sum()) - special.gammaln(a.sum() + counts.sum())
    log_mixture += np.sum(special.gammaln(a + counts) - special.gammaln(a))
    log_null = np.sum(special.xlogy(counts, p0))
    return float(log_mixture - log_null)


def sequential_srm_p_value(
    units: Sequence[int],
    weights: Sequence[float],
    *,
    running_min: float = 1.0,
    concentration: float = SSRM_CONCENTRATION,
) -> float:
    """The always-valid SRM p-value after a look at cumulative `units`: min(running_min, 1/BF, 1).

    Feed each look's cumulative counts with the previous result as `running_min`; the running
    minimum is what keeps the false-alarm rate at alpha however often the check runs.
    """
    log_bf = srm_log_bayes_factor(units, weights, concentration=concentration)
    if log_bf is None:
        return running_min
    return min(running_min, math.exp(min(-log_bf, 0.0)))


@dataclass(frozen=True, slots=True)
class LatencyPercentiles:
    """Latency quantiles in ms interpolated from a histogram; None without observations."""

    p50: float | None
    p95: float | None
    p99: float | None


def histogram_quantile(q: float, bounds: Sequence[float], counts: Sequence[int]) -> float | None:
    """The q-quantile of a histogram, linear within a bucket like Prometheus' histogram_quantile.

    `bounds` are the ascending upper bounds of the finite buckets; `counts` has one count per
    bucket, plus optionally the overflow bucket (above the last bound), which reports the last bound.
    """
    if len(counts) not in (len(bounds), len(bounds) + 1):
        raise ValueError(f"{len(counts)} bucket counts for {len(bounds)} bounds (expected {len(bounds)} or one more)")
    total = sum(counts)
    if total <= 0 or not bounds:
        return None
    rank = q * total
    cumulative = 0.0
    for i, count in enumerate(counts):
        if count > 0 and cumulative + count >= rank:
            if i == len(bounds):
                return float(bounds[-1])
            lower = float(bounds[i - 1]) if i > 0 else 0.0
            return lower + (float(bounds[i]) - lower) * (rank - cumulative) / count
        cumulative += count
    return float(bounds[-1])


def latency_percentiles(bounds: Sequence[float], counts: Sequence[int]) -> LatencyPercentiles:
    """p50, p95 and p99 of a latency histogram."""
    return LatencyPercentiles(*(histogram_quantile(q, bounds, counts) for q in (0.50, 0.95, 0.99)))


def finite_or_none(value: Any) -> float | None:
    """A float for JSON, or None where the statistic is undefined (never NaN or infinity)."""
    number = float(value)
    return number if math.isfinite(number) else None
