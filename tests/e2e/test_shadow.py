"""Shadow traffic through the app: which calls are mirrored, what the caller sees, what is counted, and stopping it."""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from router.app import create_app
from router.settings import Settings
from router.store.embedded import free_port
from tests.e2e.conftest import UPSTREAM, GatewayFactory, experiment, store_experiments_async
from tests.e2e.test_metrics import scrape, total, value

TOKEN = "shadow-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@dataclass
class Seen:
    """What one model server call carried."""

    path: str
    unit: str | None
    request_id: str | None
    headers: dict[str, str]
    body: bytes


@dataclass
class RecordingUpstream:
    """Model servers for `a` and `b` that record every call; `b` (the shadow) can be slow or failing."""

    b_status: int = 200
    b_delay_s: float = 0.0
    calls: list[Seen] = field(default_factory=list)

    def app(self) -> Starlette:
        async def predict(request: Request) -> Response:
            body = await request.body()
            headers = dict(request.headers)
            self.calls.append(
                Seen(request.url.path, headers.get("x-user-id"), headers.get("x-request-id"), headers, body)
            )
            status = 200
            if request.url.path == "/b":
                if self.b_delay_s:
                    await asyncio.sleep(self.b_delay_s)
                status = self.b_status
            return JSONResponse({"served_by": request.url.path}, status_code=status)

        return Starlette(routes=[Route("/{path:path}", predict, methods=["POST"])])

    def at(self, path: str) -> list[Seen]:
        return [seen for seen in self.calls if seen.path == path]


def shadowed(percent: float = 100, **fields: Any) -> Any:
    """Every unit served by `a` (b has weight 0), and `percent` of units mirrored to `b`."""
    variants = [{"name": "a", "weight": 1, "url": f"{UPSTREAM}/a"}, {"name": "b", "weight": 0, "url": f"{UPSTREAM}/b"}]
    return experiment(**{"variants": variants, "shadow": {"variant": "b", "percent": percent}, **fields})


def predict(client: TestClient, unit: str | None, **headers: str) -> httpx.Response:
    if unit is not None:
        headers["X-User-Id"] = unit
    return client.post("/v1/experiments/exp/predict", json={"instances": [[1.0, 2.0]]}, headers=headers)


def settled(client: TestClient, timeout_s: float = 10.0) -> None:
    """Wait until every mirror sent so far has finished (mirrors are sent before the call's ASGI app returns)."""
    mirror = client.app.state.services.shadow  # type: ignore[attr-defined]
    deadline = time.monotonic() + timeout_s
    while mirror.in_flight:
        assert time.monotonic() < deadline, f"{mirror.in_flight} mirrors still in flight"
        time.sleep(0.01)


def shadow_count(client: TestClient, result: str) -> float:
    return value(scrape(client), "abrouter_shadow_requests_total", experiment="exp", variant="b", result=result) or 0


# --- which calls ----------------------------------------------------------------------------------------------------


def test_about_the_configured_share_of_units_is_mirrored(gateway: GatewayFactory) -> None:
    upstream = RecordingUpstream()
    client = gateway([shadowed(25)], upstream=upstream.app())
    units = [f"user-{i}" for i in range(2000)]
    for unit in units:
        assert predict(client, unit).status_code == 200
    settled(client)
    mirrored = {seen.unit for seen in upstream.at("/b")}
    assert 0.20 * len(units) <= len(mirrored) <= 0.30 * len(units)
    assert len(upstream.at("/b")) == len(mirrored)  # one mirror per call of a mirrored unit


def test_a_unit_is_either_always_or_never_mirrored(gateway: GatewayFactory) -> None:
    upstream = RecordingUpstream()
    client = gateway([shadowed(50)], upstream=upstream.app())
    for unit in [f"user-{i}" for i in range(100)]:
        for _ in range(3):
            predict(client, unit)
    settled(client)
    per_unit = collections.Counter(seen.unit for seen in upstream.at("/b"))
    assert set(per_unit.values()) == {3}
    assert 20 <= len(per_unit) <= 80


def test_a_call_without_a_unit_is_not_mirrored(gateway: GatewayFactory) -> None:
    upstream = RecordingUpstream()
    client = gateway([shadowed(100)], upstream=upstream.app())
    assert predict(client, None).headers["x-assignment"] == "no_unit"
    settled(client)
    assert upstream.at("/b") == []


