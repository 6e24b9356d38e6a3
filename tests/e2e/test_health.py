"""Health, readiness, OpenAPI and the JSON shape of routing errors."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis.asyncio as redis
from starlette.routing import Route

from router.store.configs import ConfigStore
from router.store.embedded import RedisServer
from router.store.keys import Keys
from tests.e2e.conftest import GatewayFactory, experiment


def test_healthz_answers_while_the_process_runs(gateway: GatewayFactory) -> None:
    client = gateway([experiment()])
    assert client.get("/healthz").json() == {"status": "ok"}


def test_readyz_is_200_with_the_versions_in_force_when_redis_answers(gateway: GatewayFactory) -> None:
    client = gateway([experiment("one"), experiment("two")])
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json()["experiments"] == {"one": 1, "two": 1}


def test_without_redis_the_last_config_keeps_serving_and_readyz_says_so(
    gateway: GatewayFactory, fresh_redis_server: RedisServer
) -> None:
    client = gateway([experiment()], redis_url=fresh_redis_server.url, settings={"redis_timeout_s": 0.2})
    fresh_redis_server.stop()
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert any("redis does not answer" in reason for reason in ready.json()["reasons"])
    assert "serving the last config loaded" in ready.json()["reasons"]
    response = client.post("/v1/experiments/exp/predict", json={}, headers={"X-User-Id": "u1"})
    assert (response.status_code, response.headers["x-config-version"]) == (200, "1")


def test_a_new_version_in_the_store_is_served_within_the_refresh_interval(
    gateway: GatewayFactory, redis_url: str
) -> None:
    client = gateway([experiment(force={"u": "a"})], settings={"config_refresh_s": 0.2})

    async def move_unit_to_b() -> None:
        connection = redis.Redis.from_url(redis_url)
        store = ConfigStore(connection, keys=Keys())
        await store.put(experiment(force={"u": "b"}), actor="test", expected_version=1)
        await connection.aclose()

    asyncio.run(move_unit_to_b())
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        response = client.post("/v1/experiments/exp/predict", json={}, headers={"X-User-Id": "u"})
        if response.headers["x-config-version"] == "2":
            break
        time.sleep(0.05)
    assert (response.headers["x-config-version"], response.headers["x-variant"]) == ("2", "b")


def test_the_openapi_document_describes_every_route(gateway: GatewayFactory) -> None:
    client = gateway([experiment()])
    document = client.get("/openapi.json").json()
    assert document["openapi"].startswith("3.")
    routes = [route for route in client.app.routes if isinstance(route, Route)]  # type: ignore[attr-defined]
    missing = [
        f"{method} {route.path}"
        for route in routes
        for method in (route.methods or set()) - {"HEAD"}
        if method.lower() not in document["paths"].get(route.path, {})
    ]
    assert missing == []
    assert "Experiment" in document["components"]["schemas"]


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        pytest.param("GET", "/no/such/route", 404, "not_found", id="unknown-route"),
        pytest.param("GET", "/v1/experiments/exp/predict", 405, "method_not_allowed", id="wrong-method"),
    ],
)
def test_routing_errors_use_the_json_error_shape(
    gateway: GatewayFactory, method: str, path: str, status: int, code: str
) -> None:
    client = gateway([experiment()])
    response = client.request(method, path)
    assert response.status_code == status
    assert response.json()["error"]["code"] == code
