"""The report end to end: real calls and outcomes through the gateway, a planted effect, the report read back.

One module-scoped run drives about 10 000 calls through the app in-process (its lifespan, a real
Redis, an in-process model server behind the proxy) with a fixed seed, remembers what it sent and
what the response headers said, and reads the JSON and HTML reports; each test checks one thing of
that run. Users convert with 10% (control) and 15% (treatment) and spend 10 and 11 on average, so
the report must find a relative lift of +50% and +10%.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Final

import httpx
import httpx2
import pytest
import redis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from router.app import create_app
from router.assignment.hashing import gb_hash
from router.config.schema import Experiment
from router.reports.stats import srm_chi_square
from router.settings import Settings
from router.store.keys import Keys
from tests.e2e.conftest import GatewayFactory, experiment, store_experiments
from tests.fixtures.redis import start_server

TOKEN: Final = "report-token"
AUTH: Final = {"Authorization": f"Bearer {TOKEN}"}
NAME: Final = "planted"
SEED: Final = 20261127
UNITS: Final = 8000  # about 4 000 per arm
CONVERSION: Final = {"a": 0.10, "b": 0.15}
REVENUE_MEAN: Final = {"a": 10.0, "b": 11.0}
REVENUE_SD: Final = 3.0
EXPOSING: Final = ("hashed", "sticky")


def planted_experiment() -> Experiment:
    return experiment(
        NAME,
        fallback="none",  # a failing variant answers its own error: the X-Variant header is the variant counted
        allow_override_header=True,
        force={"qa-forced": "b"},
        metrics=[{"name": "converted", "kind": "binomial"}, {"name": "revenue", "kind": "mean"}],
    )


def model_server() -> Starlette:
    """Answers every call, except those whose body asks it to fail: 503, an error of the variant."""

    async def predict(request: Request) -> Response:
        if b"fail" in await request.body():
            return JSONResponse({"error": "asked to fail"}, status_code=503)
        return JSONResponse({"predictions": [0.5]})

    return Starlette(routes=[Route("/{variant}", predict, methods=["POST"])])


@dataclass
class Seen:
    """What the test sent, and what the gateway's response headers said about it."""

    calls: Counter[str] = field(default_factory=Counter)  # per X-Variant, every call
    errors: Counter[str] = field(default_factory=Counter)  # per X-Variant, 5xx
    exposed: Counter[str] = field(default_factory=Counter)  # units whose X-Assignment exposes them
    conversions: Counter[str] = field(default_factory=Counter)
    revenue_sum: Counter[str] = field(default_factory=Counter)
    revenue_squares: Counter[str] = field(default_factory=Counter)
    not_exposed: Counter[str] = field(default_factory=Counter)  # X-Assignment of calls that expose nobody


@dataclass
class Run:
    seen: Seen
    report: dict[str, Any]
    html: httpx2.Response
    drained: bool


