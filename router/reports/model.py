"""The experiment report document (SPEC section 6), as typed dicts: it is JSON and nothing else.

`build_report()` returns a `Report`; the JSON endpoint, the terminal table and the HTML page all
read this one shape. Every number is finite or None (never NaN), so the document is valid JSON.
"""

from __future__ import annotations

from typing import Literal, TypedDict

Status = Literal["ok", "insufficient_data"]


class LatencyMs(TypedDict):
    """Latency quantiles in milliseconds, interpolated from the histogram every replica writes to."""

    p50: float | None
    p95: float | None
    p99: float | None


class SrmReport(TypedDict):
    """The sample-ratio-mismatch check, first because a failure makes every result untrustworthy."""

    status: Status
    passed: bool  # False only when the chi-square p-value is below `threshold`
    p_value: float | None
    threshold: float
    chi_square: float | None
    df: int | None
    sequential_p_value: float | None  # Optimizely's ssrm, the running minimum over looks when given
    expected_shares: dict[str, float]
    units: dict[str, int]
    since_version: int | None  # `units` were first exposed since this config version, the current shares'; None: all
    message: str


class VariantReport(TypedDict):
    """Operations of one variant: exposure, share, calls, errors, latency."""

    name: str
    control: bool
    weight: float  # normalised: the share of units the config asks for
    expected_share: float
    observed_share: float | None
    units: int
    requests: int
    errors: int
    error_rate: float | None
    latency_ms: LatencyMs


class ArmReport(TypedDict):
    """One arm of one metric."""

    variant: str
    units: int
    mean: float | None
    variance: float | None


class ComparisonReport(TypedDict):
    """A treatment against control; `ci_*`, `p_value` and the Bayesian numbers are on the relative lift."""

    variant: str
    status: Status
    reason: str | None
    detail: str | None
    absolute_effect: float | None
    absolute_ci_low: float | None
    absolute_ci_high: float | None
    absolute_p_value: float | None
    relative_lift: float | None
    relative_se: float | None
    ci_low: float | None
    ci_high: float | None
    p_value: float | None
    p_value_holm: float | None
    chance_to_beat_control: float | None
    risk: list[float] | None  # [expected loss keeping control, expected loss shipping the variant]
    sequential_ci_low: float | None
    sequential_ci_high: float | None
    sequential_p_value: float | None


class MetricReport(TypedDict):
    """One declared metric: every arm, and every treatment compared with control."""

    name: str
    kind: str
    control: str
    arms: list[ArmReport]
    comparisons: list[ComparisonReport]


class Report(TypedDict):
    """The whole experiment report."""

    experiment: str
    description: str
    status: str
    config_version: int
    generated_at: str
    alpha: float
    total_units: int
    srm: SrmReport
    variants: list[VariantReport]
    metrics: list[MetricReport]
