"""The report statistics against the shared reference cases (gbstats, scipy, ssrm) and their guards."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import stats as scipy_stats

from router.config.schema import MetricKind
from router.reports.stats import (
    ArmStats,
    Comparison,
    Inference,
    InsufficientReason,
    compare,
    compare_arrays,
    histogram_quantile,
    holm,
    infer,
    latency_percentiles,
    moments,
    sequential_rho,
    sequential_srm_p_value,
    srm_chi_square,
    srm_log_bayes_factor,
    welch_dof,
)

CASES_FILE = Path(__file__).parent.parent / "data" / "stats_reference_cases.json"
REFERENCE = json.loads(CASES_FILE.read_text(encoding="utf-8"))
CASES: list[dict[str, Any]] = REFERENCE["cases"]
# The same formulas agree to rounding; the acceptance bound is 1e-6.
SAME_METHOD = 1e-9


def close(expected: float, *, tolerance: float = SAME_METHOD) -> Any:
    return pytest.approx(expected, rel=tolerance, abs=tolerance)


def arm_stats(case: dict[str, Any]) -> list[ArmStats]:
    if case["metric_type"] == "binomial":
        return [ArmStats.binomial(a["n"], a["conversions"]) for a in case["arms"]]
    return [ArmStats(a["n"], a["sum"], a["sum_squares"]) for a in case["arms"]]


def run(case: dict[str, Any], index: int, *, tuning_n: float = 5000) -> Comparison:
    """Comparison `index` of `case`: arm index+1 against arm 0, as the conventions say."""
    arms = arm_stats(case)
    return compare(arms[0], arms[index + 1], MetricKind(case["metric_type"]), tuning_n=tuning_n)


def comparison_params(*, estimable: bool | None = None) -> list[Any]:
    params = []
    for case in CASES:
        for index, expected in enumerate(case["expected"]["comparisons"]):
            refused = "gbstats_default_output" in expected
            if estimable is not None and refused == estimable:
                continue
            params.append(pytest.param(case, index, expected, id=f"{case['id']}-{expected['treatment']}"))
    return params


def scale(comparison: Comparison, name: str) -> Inference[float]:
    result = comparison.relative if name == "relative" else comparison.absolute
    assert result is not None, comparison.detail
    return result


SCALES = [pytest.param("relative", id="relative"), pytest.param("absolute", id="absolute")]
ESTIMABLE = comparison_params(estimable=True)


# -- per arm -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("case", "index", "expected"), comparison_params())
def test_arm_means_and_variances_match_the_reference(case: dict[str, Any], index: int, expected: Any) -> None:
    result = run(case, index)
    assert [result.control.mean, result.treatment.mean] == [close(m) for m in expected["means"]]
    assert [result.control.variance, result.treatment.variance] == [close(v) for v in expected["variances_used"]]


# -- frequentist, Bayesian, sequential -----------------------------------------------------------


@pytest.mark.parametrize("scale_name", SCALES)
@pytest.mark.parametrize(("case", "index", "expected"), ESTIMABLE)
def test_welch_statistics_match_the_reference(case: dict[str, Any], index: int, expected: Any, scale_name: str) -> None:
    reference = expected[f"frequentist_{scale_name}"]
    result = scale(run(case, index), scale_name)
    assert result.estimate == close(reference["estimate"])
    assert result.se == close(reference["se"])
    assert result.dof == close(reference["dof"])
    assert result.t == close(reference["t"])
    assert [result.ci_low, result.ci_high] == [close(x) for x in reference["ci"]]
    assert result.p_value == close(reference["p_value_sf"])
    assert result.p_value == close(reference["p_value"])


@pytest.mark.parametrize("scale_name", SCALES)
@pytest.mark.parametrize(("case", "index", "expected"), ESTIMABLE)
def test_bayesian_statistics_match_the_reference(
    case: dict[str, Any], index: int, expected: Any, scale_name: str
) -> None:
    reference = expected[f"bayesian_{scale_name}_flat_prior"]
    result = scale(run(case, index), scale_name)
    assert result.estimate == close(reference["posterior_mean"])
    assert result.se == close(reference["posterior_sd"])
    assert result.chance_to_win == close(reference["chance_to_win"])
    assert [result.credible_low, result.credible_high] == [close(x) for x in reference["ci"]]
    assert [result.risk_control, result.risk_treatment] == [close(x) for x in reference["risk"]]


@pytest.mark.parametrize("tuning_n", [pytest.param(5000, id="tuning-5000"), pytest.param(1000, id="tuning-1000")])
@pytest.mark.parametrize("scale_name", SCALES)
@pytest.mark.parametrize(("case", "index", "expected"), ESTIMABLE)
def test_sequential_statistics_match_the_reference(
    case: dict[str, Any], index: int, expected: Any, scale_name: str, tuning_n: int
) -> None:
    reference = expected[f"sequential_gbstats_{scale_name}_tuning_{tuning_n}"]
    result = scale(run(case, index, tuning_n=tuning_n), scale_name)
    assert sequential_rho(0.05, tuning_n) == close(reference["rho"])
    assert result.sequential_halfwidth == close(reference["halfwidth"])
    assert [result.sequential_ci_low, result.sequential_ci_high] == [close(x) for x in reference["ci"]]
    assert result.e_value == close(reference["e_value"])
    assert result.sequential_p_value == close(reference["p_value"])


@pytest.mark.parametrize(("case", "index", "expected"), ESTIMABLE)
def test_absolute_welch_equals_scipys_ttest_from_stats(case: dict[str, Any], index: int, expected: Any) -> None:
    reference = expected["classical_comparisons"]["scipy_ttest_ind_from_stats_welch_abs"]
    result = scale(run(case, index), "absolute")
    assert result.t == close(reference["t"])
    assert result.p_value == close(reference["p_value"])


def test_gbstats_published_test_values_match_to_their_five_decimals() -> None:
    case = next(c for c in CASES if "gbstats_test_expectations" in c)
    published = case["gbstats_test_expectations"]
    result = run(case, 0)
    for scale_name in ("relative", "absolute"):
        reference, got = published[f"frequentist_{scale_name}"], scale(result, scale_name)
        five_decimals = REFERENCE["tolerances_suggested"]["vs_gbstats_test_rounding"]
        assert got.estimate == pytest.approx(reference["expected"], abs=five_decimals)
        assert [got.ci_low, got.ci_high] == [pytest.approx(x, abs=five_decimals) for x in reference["ci"]]
        assert got.se == pytest.approx(reference["stddev"], abs=five_decimals)
        assert got.p_value == pytest.approx(reference["p_value"], abs=five_decimals)


# -- SRM ------------------------------------------------------------------------------------------


def srm_params() -> list[Any]:
    return [pytest.param(case, id=case["id"]) for case in CASES]


@pytest.mark.parametrize("case", srm_params())
def test_srm_chi_square_matches_the_reference(case: dict[str, Any]) -> None:
    reference = case["expected"]["srm"]
    result = srm_chi_square([a["n"] for a in case["arms"]], case["weights"])
    assert result is not None
    assert result.statistic == close(reference["chi2"])
    assert result.df == reference["df"]
    assert result.p_value == close(reference["p_value"])
    assert result.p_value == close(reference["scipy_chisquare_p"])


@pytest.mark.parametrize("case", srm_params())
def test_sequential_srm_matches_optimizelys_ssrm(case: dict[str, Any]) -> None:
    reference = case["expected"]["srm"]["ssrm_optimizely_default"]
    units = [a["n"] for a in case["arms"]]
    assert reference["dirichlet_concentration"] == 10_000
    assert srm_log_bayes_factor(units, case["weights"]) == close(reference["log_bayes_factor"])
    assert sequential_srm_p_value(units, case["weights"]) == close(reference["p_value"])


def test_the_growthbook_back_end_srm_value_matches_to_nine_decimals() -> None:
    case = next(c for c in CASES if "growthbook_backend_test_expectations" in c)
    result = srm_chi_square([a["n"] for a in case["arms"]], case["weights"])
    assert result is not None
    assert result.p_value == pytest.approx(case["growthbook_backend_test_expectations"]["srm_p_value_9dp"], abs=5e-10)


def test_srm_fails_below_one_in_a_thousand_on_the_three_arm_case() -> None:
    case = next(c for c in CASES if c["id"] == "three_arm_binomial_srm_fail")
    result = srm_chi_square([a["n"] for a in case["arms"]], case["weights"])
    assert result is not None
    assert result.p_value < 0.001


def test_srm_drops_arms_with_zero_weight() -> None:
    with_straggler = srm_chi_square([480, 520, 37], [50, 50, 0])
    without = srm_chi_square([480, 520], [0.5, 0.5])
    assert with_straggler == without


def test_srm_drops_an_arm_whose_share_is_zero_in_floats() -> None:
    """A weight of 5e-324 beside 1e12 is a share of exactly 0.0: no expected units, no 0/0 in the test."""
    tiny = srm_chi_square([480, 520, 0], [1e12, 1e12, 5e-324])
    assert tiny == srm_chi_square([480, 520], [0.5, 0.5])
    assert srm_log_bayes_factor([480, 520, 0], [1e12, 1e12, 5e-324]) == srm_log_bayes_factor([480, 520], [1, 1])


@pytest.mark.parametrize(
    ("units", "weights"),
    [
        pytest.param([0, 0], [50, 50], id="no-units"),
        pytest.param([500, 20], [100, 0], id="one-weighted-arm"),
        pytest.param([500, -3], [50, 50], id="negative-count"),
    ],
)
def test_srm_has_no_result_when_there_is_nothing_to_test(units: list[int], weights: list[float]) -> None:
    assert srm_chi_square(units, weights) is None
    assert srm_log_bayes_factor(units, weights) is None
    assert sequential_srm_p_value(units, weights, running_min=0.3) == 0.3


def test_sequential_srm_fed_look_by_look_keeps_the_running_minimum() -> None:
    rng = np.random.default_rng(7)
    # A 52/48 split against 50/50 weights: the mismatch builds up over the looks.
    arms = rng.random(20_000) < 0.52
    running = 1.0
    seen = []
    for end in range(1000, 20_001, 1000):
        units = [int(arms[:end].sum()), int(end - arms[:end].sum())]
        running = sequential_srm_p_value(units, [50, 50], running_min=running)
        seen.append(running)
        assert running == min(min(seen), sequential_srm_p_value(units, [50, 50]))
    assert seen == sorted(seen, reverse=True)
    assert seen[-1] < 0.001  # the mismatch is found
    assert seen[0] > 0.05  # and not from the first look


# -- multiple treatments -------------------------------------------------------------------------


def test_holm_adjusts_the_three_arm_case_over_its_two_treatments() -> None:
    case = next(c for c in CASES if c["id"] == "three_arm_binomial_srm_fail")
    p1, p2 = (c["frequentist_relative"]["p_value_sf"] for c in case["expected"]["comparisons"])
    # Holm by hand: the smaller p times 2, the larger times 1, never below the previous one.
    assert holm([p1, p2]) == [close(2 * p1), close(max(2 * p1, p2))]


@pytest.mark.parametrize(
    ("p_values", "expected"),
    [
        pytest.param([0.01, 0.04, 0.03], [0.03, 0.06, 0.06], id="step-down-is-monotone"),
        pytest.param([0.6, 0.9], [1.0, 1.0], id="capped-at-one"),
        pytest.param([0.02, None, 0.04], [0.04, None, 0.04], id="missing-p-left-out-of-the-family"),
        pytest.param([0.02], [0.02], id="one-comparison-unchanged"),
        pytest.param([], [], id="empty"),
    ],
)
def test_holm_adjusted_p_values(p_values: list[float | None], expected: list[float | None]) -> None:
    assert holm(p_values) == [None if e is None else close(e) for e in expected]


# -- guards ---------------------------------------------------------------------------------------


def test_a_control_without_conversions_gives_insufficient_data_like_gbstats_refuses() -> None:
    case = next(c for c in CASES if c["id"] == "edge_zero_baseline")
    expected = case["expected"]["comparisons"][0]
    result = run(case, 0)
    assert result.status == "insufficient_data"
    # gbstats refuses with ZERO_NEGATIVE_VARIANCE; its zeros would read as "no effect", so null instead.
    assert {v["error"] for v in expected["gbstats_default_output"].values()} == {"ZERO_NEGATIVE_VARIANCE"}
    assert result.reason is InsufficientReason.ZERO_VARIANCE
    assert result.absolute is None and result.relative is None
    assert result.detail is not None and "'control'" in result.detail


def test_raw_welch_arithmetic_of_the_zero_baseline_case_matches_the_reference() -> None:
    case = next(c for c in CASES if c["id"] == "edge_zero_baseline")
    reference = case["expected"]["comparisons"][0]["absolute"]
    c_arm, t_arm = case["arms"]
    control = moments(c_arm["n"], c_arm["conversions"], c_arm["conversions"], MetricKind.BINOMIAL)
    treatment = moments(t_arm["n"], t_arm["conversions"], t_arm["conversions"], MetricKind.BINOMIAL)
    estimate = treatment.mean - control.mean
    se = np.sqrt(treatment.variance / treatment.n + control.variance / control.n)
    result = infer(estimate, se, welch_dof(control, treatment), control.n + treatment.n).item()
    assert result.estimate == close(reference["estimate"])
    assert result.se == close(reference["se"])
    assert result.dof == close(reference["dof"])
    assert result.t == close(reference["t"])
    assert [result.ci_low, result.ci_high] == [close(x) for x in reference["ci"]]
    assert result.p_value == close(reference["p_value_sf"])


@pytest.mark.parametrize(
    ("kind", "control", "treatment", "reason", "named"),
    [
        pytest.param(
            "mean", ArmStats(1, 4.0, 16.0), ArmStats(50, 80.0, 300.0), "too_few_units", "control", id="one-unit"
        ),
        pytest.param(
            "binomial", ArmStats.binomial(40, 4), ArmStats.binomial(0, 0), "too_few_units", "treatment", id="no-units"
        ),
        pytest.param(
            "mean",
            ArmStats(1000, 3300.0, 1000 * 3.3**2),
            ArmStats(1000, 3400.0, 12000.0),
            "zero_variance",
            "control",
            id="identical-values-with-rounding-noise",
        ),
        pytest.param(
            "binomial",
            ArmStats.binomial(200, 30),
            ArmStats.binomial(200, 200),
            "zero_variance",
            "treatment",
            id="everyone-converted",
        ),
        pytest.param(
            "mean", ArmStats(4, 0.0, 4.0), ArmStats(4, 2.0, 6.0), "zero_control_mean", "control", id="control-mean-zero"
        ),
        pytest.param(
            "mean",
            # three units of 0.1, 0.2 and -0.3, summed in floats as Redis does: 5.55e-17, not 0
            ArmStats(3, 0.1 + 0.2 - 0.3, 0.01 + 0.04 + 0.09),
            ArmStats(3, 0.2 + 0.3 - 0.3, 0.04 + 0.09 + 0.09),
            "zero_control_mean",
            "control",
            id="control-mean-zero-up-to-rounding",
        ),
        pytest.param(
            "mean",
            ArmStats(4, 4e-308, 4.0),
            ArmStats(4, 2.0, 6.0),
            "zero_control_mean",
            "control",
            id="control-mean-so-small-the-lift-overflows",
        ),
        pytest.param(
            "binomial",
            ArmStats.binomial(100, 120),
            ArmStats.binomial(100, 10),
            "inconsistent_data",
            "control",
            id="more-conversions-than-units",
        ),
        pytest.param(
            "mean",
            ArmStats(100, 50.0, 10.0),
            ArmStats(100, 50.0, 40.0),
            "inconsistent_data",
            "control",
            id="sum-of-squares-below-sum-squared-over-n",
        ),
        pytest.param(
            "mean",
            ArmStats(100, 5.0, 40.0),
            ArmStats(100, math.nan, 40.0),
            "inconsistent_data",
            "treatment",
            id="not-a-number",
        ),
        pytest.param(
            "mean",
            ArmStats(100, 5.0, 40.0),
            ArmStats(100, 1e200, 1e300),
            "inconsistent_data",
            "treatment",
            id="overflowing-sums",
        ),
    ],
)
def test_degenerate_arms_give_an_insufficient_data_state_naming_the_arm(
    kind: str, control: ArmStats, treatment: ArmStats, reason: str, named: str
) -> None:
    result = compare(control, treatment, MetricKind(kind), names=("control", "treatment"))
    assert (result.status, result.reason) == ("insufficient_data", InsufficientReason(reason))
    assert result.absolute is None and result.relative is None
    assert result.detail is not None and f"'{named}'" in result.detail


def test_a_tiny_p_value_is_kept_instead_of_rounding_to_zero() -> None:
    # 10% vs 12% on 100 000 units each: t near 14, where 1 - cdf is exactly 0 in doubles.
    result = scale(
        compare(ArmStats.binomial(100_000, 10_000), ArmStats.binomial(100_000, 12_000), MetricKind.BINOMIAL), "relative"
    )
    assert 1 - scipy_stats.t.cdf(result.t, result.dof) == 0.0
    assert 0 < result.p_value < 1e-30


def test_an_overwhelming_effect_gives_finite_sequential_numbers() -> None:
    result = scale(
        compare(
            ArmStats.binomial(10_000_000, 1_000_000), ArmStats.binomial(10_000_000, 3_000_000), MetricKind.BINOMIAL
        ),
        "relative",
    )
    assert result.sequential_p_value == 0.0
    assert math.isfinite(result.e_value)
    assert math.isfinite(result.sequential_ci_low) and result.sequential_ci_low > 0


def test_the_array_form_agrees_with_compare_element_by_element() -> None:
    rng = np.random.default_rng(3)
    n = rng.integers(50, 500, size=(2, 40))
    conversions = rng.binomial(n, 0.3)
    arrays = compare_arrays(
        moments(n[0], conversions[0], conversions[0], MetricKind.BINOMIAL),
        moments(n[1], conversions[1], conversions[1], MetricKind.BINOMIAL),
    )
    for i in range(40):
        one = compare(
            ArmStats.binomial(int(n[0, i]), int(conversions[0, i])),
            ArmStats.binomial(int(n[1, i]), int(conversions[1, i])),
            MetricKind.BINOMIAL,
        )
        assert arrays.relative.item((i,)) == one.relative
        assert arrays.absolute.item((i,)) == one.absolute


# -- the reference file itself -------------------------------------------------------------------

CHECKED_COMPARISON_KEYS = {
    "control",
    "treatment",
    "means",
    "variances_used",
    "frequentist_relative",
    "frequentist_absolute",
    "bayesian_relative_flat_prior",
    "bayesian_absolute_flat_prior",
    "sequential_gbstats_relative_tuning_5000",
    "sequential_gbstats_relative_tuning_1000",
    "sequential_gbstats_absolute_tuning_5000",
    "sequential_gbstats_absolute_tuning_1000",
    "absolute",  # the raw Welch arithmetic of the zero-baseline case
    "gbstats_default_output",  # its error code; the report answers null numbers, not gbstats' zeros
    "classical_comparisons",  # its scipy Welch entry; the other entries are below
}
# Other vendors' methods, kept in the file as cross-checks; the report uses gbstats' (STATS.md).
OTHER_METHODS = {
    "sequential_eppo_relative_tuning_10000",
    "sequential_eppo_absolute_tuning_10000",
    "sequential_statsig_msprt_absolute",
}
CHECKED_CLASSICAL = {"scipy_ttest_ind_from_stats_welch_abs"}
OTHER_CLASSICAL = {
    "statsmodels_proportions_ztest_pooled",
    "statsmodels_wald_unpooled_diff",
    "statsmodels_ratio_log_ci_as_lift",
    "beta_binomial_prob_b_beats_a_uniform_prior",
}


def test_every_reference_key_is_checked_or_named_as_another_method() -> None:
    for case in CASES:
        for comparison in case["expected"]["comparisons"]:
            assert set(comparison) <= CHECKED_COMPARISON_KEYS | OTHER_METHODS, case["id"]
            classical = set(comparison.get("classical_comparisons", {}))
            assert classical <= CHECKED_CLASSICAL | OTHER_CLASSICAL, case["id"]
        assert set(case["expected"]["srm"]) == {"chi2", "df", "p_value", "scipy_chisquare_p", "ssrm_optimizely_default"}


# -- latency histograms --------------------------------------------------------------------------

BOUNDS = [5.0, 10.0, 50.0, 100.0]


@pytest.mark.parametrize(
    ("q", "counts", "expected"),
    [
        pytest.param(0.5, [0, 10, 0, 0, 0], 7.5, id="middle-of-a-bucket"),
        pytest.param(0.5, [10, 0, 0, 0, 0], 2.5, id="first-bucket-starts-at-zero"),
        pytest.param(0.95, [50, 40, 10, 0], 30.0, id="no-overflow-bucket"),
        pytest.param(0.99, [0, 0, 0, 90, 10], 100.0, id="overflow-reports-the-last-bound"),
        pytest.param(0.5, [0, 0, 0, 0, 0], None, id="empty"),
    ],
)
def test_histogram_quantiles_interpolate_within_the_bucket(q: float, counts: list[int], expected: float | None) -> None:
    assert histogram_quantile(q, BOUNDS, counts) == expected


def test_latency_percentiles_read_p50_p95_p99() -> None:
    result = latency_percentiles(BOUNDS, [0, 100, 0, 0, 0])
    assert (result.p50, result.p95, result.p99) == (close(7.5), close(9.75), close(9.95))


def test_a_histogram_with_the_wrong_number_of_buckets_is_refused() -> None:
    with pytest.raises(ValueError, match="3 bucket counts for 4 bounds"):
        histogram_quantile(0.5, BOUNDS, [1, 2, 3])