async def drive(app: Starlette) -> Run:
    """Calls and outcomes through the app, then both reports once every event is in Redis."""
    rng = random.Random(SEED)
    seen = Seen()
    outcomes: list[dict[str, Any]] = []
    async with (
        app.router.lifespan_context(app),
        httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://gateway.test") as client,
    ):

        async def call(headers: dict[str, str], *, fail: bool = False) -> tuple[str, str]:
            body = {"instances": [[1.0, 2.0]], **({"fail": True} if fail else {})}
            response = await client.post(f"/v1/experiments/{NAME}/predict", json=body, headers=headers)
            variant, reason = response.headers["x-variant"], response.headers["x-assignment"]
            seen.calls[variant] += 1
            if response.status_code >= 500:
                seen.errors[variant] += 1
            if reason not in EXPOSING:
                seen.not_exposed[reason] += 1
            return variant, reason

        async def send_outcomes(flush: bool = False) -> None:
            while len(outcomes) >= 1000 or (flush and outcomes):
                batch, outcomes[:] = outcomes[:1000], outcomes[1000:]
                response = await client.post(f"/v1/experiments/{NAME}/outcomes", json={"outcomes": batch})
                assert response.status_code == 202, response.text

        for _ in range(UNITS):
            unit = f"u-{rng.getrandbits(64):016x}"
            variant, reason = await call({"X-User-Id": unit}, fail=rng.random() < 0.01)
            if rng.random() < 0.25:  # a returning user: more requests, the same unit
                await call({"X-User-Id": unit}, fail=rng.random() < 0.01)
            assert reason in EXPOSING, reason
            seen.exposed[variant] += 1
            if rng.random() < CONVERSION[variant]:
                seen.conversions[variant] += 1
                outcomes += [{"unit": unit, "metric": "converted", "value": 1}] * rng.choice([1, 2])
            elif rng.random() < 0.1:
                outcomes.append({"unit": unit, "metric": "converted", "value": 0})  # not a conversion
            total = rng.gauss(REVENUE_MEAN[variant], REVENUE_SD)
            part = rng.uniform(0, total) if rng.random() < 0.3 else total  # some users pay twice
            outcomes.append({"unit": unit, "metric": "revenue", "value": part})
            if part != total:
                outcomes.append({"unit": unit, "metric": "revenue", "value": total - part})
            seen.revenue_sum[variant] += total
            seen.revenue_squares[variant] += total * total
            await send_outcomes()

        # Traffic that is served and counted, but exposes nobody, and outcomes nobody can be credited with.
        for _ in range(40):
            await call({})
        for _ in range(25):
            await call({"X-User-Id": "qa-forced"})
        for i in range(30):
            await call({"X-User-Id": f"override-{i}", "X-Variant": "b"})
            outcomes.append({"unit": f"override-{i}", "metric": "converted", "value": 1})
        await send_outcomes(flush=True)

        drained = await app.state.services.events.drain(20.0)
        report = (await client.get(f"/v1/experiments/{NAME}/report", headers=AUTH)).json()
        html = await client.get(f"/v1/experiments/{NAME}/report", params={"format": "html"}, headers=AUTH)
    return Run(seen=seen, report=report, html=html, drained=drained)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    home = tmp_path_factory.mktemp("report-e2e")
    redis = start_server(home / "redis")
    try:
        store_experiments(redis.url, [planted_experiment()])
        settings = Settings(redis_url=redis.url, data_dir=home / "gateway", admin_token=TOKEN)
        app = create_app(settings, transport=httpx.ASGITransport(app=model_server()))
        yield asyncio.run(drive(app))
    finally:
        redis.stop()


def variant(run: Run, name: str) -> dict[str, Any]:
    return next(v for v in run.report["variants"] if v["name"] == name)


def metric(run: Run, name: str) -> dict[str, Any]:
    return next(m for m in run.report["metrics"] if m["name"] == name)


def test_every_event_reached_redis_before_the_report(run: Run) -> None:
    assert run.drained
    assert run.seen.not_exposed == {"no_unit": 40, "forced": 25, "override": 30}


def test_units_per_variant_are_the_units_the_responses_exposed(run: Run) -> None:
    assert {v["name"]: v["units"] for v in run.report["variants"]} == dict(run.seen.exposed)
    assert run.report["srm"]["units"] == dict(run.seen.exposed)
    assert run.report["total_units"] == UNITS
    assert all(arm["units"] == run.seen.exposed[arm["variant"]] for m in run.report["metrics"] for arm in m["arms"])


def test_requests_and_errors_per_variant_are_the_calls_sent(run: Run) -> None:
    assert {v["name"]: v["requests"] for v in run.report["variants"]} == dict(run.seen.calls)
    assert {v["name"]: v["errors"] for v in run.report["variants"]} == dict(run.seen.errors)
    assert all(run.seen.errors[name] > 10 for name in ("a", "b"))  # the test did plant errors in both
    for name in ("a", "b"):
        assert variant(run, name)["error_rate"] == pytest.approx(run.seen.errors[name] / run.seen.calls[name])


