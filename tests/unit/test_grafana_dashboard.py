"""deploy/grafana/abrouter.json queries only metrics that /metrics exports, and shows what operators need."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from router.api.metrics import render
from router.metrics import Metrics

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "abrouter.json"

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_VARIABLE = re.compile(r"\$\{[^}]*\}|\$\w+")
_IDENTIFIER = re.compile(r"(?<![\w.:])[A-Za-z_:][\w:]*")
# Grafana's label_values([metric,] label): the metric is a name, the label is not
_LABEL_VALUES = re.compile(r"label_values\(\s*(?:([A-Za-z_:][\w:]*)\s*(?:\{[^}]*\})?\s*,)?\s*\w+\s*\)")
_KEYWORDS = frozenset(
    {
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "inf",
        "nan",
    }
)


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression (or a Grafana `label_values(...)` query) reads."""
    names = {metric for metric in _LABEL_VALUES.findall(expr) if metric}
    expr = _LABEL_VALUES.sub(" ", expr)
    for pattern in (_STRING, _MATCHERS, _RANGE, _GROUPING, _VARIABLE):
        expr = pattern.sub(" ", expr)
    for match in _IDENTIFIER.finditer(expr):
        word = match.group()
        is_function = expr[match.end() :].lstrip().startswith("(")
        if not is_function and word.lower() not in _KEYWORDS:
            names.add(word)
    return names


def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for item in items:
        yield item
        yield from panels(item.get("panels", []))


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def queries() -> list[str]:
    """Every PromQL query of the dashboard: panel targets and templating variables."""
    board = dashboard()
    exprs = [target["expr"] for panel in panels(board["panels"]) for target in panel.get("targets", [])]
    for variable in board["templating"]["list"]:
        query = variable.get("query")
        if variable["type"] == "query":
            exprs.append(query["query"] if isinstance(query, dict) else query)
    return exprs


def exported() -> dict[str, str]:
    """What /metrics renders for a fresh app: sample name -> family type (histograms by their series names)."""
    body, _ = render(Metrics(CollectorRegistry()).registry, None)
    names: dict[str, str] = {}
    for family in text_string_to_metric_families(body.decode()):
        if family.type == "histogram":
            for suffix in ("_bucket", "_sum", "_count"):
                names[family.name + suffix] = family.type
        elif family.type == "counter":
            names[family.name + "_total"] = family.type
        else:
            names[family.name] = family.type
    return names


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        pytest.param(
            'sum by (variant) (rate(abrouter_requests_total{status=~"5.."}[5m]))', {"abrouter_requests_total"}
        ),
        pytest.param(
            "histogram_quantile(0.99, sum by (le) (rate(abrouter_request_duration_seconds_bucket[$__rate_interval])))",
            {"abrouter_request_duration_seconds_bucket"},
        ),
        pytest.param("a_metric / on (job) group_left b_metric offset 5m", {"a_metric", "b_metric"}, id="binary-ops"),
        pytest.param("label_values(abrouter_requests_total, experiment)", {"abrouter_requests_total"}, id="variable"),
        pytest.param("label_values(experiment)", set(), id="variable-of-a-label-only"),
        pytest.param("sum(rate(x_total[1m])) > 1e3", {"x_total"}, id="scientific-number"),
        pytest.param('max(abrouter_config_version{experiment=~"${experiment}"})', {"abrouter_config_version"}),
    ],
)
def test_the_promql_reader_finds_the_metric_names_of_a_query(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_every_metric_the_dashboard_queries_is_one_that_metrics_exports() -> None:
    available = exported()
    queried = {name for expr in queries() for name in metric_names(expr)}
    assert queried, "the dashboard has no queries"
    assert sorted(queried - set(available)) == []


def test_the_dashboard_shows_what_an_operator_watches() -> None:
    queried = {name for expr in queries() for name in metric_names(expr)}
    assert {
        "abrouter_requests_total",
        "abrouter_request_duration_seconds_bucket",
        "abrouter_upstream_errors_total",
        "abrouter_fallbacks_total",
        "abrouter_events_pending",
        "abrouter_events_dropped_total",
        "abrouter_config_version",
        "abrouter_rollout_step",
        "abrouter_variant_weight",
    } <= queried


@pytest.mark.parametrize("quantile", [pytest.param(q, id=f"p{q[2:]}") for q in ("0.5", "0.95", "0.99")])
def test_the_dashboard_shows_the_request_latency_quantile_by_variant(quantile: str) -> None:
    assert any(
        expr.startswith(f"histogram_quantile({quantile},")
        and "abrouter_request_duration_seconds_bucket" in expr
        and "variant" in expr
        for expr in queries()
    )


def test_the_dashboard_shows_the_error_rate_by_variant() -> None:
    assert any('status=~"5.."' in expr and "by (experiment, variant)" in expr for expr in queries())


def test_every_panel_has_a_unique_id_and_a_place_on_the_grid() -> None:
    all_panels = list(panels(dashboard()["panels"]))
    ids = [panel["id"] for panel in all_panels]
    assert len(ids) == len(set(ids))
    assert all({"x", "y", "w", "h"} <= set(panel["gridPos"]) for panel in all_panels)