def test_a_forced_unit_is_mirrored_like_any_other(gateway: GatewayFactory) -> None:
    upstream = RecordingUpstream()
    client = gateway([shadowed(100, force={"qa-1": "a"})], upstream=upstream.app())
    assert predict(client, "qa-1").headers["x-assignment"] == "forced"
    settled(client)
    assert [seen.unit for seen in upstream.at("/b")] == ["qa-1"]


def test_calls_the_shadow_variant_serves_itself_are_not_mirrored_to_it(gateway: GatewayFactory) -> None:
    upstream = RecordingUpstream()
    client = gateway([experiment(shadow={"variant": "b", "percent": 100})], upstream=upstream.app())  # 50/50
    served = collections.Counter(predict(client, f"user-{i}").headers["x-variant"] for i in range(100))
    settled(client)
    assert served["a"] > 0 and served["b"] > 0
    assert len(upstream.at("/b")) == served["a"] + served["b"]  # b's own calls once, a's mirrored once
    assert len({seen.request_id for seen in upstream.at("/b")}) == 100


# --- what the caller and the shadow get -----------------------------------------------------------------------------


def test_the_caller_gets_the_served_variants_answer_and_headers(gateway: GatewayFactory) -> None:
    upstream = RecordingUpstream(b_status=503)
    client = gateway([shadowed(100)], upstream=upstream.app())
    responses = [predict(client, f"user-{i}") for i in range(20)]
    settled(client)
    assert {(r.status_code, r.headers["x-variant"], r.json()["served_by"]) for r in responses} == {(200, "a", "/a")}
    assert len(upstream.at("/b")) == 20


def test_a_mirrored_call_carries_the_callers_body_headers_and_request_id(gateway: GatewayFactory) -> None:
    upstream = RecordingUpstream()
    client = gateway([shadowed(100)], upstream=upstream.app())
    response = client.post(
        "/v1/experiments/exp/predict",
        content=b'{"instances": [[3.0]]}',
        headers={"X-User-Id": "u1", "X-Request-Id": "req-7", "Authorization": "Bearer model", "X-Trace": "t1"},
    )
    settled(client)
    (served,) = upstream.at("/a")
    (mirrored,) = upstream.at("/b")
    assert response.headers["x-request-id"] == "req-7"
    assert mirrored.body == served.body == b'{"instances": [[3.0]]}'
    assert mirrored.request_id == "req-7"
    assert {k: mirrored.headers[k] for k in ("authorization", "x-trace", "x-user-id")} == {
        "authorization": "Bearer model",
        "x-trace": "t1",
        "x-user-id": "u1",
    }


# --- results counted ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("behaviour", "variant_fields", "result"),
    [
        pytest.param({}, {}, "ok", id="2xx-is-ok"),
        pytest.param({"b_status": 422}, {}, "ok", id="4xx-is-ok"),
        pytest.param({"b_status": 503}, {}, "error", id="5xx-is-error"),
        pytest.param({"b_delay_s": 1.0}, {"timeout_s": 0.1}, "timeout", id="slow-is-timeout"),
    ],
)
def test_each_mirrored_call_is_counted_by_its_result_and_the_caller_is_served_anyway(
    gateway: GatewayFactory, behaviour: dict[str, Any], variant_fields: dict[str, Any], result: str
) -> None:
    b = {"name": "b", "weight": 0, "url": f"{UPSTREAM}/b", **variant_fields}
    exp = shadowed(100, variants=[{"name": "a", "weight": 1, "url": f"{UPSTREAM}/a"}, b])
    client = gateway([exp], upstream=RecordingUpstream(**behaviour).app())
    responses = [predict(client, f"user-{i}") for i in range(3)]
    settled(client)
    assert {(r.status_code, r.headers["x-variant"]) for r in responses} == {(200, "a")}
    assert shadow_count(client, result) == 3
    assert total(scrape(client), "abrouter_shadow_requests_total") == 3