def test_arm_means_and_variances_are_those_of_the_per_unit_values_sent(run: Run) -> None:
    converted, revenue = metric(run, "converted"), metric(run, "revenue")
    for arm in converted["arms"]:
        p = run.seen.conversions[arm["variant"]] / arm["units"]
        assert arm["mean"] == pytest.approx(p, rel=1e-12)
        assert arm["variance"] == pytest.approx(p * (1 - p), rel=1e-12)
    for arm in revenue["arms"]:
        n, total, squares = arm["units"], run.seen.revenue_sum[arm["variant"]], run.seen.revenue_squares[arm["variant"]]
        assert arm["mean"] == pytest.approx(total / n, rel=1e-9)
        assert arm["variance"] == pytest.approx((squares - total * total / n) / (n - 1), rel=1e-6)


@pytest.mark.parametrize(
    ("metric_name", "absolute", "relative"),
    [
        pytest.param("converted", 0.05, 0.5, id="binomial-10%-vs-15%"),
        pytest.param("revenue", 1.0, 0.1, id="mean-10-vs-11"),
    ],
)
def test_the_planted_effect_is_inside_the_intervals_and_detected(
    run: Run, metric_name: str, absolute: float, relative: float
) -> None:
    (comparison,) = metric(run, metric_name)["comparisons"]
    assert comparison["status"] == "ok"
    assert comparison["absolute_ci_low"] <= absolute <= comparison["absolute_ci_high"]
    assert comparison["ci_low"] <= relative <= comparison["ci_high"]
    assert comparison["sequential_ci_low"] <= relative <= comparison["sequential_ci_high"]
    assert comparison["ci_low"] > 0  # with ~4 000 units per arm, an effect this size is found
    assert comparison["chance_to_beat_control"] > 0.99


def test_the_sample_ratio_check_passes_for_a_fair_split(run: Run) -> None:
    srm = run.report["srm"]
    assert srm["status"] == "ok"
    assert srm["passed"] is True
    assert srm["p_value"] > 0.001
    assert srm["sequential_p_value"] is not None
    assert srm["expected_shares"] == {"a": 0.5, "b": 0.5}


def test_latency_percentiles_come_from_the_calls(run: Run) -> None:
    for name in ("a", "b"):
        latency = variant(run, name)["latency_ms"]
        assert 0 < latency["p50"] <= latency["p95"] <= latency["p99"]


def test_the_html_report_is_one_self_contained_page(run: Run) -> None:
    assert run.html.status_code == 200
    assert run.html.headers["content-type"] == "text/html; charset=utf-8"
    assert "default-src 'none'" in run.html.headers["content-security-policy"]
    page = run.html.text
    assert page.startswith("<!DOCTYPE html>")
    assert f"<code>{NAME}</code>" in page
    assert page.count("<svg") >= 3
    assert "<script" not in page and "<link" not in page


# --- the endpoint's edges, on the `gateway` fixture ---------------------------------------------------------------


@pytest.fixture
def reports(gateway: GatewayFactory) -> TestClient:
    return gateway(
        [experiment("looks", metrics=[{"name": "converted", "kind": "binomial"}])], settings={"admin_token": TOKEN}
    )


def test_an_unknown_format_is_refused_with_422_naming_the_choices(reports: TestClient) -> None:
    response = reports.get("/v1/experiments/looks/report", params={"format": "pdf"}, headers=AUTH)
    assert response.status_code == 422
    assert response.json()["error"]["message"] == "unknown report format 'pdf'; choose one of json, html"


def test_an_unknown_experiment_has_no_report(reports: TestClient) -> None:
    response = reports.get("/v1/experiments/nope/report", headers=AUTH)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "unknown_experiment"


def test_an_archived_experiment_keeps_its_report(reports: TestClient) -> None:
    assert reports.delete("/v1/experiments/looks", headers=AUTH).status_code == 200
    response = reports.get("/v1/experiments/looks/report", headers=AUTH)
    assert response.status_code == 200
    assert (response.json()["experiment"], response.json()["config_version"]) == ("looks", 2)


def test_an_experiment_without_traffic_reports_no_srm_test_and_no_estimates(reports: TestClient) -> None:
    report = reports.get("/v1/experiments/looks/report", headers=AUTH).json()
    assert report["srm"]["status"] == "insufficient_data"
    assert report["srm"]["sequential_p_value"] is None
    assert report["metrics"][0]["comparisons"][0]["status"] == "insufficient_data"


