"""build_report() assembles SPEC section 6 from plain counts, with the statistics of compare()."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from router.config.schema import Experiment, MetricKind
from router.reports.model import Report
from router.reports.report import VariantOperations, build_report
from router.reports.stats import ArmStats, compare, holm

NOW = datetime(2026, 11, 23, 10, 0, 0, tzinfo=UTC)
BOUNDS_MS = (5.0, 10.0, 50.0, 100.0)


def experiment(weights: Mapping[str, float] | None = None, **fields: Any) -> Experiment:
    weights = weights or {"current": 50, "candidate": 50}
    config: dict[str, Any] = {
        "name": "churn",
        "control": "current",
        "variants": [{"name": n, "weight": w, "url": f"http://127.0.0.1:9001/{n}"} for n, w in weights.items()],
        "metrics": [{"name": "converted", "kind": "binomial"}, {"name": "revenue", "kind": "mean"}],
    }
    config.update(fields)
    return Experiment.model_validate(config)


def report(
    exp: Experiment | None = None,
    units: Mapping[str, int] | None = None,
    metrics: Mapping[str, Mapping[str, ArmStats]] | None = None,
    **kwargs: Any,
) -> Report:
    exp = exp or experiment()
    units = units if units is not None else {"current": 1003, "candidate": 997}
    operations = {
        name: VariantOperations(units=n, requests=2 * n, errors=n // 100, latency_counts=(0, n, 0, 0, 0))
        for name, n in units.items()
    }
    if metrics is None:
        metrics = {
            "converted": {"current": ArmStats.binomial(1003, 101), "candidate": ArmStats.binomial(997, 121)},
            "revenue": {"current": ArmStats(1003, 2006.0, 9000.0), "candidate": ArmStats(997, 2193.4, 9500.0)},
        }
    kwargs.setdefault("generated_at", NOW)
    return build_report(
        exp, config_version=7, operations=operations, metrics=metrics, latency_bounds_ms=BOUNDS_MS, **kwargs
    )


def test_the_report_has_every_field_of_the_spec_example() -> None:
    doc = report()
    assert set(doc) >= {"experiment", "config_version", "generated_at", "srm", "variants", "metrics"}
    assert set(doc["srm"]) >= {"p_value", "passed", "expected_shares", "units"}
    assert set(doc["variants"][0]) >= {
        "name", "control", "weight", "units", "requests", "errors", "error_rate", "latency_ms",
    }  # fmt: skip
    assert set(doc["variants"][0]["latency_ms"]) == {"p50", "p95", "p99"}
    metric = doc["metrics"][0]
    assert set(metric) >= {"name", "kind", "control", "arms", "comparisons"}
    assert set(metric["arms"][0]) >= {"variant", "units", "mean", "variance"}
    assert set(metric["comparisons"][0]) >= {
        "variant", "status", "reason", "absolute_effect", "relative_lift", "ci_low", "ci_high", "p_value",
        "p_value_holm", "chance_to_beat_control", "risk", "sequential_ci_low", "sequential_ci_high",
        "sequential_p_value",
    }  # fmt: skip


def test_the_report_is_strict_json() -> None:
    doc = report()
    assert json.loads(json.dumps(doc, allow_nan=False)) == doc


def test_the_header_names_the_experiment_version_and_time() -> None:
    doc = report()
    assert (doc["experiment"], doc["config_version"], doc["generated_at"]) == ("churn", 7, "2026-11-23T10:00:00Z")
    assert doc["total_units"] == 2000


def test_generated_at_is_written_in_utc() -> None:
    doc = report(generated_at=datetime(2026, 11, 23, 11, 30, tzinfo=timezone(timedelta(hours=1))))
    assert doc["generated_at"] == "2026-11-23T10:30:00Z"


def test_a_naive_generated_at_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        build_report(experiment(), config_version=1, generated_at=datetime(2026, 1, 1), operations={}, metrics={})


def test_comparisons_carry_the_numbers_of_compare_on_the_relative_lift() -> None:
    doc = report()
    expected = compare(ArmStats.binomial(1003, 101), ArmStats.binomial(997, 121), MetricKind.BINOMIAL).relative
    assert expected is not None
    got = doc["metrics"][0]["comparisons"][0]
    assert (got["variant"], got["status"], got["reason"]) == ("candidate", "ok", None)
    assert got["relative_lift"] == expected.estimate
    assert (got["ci_low"], got["ci_high"]) == (expected.ci_low, expected.ci_high)
    assert got["p_value"] == got["p_value_holm"] == expected.p_value
    assert got["chance_to_beat_control"] == expected.chance_to_win
    assert got["risk"] == [expected.risk_control, expected.risk_treatment]
    assert (got["sequential_ci_low"], got["sequential_ci_high"], got["sequential_p_value"]) == (
        expected.sequential_ci_low,
        expected.sequential_ci_high,
        expected.sequential_p_value,
    )


def test_arms_list_every_variant_in_config_order_with_mean_and_variance() -> None:
    arms = report()["metrics"][0]["arms"]
    assert [(a["variant"], a["units"]) for a in arms] == [("current", 1003), ("candidate", 997)]
    assert arms[0]["mean"] == pytest.approx(101 / 1003)
    assert arms[0]["variance"] == pytest.approx(101 / 1003 * (1 - 101 / 1003))


def test_several_treatments_get_holm_adjusted_p_values() -> None:
    exp = experiment({"current": 34, "v1": 33, "v2": 33})
    units = {"current": 500, "v1": 500, "v2": 600}
    arms = {"current": ArmStats.binomial(500, 60), "v1": ArmStats.binomial(500, 75), "v2": ArmStats.binomial(600, 66)}
    comparisons = report(exp, units, {"converted": arms})["metrics"][0]["comparisons"]
    raw = [c["p_value"] for c in comparisons]
    assert [c["variant"] for c in comparisons] == ["v1", "v2"]
    assert [c["p_value_holm"] for c in comparisons] == holm(raw)
    assert comparisons[0]["p_value_holm"] == pytest.approx(2 * raw[0])


def test_a_variant_without_outcomes_counts_its_units_as_zero() -> None:
    doc = report(metrics={"revenue": {"current": ArmStats(1003, 2006.0, 9000.0)}})
    candidate = doc["metrics"][1]["arms"][1]
    assert (candidate["units"], candidate["mean"], candidate["variance"]) == (997, 0.0, 0.0)
    comparison = doc["metrics"][1]["comparisons"][0]
    assert (comparison["status"], comparison["reason"]) == ("insufficient_data", "zero_variance")


def test_an_insufficient_comparison_has_a_reason_and_null_numbers() -> None:
    doc = report(metrics={"converted": {"current": ArmStats.binomial(1003, 0), "candidate": ArmStats.binomial(997, 4)}})
    comparison = doc["metrics"][0]["comparisons"][0]
    assert comparison["status"] == "insufficient_data"
    assert comparison["detail"] is not None and "'current'" in comparison["detail"]
    numbers = {k: v for k, v in comparison.items() if k not in {"variant", "status", "reason", "detail"}}
    assert set(numbers.values()) == {None}


def test_the_srm_check_passes_on_a_balanced_split() -> None:
    srm = report()["srm"]
    assert srm["passed"] is True and srm["status"] == "ok"
    assert srm["p_value"] == pytest.approx(0.8933, abs=1e-4)  # chi2 = 0.018 on 1 df
    assert srm["units"] == {"current": 1003, "candidate": 997}
    assert srm["expected_shares"] == {"current": 0.5, "candidate": 0.5}


def test_the_srm_check_fails_and_says_results_are_not_trustworthy() -> None:
    exp = experiment({"current": 34, "v1": 33, "v2": 33})
    srm = report(exp, {"current": 500, "v1": 500, "v2": 600}, {})["srm"]
    assert srm["passed"] is False
    assert srm["p_value"] == pytest.approx(0.000592638, abs=5e-10)
    assert "not trustworthy" in srm["message"]


def test_a_zero_weight_variant_is_left_out_of_the_srm_check() -> None:
    exp = experiment({"current": 100, "candidate": 0})
    srm = report(exp, {"current": 900, "candidate": 40}, {})["srm"]
    assert (srm["status"], srm["p_value"], srm["passed"]) == ("insufficient_data", None, True)
    assert srm["expected_shares"] == {"current": 1.0, "candidate": 0.0}


def test_the_sequential_srm_p_value_keeps_the_callers_running_minimum() -> None:
    fresh = report()["srm"]["sequential_p_value"]
    assert fresh == 1.0
    assert report(srm_running_min=0.2)["srm"]["sequential_p_value"] == 0.2


def test_no_traffic_gives_null_shares_rates_and_latencies() -> None:
    doc = report(units={}, metrics={})
    assert doc["srm"]["status"] == "insufficient_data"
    for variant in doc["variants"]:
        assert (variant["units"], variant["observed_share"], variant["error_rate"]) == (0, None, None)
        assert variant["latency_ms"] == {"p50": None, "p95": None, "p99": None}
    assert json.dumps(doc, allow_nan=False)


def test_variants_carry_shares_error_rates_and_latency_percentiles() -> None:
    exp = experiment({"current": 90, "candidate": 10})
    variants = report(exp, {"current": 900, "candidate": 100})["variants"]
    current, candidate = variants
    assert (current["control"], candidate["control"]) == (True, False)
    assert (current["weight"], current["expected_share"], current["observed_share"]) == (0.9, 0.9, 0.9)
    assert candidate["observed_share"] == pytest.approx(0.1)
    assert (current["requests"], current["errors"], current["error_rate"]) == (1800, 9, 9 / 1800)
    # every call fell in the (5, 10] ms bucket: the quantiles interpolate inside it
    assert current["latency_ms"] == {"p50": 7.5, "p95": pytest.approx(9.75), "p99": pytest.approx(9.95)}
