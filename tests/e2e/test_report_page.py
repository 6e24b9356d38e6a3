"""The HTML report in a real browser: headless Chromium loads it, draws its charts, and fetches nothing else.

The page is a demo-like report (the numbers of an `abrouter demo` run) written to a file. Chromium
reports every request the page's tab makes, so a stylesheet, font, script or image that slipped in
from anywhere (another host or a file beside the page) shows up as a second request. A page that
does fetch a font is checked the same way, so the check is known to catch what it looks for.
"""

from __future__ import annotations

import struct
from datetime import UTC, datetime
from pathlib import Path

from router.config.schema import Experiment
from router.reports.model import Report
from router.reports.render import render_html
from router.reports.report import VariantOperations, build_report
from router.reports.stats import ArmStats
from router.store.stats import LATENCY_BUCKETS_MS, latency_bucket
from tests.fixtures.chromium import load_page

WIDTH, HEIGHT = 1200, 2400
CHECKS = {
    "title": "document.title",
    "charts": "document.querySelectorAll('svg').length",
    "drawn": "[...document.querySelectorAll('svg')].every(s => s.getBoundingClientRect().width > 100)",
    "tables": "document.querySelectorAll('table').length",
    "text": "document.body.innerText",
}


def histogram(latencies_ms: dict[float, int]) -> tuple[int, ...]:
    counts = [0] * (len(LATENCY_BUCKETS_MS) + 1)
    for latency, count in latencies_ms.items():
        counts[latency_bucket(latency)] += count
    return tuple(counts)


def demo_like_report() -> Report:
    experiment = Experiment.model_validate(
        {
            "name": "demo",
            "description": "abrouter demo: synthetic users with a planted lift of the candidate",
            "control": "current",
            "variants": [
                {"name": "current", "weight": 50, "url": "http://127.0.0.1:9001/predict"},
                {"name": "candidate", "weight": 50, "model": "variants/models/churn_candidate.joblib"},
            ],
            "metrics": [{"name": "converted", "kind": "binomial"}, {"name": "revenue", "kind": "mean"}],
        }
    )
    operations = {
        "current": VariantOperations(
            units=1955, requests=2712, errors=2, latency_counts=histogram({4: 900, 9: 1300, 18: 450, 45: 62})
        ),
        "candidate": VariantOperations(
            units=2045, requests=2841, errors=0, latency_counts=histogram({3: 1400, 7: 1100, 14: 300, 70: 41})
        ),
    }
    metrics = {
        "converted": {"current": ArmStats.binomial(1955, 188), "candidate": ArmStats.binomial(2045, 278)},
        "revenue": {"current": ArmStats(1955, 7540.2, 452_000.0), "candidate": ArmStats(2045, 11_120.5, 686_000.0)},
    }
    return build_report(
        experiment,
        config_version=1,
        generated_at=datetime(2026, 11, 27, 10, 36, tzinfo=UTC),
        operations=operations,
        metrics=metrics,
        latency_bounds_ms=LATENCY_BUCKETS_MS,
        srm_running_min=0.31,
    )


def png_size(png: bytes) -> tuple[int, int]:
    assert png[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", png[16:24])  # the IHDR chunk comes first
    return width, height


def test_the_report_page_loads_in_chromium_without_fetching_anything(tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    page.write_text(render_html(demo_like_report()), encoding="utf-8")
    loaded = load_page(page.as_uri(), tmp_path / "profile", evaluate=CHECKS, width=WIDTH, height=HEIGHT)
    (tmp_path / "report.png").write_bytes(loaded.screenshot)  # kept with the test's files, to look at
    assert loaded.requests == [page.as_uri()]
    assert loaded.failed == []
    assert loaded.values["title"] == "Experiment report: demo"
    assert loaded.values["charts"] >= 4 and loaded.values["drawn"] is True
    assert loaded.values["tables"] >= 3
    assert "candidate is higher than current" in loaded.values["text"]
    assert png_size(loaded.screenshot) == (WIDTH, HEIGHT)
    assert len(loaded.screenshot) > 50_000  # text and charts; a blank page of this size is a few kB


def test_a_page_that_fetches_a_font_is_caught(tmp_path: Path) -> None:
    page = tmp_path / "leaky.html"
    page.write_text(
        '<!DOCTYPE html><html><head><title>leaky</title><link rel="stylesheet" '
        'href="https://fonts.example.com/css?family=Inter"></head><body><img src="chart.png">x</body></html>'
    )
    loaded = load_page(page.as_uri(), tmp_path / "profile", width=400, height=300)
    assert loaded.requests == [
        page.as_uri(),
        "https://fonts.example.com/css?family=Inter",
        (tmp_path / "chart.png").as_uri(),
    ]
    assert len(loaded.failed) == 2  # nothing leaves the machine: the font's host does not resolve