def units_of(variant: str, count: int, *, seed: str = "looks") -> list[str]:
    """Unit ids that the hash assigns to `variant` of a 50/50 experiment (`a` below one half)."""
    ids = (f"unit-{i}" for i in range(20 * count))
    found = [unit for unit in ids if ((gb_hash(seed, unit, 2) or 0.0) < 0.5) == (variant == "a")]
    assert len(found) >= count
    return found[:count]


def expose(client: TestClient, units: list[str]) -> None:
    """Predict calls for `units`, then wait until the writer (on the client's event loop) has them in Redis."""
    for unit in units:
        client.post("/v1/experiments/looks/predict", json={}, headers={"X-User-Id": unit})
    assert client.portal.call(client.app.state.services.events.drain, 5.0)  # type: ignore[attr-defined]


def test_the_sequential_srm_p_value_keeps_its_running_minimum_across_reports(
    reports: TestClient, redis_url: str
) -> None:
    expose(reports, units_of("a", 200))
    first = reports.get("/v1/experiments/looks/report", headers=AUTH).json()["srm"]
    expose(reports, units_of("b", 200))
    second = reports.get("/v1/experiments/looks/report", headers=AUTH).json()["srm"]
    assert (first["units"], second["units"]) == ({"a": 200, "b": 0}, {"a": 200, "b": 200})
    assert second["p_value"] == pytest.approx(1.0)  # this look alone sees a perfect split
    # ssrm is cautious at small counts (200 against 0 gives 0.14), but it does not forget a bad look
    assert second["sequential_p_value"] == first["sequential_p_value"] < 0.2
    with redis.Redis.from_url(redis_url) as client:
        stored = client.hgetall(Keys().srm("looks"))
    assert float(stored[b"p_value"]) == first["sequential_p_value"]
    assert stored[b"looks"] == b"2"


def units_below(share: float, count: int, *, above: bool = False, seed: str = "looks") -> list[str]:
    """New unit ids whose hash falls below `share` (or at or above it): variant `a` of an `a`, `b` split."""
    ids = (f"later-{i}" for i in range(40 * count))
    found = [unit for unit in ids if ((gb_hash(seed, unit, 2) or 0.0) < share) != above]
    assert len(found) >= count
    return found[:count]


def test_after_a_reweighting_the_srm_check_counts_only_the_units_exposed_under_the_new_weights(
    reports: TestClient,
) -> None:
    """A canary's steps re-weight the experiment: earlier units would fail a check against today's shares."""
    expose(reports, units_of("a", 200) + units_of("b", 200))  # version 1: 50/50, a fair split
    edit = reports.patch("/v1/experiments/looks", json={"weights": {"a": 90, "b": 10}}, headers=AUTH)
    assert edit.status_code == 200 and edit.json()["version"] == 2
    described = reports.patch("/v1/experiments/looks", json={"force": {"qa-user": "b"}}, headers=AUTH)
    assert described.status_code == 200 and described.json()["version"] == 3
    expose(reports, units_below(0.9, 450) + units_below(0.9, 50, above=True))  # a fair 90/10 split

    srm = reports.get("/v1/experiments/looks/report", headers=AUTH).json()["srm"]

    assert srm["since_version"] == 2  # the versions since the weights changed, the edit of force included
    assert srm["units"] == {"a": 450, "b": 50}
    assert srm["passed"] and srm["p_value"] == pytest.approx(1.0)
    assert "since version 2, when these weights took effect" in srm["message"]
    # all 900 units against 90/10 would be a glaring mismatch: 650 against 250
    assert srm_chi_square([650, 250], [90, 10]).p_value < 1e-50


def test_without_a_reweighting_the_srm_check_counts_every_unit(reports: TestClient) -> None:
    expose(reports, units_of("a", 100) + units_of("b", 100))
    assert reports.patch("/v1/experiments/looks", json={"force": {"qa-user": "b"}}, headers=AUTH).status_code == 200
    srm = reports.get("/v1/experiments/looks/report", headers=AUTH).json()["srm"]
    assert (srm["since_version"], srm["units"]) == (None, {"a": 100, "b": 100})