def test_a_dead_shadow_upstream_counts_errors_and_the_caller_is_served_anyway(
    gateway: GatewayFactory, trained_models: dict[str, Path]
) -> None:
    variants = [
        {"name": "a", "weight": 1, "model": str(trained_models["churn_current"])},
        {"name": "b", "weight": 0, "url": f"http://127.0.0.1:{free_port()}/b"},
    ]
    client = gateway([shadowed(100, variants=variants)], upstream="network")
    response = client.post(
        "/v1/experiments/exp/predict", json={"instances": [[12.0, 70.5, 1.0, 0.1]]}, headers={"X-User-Id": "u1"}
    )
    settled(client)
    assert (response.status_code, response.headers["x-variant"]) == (200, "a")
    assert len(response.json()["predictions"]) == 1
    assert shadow_count(client, "error") == 1


def test_mirrors_past_the_in_flight_bound_are_dropped_and_counted(gateway: GatewayFactory) -> None:
    upstream = RecordingUpstream(b_delay_s=3.0)
    variants = [
        {"name": "a", "weight": 1, "url": f"{UPSTREAM}/a"},
        {"name": "b", "weight": 0, "url": f"{UPSTREAM}/b", "timeout_s": 5},
    ]
    client = gateway([shadowed(100, variants=variants)], upstream=upstream.app(), settings={"shadow_max_in_flight": 1})
    started = time.monotonic()
    responses = [predict(client, f"user-{i}") for i in range(5)]
    assert time.monotonic() - started < 2.5  # the slow mirror delays no caller
    assert {r.status_code for r in responses} == {200}
    assert shadow_count(client, "dropped") == 4
    settled(client)
    assert shadow_count(client, "ok") == 1
    assert len(upstream.at("/b")) == 1


def test_mirrored_calls_count_no_request_exposure_or_report_traffic_for_the_shadow(gateway: GatewayFactory) -> None:
    upstream = RecordingUpstream()
    client = gateway([shadowed(100)], upstream=upstream.app(), settings={"admin_token": TOKEN})
    for i in range(20):
        predict(client, f"user-{i}")
    settled(client)
    deadline = time.monotonic() + 10
    while value(scrape(client), "abrouter_exposures_total", experiment="exp", variant="a") != 20:
        assert time.monotonic() < deadline, "the exposures never reached Redis"
        time.sleep(0.05)
    samples = scrape(client)
    assert len(upstream.at("/b")) == 20
    assert total(samples, "abrouter_requests_total", variant="b") == 0
    assert total(samples, "abrouter_upstream_duration_seconds_count", variant="b") == 0
    assert total(samples, "abrouter_exposures_total", variant="b") == 0
    report = client.get("/v1/experiments/exp/report", headers=AUTH).json()
    by_name = {v["name"]: (v["units"], v["requests"]) for v in report["variants"]}
    assert by_name == {"a": (20, 20), "b": (0, 0)}


# --- stopping it ----------------------------------------------------------------------------------------------------


def test_patching_shadow_to_null_stops_mirroring(gateway: GatewayFactory) -> None:
    upstream = RecordingUpstream()
    client = gateway([shadowed(100)], upstream=upstream.app(), settings={"admin_token": TOKEN})
    predict(client, "u1")
    patched = client.patch("/v1/experiments/exp", json={"shadow": None}, headers=AUTH)
    assert patched.status_code == 200, patched.text
    deadline = time.monotonic() + 5
    while predict(client, "u1").headers["x-config-version"] != "2":
        assert time.monotonic() < deadline, "the patch never came into force"
        time.sleep(0.02)
    settled(client)
    before = len(upstream.at("/b"))
    for i in range(10):
        predict(client, f"user-{i}")
    settled(client)
    assert before >= 1
    assert len(upstream.at("/b")) == before


async def test_shutdown_cancels_mirrors_in_flight_without_logging_errors(
    redis_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    await store_experiments_async(redis_url, [shadowed(100)])
    upstream = RecordingUpstream(b_delay_s=30.0)
    app = create_app(
        Settings(redis_url=redis_url, data_dir=tmp_path), transport=httpx.ASGITransport(app=upstream.app())
    )
    async with app.router.lifespan_context(app):
        mirror = app.state.services.shadow
        async with httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://gateway.test") as api:
            response = await api.post("/v1/experiments/exp/predict", json={}, headers={"X-User-Id": "u1"})
        assert response.status_code == 200
        assert mirror.in_flight == 1
        caplog.set_level(logging.INFO)
        started = time.monotonic()
    # The loop still runs (no loop teardown cancels tasks for us): the shutdown itself ended the mirror.
    assert time.monotonic() - started < 5
    assert mirror.in_flight == 0
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
