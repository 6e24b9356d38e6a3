"""The report rendered: a self-contained, escaped HTML page, a terminal table, JSON, and verdicts."""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from html.parser import HTMLParser
from typing import Any

import pytest

from router.config.schema import Experiment
from router.reports.model import ComparisonReport, MetricReport, Report
from router.reports.render import Tone, render_html, render_json, render_table, verdicts
from router.reports.report import VariantOperations, build_report
from router.reports.stats import ArmStats

HOSTILE = "<script>alert(\"x\")</script> & 'q' <img src=x onerror=alert(1)>"


def make_report(*, srm_fails: bool = False, description: str = "new churn model vs current") -> Report:
    exp = Experiment.model_validate(
        {
            "name": "churn",
            "description": description,
            "control": "current",
            "variants": [
                {"name": "current", "weight": 34, "url": "http://127.0.0.1:9001/predict"},
                {"name": "v1", "weight": 33, "model": "variants/v1.joblib"},
                {"name": "v2", "weight": 33, "model": "variants/v2.joblib"},
            ],
            "metrics": [{"name": "converted", "kind": "binomial"}, {"name": "revenue", "kind": "mean"}],
        }
    )
    units = {"current": 500, "v1": 500, "v2": 600 if srm_fails else 505}
    operations = {
        name: VariantOperations(units=n, requests=2 * n, errors=i * 3, latency_counts=(n, n, 10 * i, i, 0))
        for i, (name, n) in enumerate(units.items())
    }
    metrics: Mapping[str, Mapping[str, ArmStats]] = {
        "converted": {name: ArmStats.binomial(n, c) for (name, n), c in zip(units.items(), (60, 95, 66), strict=True)},
        "revenue": {"current": ArmStats(500, 1000.0, 9000.0), "v1": ArmStats(500, 1100.0, 9900.0)},
    }
    return build_report(
        exp,
        config_version=7,
        generated_at=datetime(2026, 11, 23, 10, tzinfo=UTC),
        operations=operations,
        metrics=metrics,
        latency_bounds_ms=(5.0, 10.0, 50.0, 100.0),
    )


# -- HTML: self-contained ------------------------------------------------------------------------

