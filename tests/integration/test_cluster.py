"""The gateway against a real 3-master Redis Cluster: configs, change notices, exposures and outcomes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from router.app import create_app
from router.config.schema import Experiment
from router.services import Services
from router.settings import Settings
from router.store.configs import ConfigStore
from router.store.keys import Keys
from router.store.stats import StatsStore
from router.store.sticky import StickyStore
from tests.fixtures.redis_cluster import RedisClusterNodes

# Three names whose hash tags fall on three different masters (slots 0-5460, 5461-10922, 10923-16383).
NAMES = ("alpha", "bravo", "echo")
METRICS = [{"name": "converted", "kind": "binomial"}, {"name": "revenue", "kind": "mean"}]


def experiment(name: str, **fields: Any) -> Experiment:
    base: dict[str, Any] = {
        "name": name,
        "control": "a",
        "variants": [
            {"name": "a", "weight": 50, "url": "http://upstream.test/a"},
            {"name": "b", "weight": 50, "url": "http://upstream.test/b"},
        ],
        "metrics": METRICS,
    }
    return Experiment.model_validate(base | fields)


@pytest.fixture
async def cluster(redis_cluster_url: str) -> AsyncIterator[RedisCluster]:
    client = RedisCluster.from_url(redis_cluster_url, socket_timeout=2)
    try:
        yield client
    finally:
        await client.aclose()


def test_the_test_experiments_live_on_three_different_masters(redis_cluster: RedisClusterNodes) -> None:
    slots = sorted(key_slot(Keys().config(name).encode()) for name in NAMES)
    assert slots[0] <= 5460 < slots[1] <= 10922 < slots[2]


def test_every_key_of_an_experiment_is_in_the_slot_of_its_name() -> None:
    keys = Keys("abr:")
    per_experiment = [keys.config, keys.history, keys.events, keys.exposed, keys.stats, keys.values, keys.writers]
    for name in NAMES:
        assert {key_slot(make(name).encode()) for make in per_experiment} == {key_slot(name.encode())}


async def test_the_config_store_creates_versions_lists_and_archives_on_a_cluster(cluster: RedisCluster) -> None:
    store = ConfigStore(cluster, keys=Keys())
    for name in NAMES:
        await store.put(experiment(name), actor="alice", expected_version=None)
    await store.put(experiment("bravo", coverage=0.5), actor="bob", expected_version=1)
    await store.archive("echo", actor="carol")
    assert await store.versions() == {"alpha": 1, "bravo": 2}
    assert [stored.name for stored in await store.list()] == ["alpha", "bravo"]
    assert [entry.version for entry in await store.history("echo")] == [1, 2]


async def test_a_change_notice_reaches_a_subscriber_on_a_cluster(cluster: RedisCluster) -> None:
    store = ConfigStore(cluster, keys=Keys())
    async with store.subscribe() as feed:
        await store.put(experiment("alpha"), actor="alice", expected_version=None)
        notice = None
        for _ in range(20):
            notice = await feed.next(0.25)
            if notice is not None:
                break
    assert notice is not None
    assert (notice.name, notice.version) == ("alpha", 1)


async def test_exposures_and_outcomes_flow_through_the_gateway_on_a_cluster(
    cluster: RedisCluster, redis_cluster_url: str, tmp_path: Path
) -> None:
    store = ConfigStore(cluster, keys=Keys())
    for name in NAMES:
        await store.put(experiment(name, sticky=name == "bravo"), actor="test", expected_version=None)
    upstream = httpx.ASGITransport(app=_ok_upstream())
    settings = Settings(redis_url=redis_cluster_url, redis_cluster=True, data_dir=tmp_path / "gateway")
    app = create_app(settings, transport=upstream)
    seen: dict[str, dict[str, str]] = {name: {} for name in NAMES}
    async with (
        app.router.lifespan_context(app),
        httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://gateway.test") as client,
    ):
        services: Services = app.state.services
        assert services.live.names() == list(NAMES)
        for name in NAMES:
            for i in range(120):
                unit = f"u{i % 60}"
                response = await client.post(f"/v1/experiments/{name}/predict", json={}, headers={"X-User-Id": unit})
                assert response.status_code == 200
                seen[name][unit] = response.headers["x-variant"]
            body = {"outcomes": [{"unit": f"u{i}", "metric": "revenue", "value": i / 2} for i in range(70)]}
            answer = await client.post(f"/v1/experiments/{name}/outcomes", json=body)
            assert answer.json() == {"accepted": 70, "unattributed": 10}
        assert await services.events.drain(10)
        assert services.events.dropped == 0

    stats = StatsStore(cluster, keys=Keys(), stream_maxlen=1000)
    for name in NAMES:
        stored = await stats.read(name)
        for variant in ("a", "b"):
            units = [unit for unit, v in seen[name].items() if v == variant]
            arm = stored.variant(variant)
            values = [int(unit[1:]) / 2 for unit in units]
            assert (arm.units, arm.requests) == (len(units), 2 * len(units))
            revenue = arm.metric("revenue")
            assert (revenue.sum, revenue.sum_squares) == (sum(values), sum(v * v for v in values))
        assert stored.unattributed == {"revenue": 10}


def _ok_upstream() -> Starlette:
    async def ok(request: Request) -> Response:
        return Response(b'{"predictions": [0]}', media_type="application/json")

    return Starlette(routes=[Route("/{variant}", ok, methods=["POST"])])


async def test_a_sticky_lookup_works_on_a_cluster(cluster: RedisCluster) -> None:
    await cluster.hset(Keys().exposed("bravo"), "u1", "b")
    sticky = StickyStore(cluster, keys=Keys(), timeout_s=1.0, cache_size=10)
    assert await sticky.lookup(experiment("bravo", sticky=True), "u1") == "b"
    assert await sticky.first_variants("bravo", ["u1", "u2"]) == {"u1": "b"}
