"""ABROUTER_EVENTS_ENABLED and ABROUTER_METRICS_ENABLED: off means nothing recorded, on means recorded.

Each gateway here is shut down before Redis is read: shutdown flushes every queued event, so an
"off" gateway that had queued anything would be caught.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import redis
from prometheus_client import CollectorRegistry
from starlette.testclient import TestClient

from router.app import create_app
from router.services import Services
from router.settings import Settings
from router.store.keys import Keys
from tests.e2e.conftest import GatewayFactory, echo_upstream, experiment, store_experiments

CALLS = 20
METRICS = [{"name": "converted", "kind": "binomial"}]


def serve_and_stop(redis_url: str, tmp_path: Path, name: str, **settings: object) -> CollectorRegistry:
    """A gateway that answers CALLS prediction calls of new units, then shuts down; the app's metric registry."""
    store_experiments(redis_url, [experiment(name)])
    registry = CollectorRegistry()
    values = {"redis_url": redis_url, "data_dir": tmp_path / name, **settings}
    app = create_app(Settings(**values), registry=registry, transport=httpx.ASGITransport(app=echo_upstream()))
    with TestClient(app) as client:
        for i in range(CALLS):
            response = client.post(f"/v1/experiments/{name}/predict", json={}, headers={"X-User-Id": f"user-{i}"})
            assert response.status_code == 200
    return registry


def written(redis_url: str, name: str) -> int:
    """How many of the experiment's event keys (stats, first exposures, event stream) exist in Redis."""
    keys = Keys()
    with redis.Redis.from_url(redis_url) as client:
        return int(client.exists(keys.stats(name), keys.exposed(name), keys.events(name)))


def test_with_event_logging_on_prediction_calls_are_written_to_redis(redis_url: str, tmp_path: Path) -> None:
    serve_and_stop(redis_url, tmp_path, "events-on", events_enabled=True)
    assert written(redis_url, "events-on") == 3
    with redis.Redis.from_url(redis_url) as client:
        assert client.hlen(Keys().exposed("events-on")) == CALLS


def test_with_event_logging_off_prediction_calls_write_nothing_to_redis(redis_url: str, tmp_path: Path) -> None:
    serve_and_stop(redis_url, tmp_path, "events-off", events_enabled=False)
    assert written(redis_url, "events-off") == 0


def test_with_event_logging_off_outcomes_are_refused_with_503(gateway: GatewayFactory) -> None:
    client = gateway([experiment("no-outcomes", metrics=METRICS)], settings={"events_enabled": False})
    response = client.post(
        "/v1/experiments/no-outcomes/outcomes", json={"unit": "u1", "metric": "converted", "value": 1}
    )
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "feature_disabled"
    assert "ABROUTER_EVENTS_ENABLED" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("enabled", "counted"), [pytest.param(True, float(CALLS), id="on"), pytest.param(False, None, id="off")]
)
def test_prediction_calls_are_counted_in_metrics_only_when_metrics_are_on(
    redis_url: str, tmp_path: Path, enabled: bool, counted: float | None
) -> None:
    name = f"metrics-{'on' if enabled else 'off'}"
    registry = serve_and_stop(redis_url, tmp_path, name, metrics_enabled=enabled)
    total = sum(
        sample.value
        for family in registry.collect()
        if family.name == "abrouter_requests"
        for sample in family.samples
        if sample.name == "abrouter_requests_total" and sample.labels["experiment"] == name
    )
    assert (total if total else None) == counted


def test_with_metrics_off_the_metrics_endpoint_answers_503_and_nothing_is_recorded(gateway: GatewayFactory) -> None:
    client = gateway([experiment("unmeasured")], settings={"metrics_enabled": False})
    assert client.post("/v1/experiments/unmeasured/predict", json={}, headers={"X-User-Id": "u1"}).status_code == 200
    response = client.get("/metrics")
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "feature_disabled"
    services: Services = client.app.state.services  # type: ignore[attr-defined]
    recorded = [sample for family in services.metrics.registry.collect() for sample in family.samples if sample.value]
    assert recorded == []
