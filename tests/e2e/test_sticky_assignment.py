"""`sticky: true` through the app: a unit keeps its first variant across weight changes and replicas."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis.asyncio
from starlette.testclient import TestClient

from router.config.schema import Experiment
from router.services import Services
from router.store.configs import ConfigStore
from router.store.embedded import RedisServer
from router.store.keys import Keys
from tests.e2e.conftest import UPSTREAM, GatewayFactory, experiment

UNITS = [f"u{i}" for i in range(30)]


def all_to(variant: str, *, sticky: bool) -> Experiment:
    return experiment(
        "sticky",
        sticky=sticky,
        variants=[
            {"name": "a", "weight": 100 if variant == "a" else 0, "url": f"{UPSTREAM}/a"},
            {"name": "b", "weight": 100 if variant == "b" else 0, "url": f"{UPSTREAM}/b"},
        ],
    )


def served(client: TestClient, unit: str) -> tuple[str, str]:
    response = client.post("/v1/experiments/sticky/predict", json={}, headers={"X-User-Id": unit})
    assert response.status_code == 200
    return response.headers["x-variant"], response.headers["x-assignment"]


def drain(client: TestClient) -> None:
    services: Services = client.app.state.services  # type: ignore[attr-defined]
    assert client.portal is not None
    assert client.portal.call(services.events.drain, 10.0)


async def replace(redis_url: str, new: Experiment) -> None:
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        store = ConfigStore(client, keys=Keys())
        await store.put(new, actor="test", expected_version=(await store.get(new.name)).version)
    finally:
        await client.aclose()


@pytest.mark.parametrize(
    ("sticky", "expected"),
    [
        pytest.param(True, ("a", "sticky"), id="sticky-keeps-the-first-variant"),
        pytest.param(False, ("b", "hashed"), id="not-sticky-follows-the-weights"),
    ],
)
def test_after_a_weight_change_a_new_replica_serves_sticky_units_their_first_variant(
    gateway: GatewayFactory, redis_url: str, sticky: bool, expected: tuple[str, str]
) -> None:
    first = gateway([all_to("a", sticky=sticky)])
    assert {served(first, unit) for unit in UNITS} == {("a", "hashed")}
    drain(first)
    asyncio.run(replace(redis_url, all_to("b", sticky=sticky)))
    later = gateway([])  # a fresh process: nothing cached, Redis alone remembers
    assert {served(later, unit) for unit in UNITS} == {expected}
    assert served(later, "newcomer") == ("b", "hashed")


def test_the_replica_that_assigned_a_unit_keeps_it_sticky_before_redis_has_the_exposure(
    gateway: GatewayFactory, redis_url: str
) -> None:
    client = gateway([all_to("a", sticky=True)], settings={"events_flush_interval_s": 30})
    assert served(client, "u1") == ("a", "hashed")
    asyncio.run(replace(redis_url, all_to("b", sticky=True)))
    deadline = time.monotonic() + 5
    while client.post("/v1/experiments/sticky/predict", json={}).headers["x-config-version"] != "2":
        assert time.monotonic() < deadline, "the new version never reached the replica"
        time.sleep(0.05)
    assert served(client, "u1") == ("a", "sticky")


def test_with_redis_down_a_sticky_experiment_is_served_by_the_hash_without_delay(
    gateway: GatewayFactory, fresh_redis_server: RedisServer
) -> None:
    client = gateway([all_to("b", sticky=True)], redis_url=fresh_redis_server.url, settings={"redis_timeout_s": 0.2})
    fresh_redis_server.stop()
    started = time.perf_counter()
    answers = [served(client, unit) for unit in UNITS]
    assert set(answers) == {("b", "hashed")}
    assert time.perf_counter() - started < 2.0
