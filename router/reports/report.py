"""Assemble the report document (SPEC section 6) from plain numbers.

Pure: the endpoint reads the counters and sufficient statistics from Redis and passes them here,
so the whole document can be built and checked without a store, and `generated_at` is given,
not read from a clock.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from router.config.schema import Experiment, Metric
from router.reports.model import ArmReport, ComparisonReport, LatencyMs, MetricReport, Report, SrmReport, VariantReport
from router.reports.stats import (
    ALPHA,
    SRM_ALPHA,
    ArmStats,
    Comparison,
    SufficientStats,
    compare,
    finite_or_none,
    holm,
    latency_percentiles,
    sequential_srm_p_value,
    srm_chi_square,
    summarize,
)


class VariantCounts(Protocol):
    """What the report needs of one variant's operations; the store's per-variant stats satisfy it."""

    @property
    def units(self) -> int: ...

    @property
    def requests(self) -> int: ...

    @property
    def errors(self) -> int: ...

    @property
    def latency_counts(self) -> Sequence[int]: ...


@dataclass(frozen=True, slots=True)
class VariantOperations:
    """What the gateway counted for one variant, summed over every replica."""

    units: int = 0  # exposed units (the analysis population)
    requests: int = 0
    errors: int = 0
    latency_counts: Sequence[int] = ()  # one count per bucket of `latency_bounds_ms`, plus the overflow


def build_report(
    experiment: Experiment,
    *,
    config_version: int,
    generated_at: datetime,
    operations: Mapping[str, VariantCounts],
    metrics: Mapping[str, Mapping[str, SufficientStats]],
    latency_bounds_ms: Sequence[float] = (),
    srm_running_min: float | None = None,
    srm_units: Mapping[str, int] | None = None,
    srm_since_version: int | None = None,
    alpha: float = ALPHA,
) -> Report:
    """The report of `experiment`: SRM first, then operations per variant, then every declared metric.

    A variant missing from `operations` had no traffic; one missing from a metric's mapping had
    no outcome yet, so all its exposed units count as 0. `srm_running_min` is the sequential SRM
    p-value of the previous look, when the caller keeps it. `srm_units` are the units the SRM
    check counts when not all of them: those first exposed since config version `srm_since_version`,
    when the shares in force took effect.
    """
    counts: dict[str, VariantCounts] = {
        v.name: operations.get(v.name, VariantOperations()) for v in experiment.variants
    }
    total_units = sum(c.units for c in counts.values())
    return Report(
        experiment=experiment.name,
        description=experiment.description,
        status=str(experiment.status),
        config_version=config_version,
        generated_at=_timestamp(generated_at),
        alpha=alpha,
        total_units=total_units,
        srm=_srm(experiment, counts, srm_running_min, srm_units, srm_since_version),
        variants=[_variant(experiment, name, c, total_units, latency_bounds_ms) for name, c in counts.items()],
        metrics=[_metric(experiment, m, counts, metrics.get(m.name, {}), alpha) for m in experiment.metrics],
    )


def _timestamp(moment: datetime) -> str:
    if moment.tzinfo is None:
        raise ValueError(f"generated_at must be timezone-aware, got {moment.isoformat()}")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _srm(
    experiment: Experiment,
    counts: Mapping[str, VariantCounts],
    running_min: float | None,
    window_units: Mapping[str, int] | None,
    since_version: int | None,
) -> SrmReport:
    names = list(counts)
    units = [counts[name].units if window_units is None else window_units.get(name, 0) for name in names]
    weights = list(experiment.weights)
    chi = srm_chi_square(units, weights)
    sequential = sequential_srm_p_value(units, weights, running_min=1.0 if running_min is None else running_min)
    report = SrmReport(
        status="ok" if chi is not None else "insufficient_data",
        passed=chi is None or chi.p_value >= SRM_ALPHA,
        p_value=None if chi is None else chi.p_value,
        threshold=SRM_ALPHA,
        chi_square=None if chi is None else chi.statistic,
        df=None if chi is None else chi.df,
        sequential_p_value=sequential if chi is not None else None,
        expected_shares=dict(experiment.shares),
        units=dict(zip(names, units, strict=True)),
        since_version=since_version,
        message="",
    )
    report["message"] = _srm_message(report)
    return report


def _srm_message(srm: SrmReport) -> str:
    since = srm["since_version"]
    window = (
        ""
        if since is None
        else f" Checked: the units first exposed since version {since}, when these weights took effect."
    )
    if srm["p_value"] is None:
        return "Not enough exposed units in weighted variants to check the split yet." + window
    if not srm["passed"]:
        return (
            f"The units per variant differ from the configured weights (chi-square p = {srm['p_value']:.2g} "
            f"< {srm['threshold']:g}): results are not trustworthy until the cause is found "
            "(assignment, redirects, filtering or lost exposure events)." + window
        )
    return f"The split of units matches the configured weights (chi-square p = {srm['p_value']:.2g})." + window


def _variant(
    experiment: Experiment,
    name: str,
    counts: VariantCounts,
    total_units: int,
    latency_bounds_ms: Sequence[float],
) -> VariantReport:
    share = experiment.shares[name]
    latency = latency_percentiles(latency_bounds_ms, counts.latency_counts) if counts.latency_counts else None
    return VariantReport(
        name=name,
        control=name == experiment.control,
        weight=share,
        expected_share=share,
        observed_share=counts.units / total_units if total_units > 0 else None,
        units=counts.units,
        requests=counts.requests,
        errors=counts.errors,
        error_rate=counts.errors / counts.requests if counts.requests > 0 else None,
        latency_ms=LatencyMs(
            p50=None if latency is None else latency.p50,
            p95=None if latency is None else latency.p95,
            p99=None if latency is None else latency.p99,
        ),
    )


def _metric(
    experiment: Experiment,
    metric: Metric,
    counts: Mapping[str, VariantCounts],
    stats: Mapping[str, SufficientStats],
    alpha: float,
) -> MetricReport:
    # No outcome yet means every exposed unit of that variant counts 0 (STATS.md).
    arms: dict[str, SufficientStats] = {
        name: stats.get(name, ArmStats(counts[name].units, 0.0, 0.0)) for name in counts
    }
    control = experiment.control
    treatments = [name for name in arms if name != control]
    comparisons = [
        compare(arms[control], arms[name], metric.kind, alpha=alpha, names=(control, name)) for name in treatments
    ]
    adjusted = holm([c.relative.p_value if c.relative is not None else None for c in comparisons])
    return MetricReport(
        name=metric.name,
        kind=str(metric.kind),
        control=control,
        arms=[_arm(name, arm, metric) for name, arm in arms.items()],
        comparisons=[_comparison(name, c, p) for name, c, p in zip(treatments, comparisons, adjusted, strict=True)],
    )


def _arm(name: str, arm: SufficientStats, metric: Metric) -> ArmReport:
    summary = summarize(arm, metric.kind)
    return ArmReport(variant=name, units=summary.n, mean=summary.mean, variance=summary.variance)


def _comparison(name: str, comparison: Comparison, p_holm: float | None) -> ComparisonReport:
    absolute, relative = comparison.absolute, comparison.relative
    if absolute is None or relative is None:
        return ComparisonReport(
            variant=name,
            status=comparison.status,
            reason=None if comparison.reason is None else str(comparison.reason),
            detail=comparison.detail,
            absolute_effect=None,
            absolute_ci_low=None,
            absolute_ci_high=None,
            absolute_p_value=None,
            relative_lift=None,
            relative_se=None,
            ci_low=None,
            ci_high=None,
            p_value=None,
            p_value_holm=None,
            chance_to_beat_control=None,
            risk=None,
            sequential_ci_low=None,
            sequential_ci_high=None,
            sequential_p_value=None,
        )
    f = finite_or_none
    keep_control, ship = f(relative.risk_control), f(relative.risk_treatment)
    return ComparisonReport(
        variant=name,
        status="ok",
        reason=None,
        detail=None,
        absolute_effect=f(absolute.estimate),
        absolute_ci_low=f(absolute.ci_low),
        absolute_ci_high=f(absolute.ci_high),
        absolute_p_value=f(absolute.p_value),
        relative_lift=f(relative.estimate),
        relative_se=f(relative.se),
        ci_low=f(relative.ci_low),
        ci_high=f(relative.ci_high),
        p_value=f(relative.p_value),
        p_value_holm=None if p_holm is None else f(p_holm),
        chance_to_beat_control=f(relative.chance_to_win),
        risk=None if keep_control is None or ship is None else [keep_control, ship],
        sequential_ci_low=f(relative.sequential_ci_low),
        sequential_ci_high=f(relative.sequential_ci_high),
        sequential_p_value=f(relative.sequential_p_value),
    )