EXTERNAL = [
    pytest.param(r"""\b(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", id="src-or-href-to-a-url"),
    pytest.param(r"https?://", id="any-url"),
    pytest.param(r"<script", id="script"),
    pytest.param(r"<link\b", id="link"),
    pytest.param(r"@import", id="css-import"),
    pytest.param(r"url\(", id="css-url"),
    pytest.param(r"<(?:iframe|object|embed|img)\b", id="embedded-resource"),
]


@pytest.mark.parametrize("pattern", EXTERNAL)
def test_the_html_page_references_nothing_outside_itself(pattern: str) -> None:
    page = render_html(make_report(srm_fails=True, description=HOSTILE))
    assert re.search(pattern, page, flags=re.IGNORECASE) is None


class _Balance(HTMLParser):
    """Collects tags left open or closed out of order."""

    VOID = frozenset({"meta", "br", "hr", "img", "input", "link", "circle", "line", "rect", "path"})

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.problems: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        pass

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.problems.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
            return
        self.stack.pop()


def test_the_html_page_is_well_formed() -> None:
    checker = _Balance()
    checker.feed(render_html(make_report(srm_fails=True)))
    assert checker.problems == []
    assert checker.stack == []


# -- HTML: escaping ------------------------------------------------------------------------------


def test_the_description_from_the_config_is_escaped() -> None:
    page = render_html(make_report(description=HOSTILE))
    assert HOSTILE not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#x27;q&#x27;" in page


@pytest.mark.parametrize(
    "place",
    [
        pytest.param("experiment", id="experiment-name"),
        pytest.param("variant", id="variant-name"),
        pytest.param("metric", id="metric-name"),
        pytest.param("detail", id="insufficient-data-detail"),
    ],
)
def test_every_string_of_the_report_is_escaped(place: str) -> None:
    # The schema keeps names tame, but the page must not rely on it.
    doc = copy.deepcopy(make_report())
    if place == "experiment":
        doc["experiment"] = HOSTILE
    elif place == "variant":
        doc["variants"][1]["name"] = HOSTILE
        doc["metrics"][0]["arms"][1]["variant"] = HOSTILE
        doc["metrics"][0]["comparisons"][0]["variant"] = HOSTILE
    elif place == "metric":
        doc["metrics"][0]["name"] = HOSTILE
    else:
        comparison = doc["metrics"][1]["comparisons"][1]
        assert comparison["status"] == "insufficient_data"
        comparison["detail"] = HOSTILE
    page = render_html(doc)
    assert "<script" not in page and "<img" not in page
    assert "&lt;script&gt;" in page


# -- HTML: content -------------------------------------------------------------------------------


@pytest.mark.parametrize("srm_fails", [pytest.param(True, id="srm-fails"), pytest.param(False, id="srm-passes")])
def test_the_srm_banner_appears_exactly_when_the_srm_check_fails(srm_fails: bool) -> None:
    page = render_html(make_report(srm_fails=srm_fails))
    assert ('role="alert"' in page) is srm_fails
    assert ("Sample ratio mismatch" in page) is srm_fails
    assert ("not trustworthy" in page) is srm_fails


def test_the_page_has_a_table_and_a_lift_chart_per_metric_and_the_operations() -> None:
    page = render_html(make_report())
    assert page.count("<table>") == 2 + 1  # two metrics, then the variants
    assert page.count('aria-label="relative lift of each treatment') == 2
    for chart in ("share of exposed units", "error rate per variant", "latency quantiles"):
        assert page.count(f'aria-label="{chart}') == 1


def test_the_page_shows_a_verdict_line_per_treatment_and_metric() -> None:
    page = render_html(make_report())
    assert page.count('<li class="tone-') == 4  # 2 metrics x 2 treatments


def test_the_lift_chart_is_left_out_when_no_comparison_has_an_estimate() -> None:
    doc = make_report()
    doc["metrics"] = [m for m in doc["metrics"] if m["name"] == "revenue"]
    for comparison in doc["metrics"][0]["comparisons"]:
        comparison.update(status="insufficient_data", reason="too_few_units", detail="x")
    page = render_html(doc)
    assert "relative lift of each treatment" not in page
    assert "No lift to chart" in page


def test_the_page_shows_the_lift_and_its_intervals() -> None:
    doc = make_report()
    comparison = doc["metrics"][0]["comparisons"][0]
    page = render_html(doc)
    lift = f"{comparison['relative_lift'] * 100:+.1f}%"
    assert lift == "+58.3%"
    assert f"<strong>{lift}</strong>" in page


# -- terminal table ------------------------------------------------------------------------------


def test_the_terminal_table_lists_variants_metrics_and_lifts() -> None:
    text = render_table(make_report())
    for expected in ("churn", "config v7", "current (control)", "v1", "v2", "converted (binomial)", "+58.3%"):
        assert expected in text
    assert "SAMPLE RATIO MISMATCH" not in text


def test_the_terminal_table_flags_a_sample_ratio_mismatch() -> None:
    assert "SAMPLE RATIO MISMATCH" in render_table(make_report(srm_fails=True))


def test_rich_markup_in_report_strings_is_printed_literally() -> None:
    doc = copy.deepcopy(make_report())
    doc["variants"][1]["name"] = "[bold red]v1[/bold red]"
    assert "[bold red]v1[/bold red]" in render_table(doc)


# -- JSON ----------------------------------------------------------------------------------------


def test_render_json_round_trips_the_report() -> None:
    doc = make_report()
    assert json.loads(render_json(doc)) == doc


def test_render_json_refuses_nan_rather_than_writing_invalid_json() -> None:
    doc = copy.deepcopy(make_report())
    doc["variants"][0]["error_rate"] = math.nan
    with pytest.raises(ValueError, match="not JSON compliant"):
        render_json(doc)


# -- verdicts ------------------------------------------------------------------------------------


def metric_with(**numbers: Any) -> MetricReport:
    comparison: ComparisonReport = {
        "variant": "candidate",
        "status": "ok",
        "reason": None,
        "detail": None,
        "absolute_effect": 0.01,
        "absolute_ci_low": 0.0,
        "absolute_ci_high": 0.02,
        "absolute_p_value": 0.03,
        "relative_lift": 0.1,
        "relative_se": 0.04,
        "ci_low": 0.02,
        "ci_high": 0.18,
        "p_value": 0.01,
        "p_value_holm": 0.01,
        "chance_to_beat_control": 0.99,
        "risk": [0.1, 0.001],
        "sequential_ci_low": 0.01,
        "sequential_ci_high": 0.19,
        "sequential_p_value": 0.04,
    }
    comparison.update(numbers)  # type: ignore[typeddict-item]
    return {"name": "converted", "kind": "binomial", "control": "current", "arms": [], "comparisons": [comparison]}


@pytest.mark.parametrize(
    ("numbers", "tone", "words"),
    [
        pytest.param({}, Tone.HIGHER, "excludes 0", id="always-valid-higher"),
        pytest.param(
            {"relative_lift": -0.1, "ci_low": -0.18, "ci_high": -0.02}, Tone.LOWER, "is lower", id="always-valid-lower"
        ),
        pytest.param({"sequential_p_value": 0.3}, Tone.PROVISIONAL, "keep collecting", id="fixed-horizon-only"),
        pytest.param({"p_value": 0.4, "sequential_p_value": 1.0}, Tone.FLAT, "No detectable difference", id="flat"),
        pytest.param(
            {"status": "insufficient_data", "reason": "zero_variance", "detail": "every unit of 'current' ..."},
            Tone.INSUFFICIENT,
            "not enough data",
            id="insufficient",
        ),
    ],
)
def test_each_comparison_gets_a_verdict(numbers: dict[str, Any], tone: Tone, words: str) -> None:
    if numbers.get("status") == "insufficient_data":
        numbers |= {key: None for key in ("relative_lift", "p_value", "sequential_p_value")}
    (verdict,) = verdicts(metric_with(**numbers), alpha=0.05)
    assert verdict.tone is tone
    assert words in verdict.text


def test_a_result_lost_to_the_holm_correction_is_only_provisional() -> None:
    metric = metric_with(p_value_holm=0.08)
    metric["comparisons"].append({**metric["comparisons"][0], "variant": "other", "p_value": 0.5, "p_value_holm": 0.5})
    first, _ = verdicts(metric, alpha=0.05)
    assert first.tone is Tone.PROVISIONAL
    assert "Holm" in first.text
