"""Three real gateway processes (`abrouter serve`) sharing one Redis, as replicas behind a load balancer.

The trio, its model server and its Redis (private to this module, so stopping it disturbs no other
test) start once per module: starting three gateways costs far more than the checks. Each test
first waits until every replica is connected and serves the version in force, whatever ran before.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
import pytest

from router.config.schema import Experiment
from router.store.embedded import RedisServer
from tests.e2e.conftest import store_experiments
from tests.fixtures.redis import start_server
from tests.fixtures.servers import ServerProcess, gateway, model_server

TOKEN = "tok-replicas"
ROW = [12.0, 70.5, 1.0, 0.1]
# A version check every 30 s cannot explain a change seen within a second: pub/sub must do it.
CHECK_INTERVAL_S = 30


@dataclass
class Replicas:
    redis: RedisServer
    servers: list[ServerProcess]


def canary(upstream: str) -> Experiment:
    return Experiment.model_validate(
        {
            "name": "churn",
            "control": "current",
            "variants": [
                {"name": "current", "weight": 90, "url": f"{upstream}/predict", "timeout_s": 2},
                {"name": "candidate", "weight": 10, "url": f"{upstream}/predict", "timeout_s": 2},
            ],
        }
    )


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicas]:
    home = tmp_path_factory.mktemp("replicas")
    redis = start_server(home / "redis")
    processes: list[ServerProcess] = []
    try:
        upstream = model_server(home)
        processes.append(upstream)
        servers = []
        for i in range(3):
            (home / f"replica-{i}").mkdir()
            env = {"ABROUTER_ADMIN_TOKEN": TOKEN, "ABROUTER_CONFIG_REFRESH_S": str(CHECK_INTERVAL_S)}
            servers.append(gateway(home / f"replica-{i}", redis_url=redis.url, env=env))
        processes += servers
        store_experiments(redis.url, [canary(upstream.url)])
        with ThreadPoolExecutor(len(processes)) as pool:
            list(pool.map(lambda process: process.start(timeout_s=60), processes))
        yield Replicas(redis=redis, servers=servers)
    finally:
        for process in processes:
            process.kill()
        redis.stop()


@pytest.fixture
def trio(replicas: Replicas) -> list[ServerProcess]:
    """The three replicas, each connected to the running Redis and serving the version in force."""
    if not replicas.redis.running:
        replicas.redis.start()
    deadline = time.monotonic() + 15
    for server in replicas.servers:
        while httpx.get(f"{server.url}/readyz", timeout=5).status_code != 200:
            assert time.monotonic() < deadline, f"{server.url} not ready again"
            time.sleep(0.05)
    seconds_until_version(replicas.servers, current_version(replicas.servers[0]), limit_s=5)
    return replicas.servers


def predict(server: ServerProcess, unit: str = "u1") -> httpx.Response:
    return httpx.post(
        f"{server.url}/v1/experiments/churn/predict", json={"instances": [ROW]}, headers={"X-User-Id": unit}, timeout=5
    )


def admin(method: str, server: ServerProcess, path: str = "", body: object = None) -> httpx.Response:
    return httpx.request(
        method,
        f"{server.url}/v1/experiments/churn{path}",
        json=body,
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=5,
    )


def current_version(server: ServerProcess) -> int:
    version: int = admin("GET", server).json()["version"]
    return version


def seconds_until_version(servers: Sequence[ServerProcess], version: int, *, limit_s: float) -> float:
    """Seconds until every server answers with `version` in X-Config-Version; fails after `limit_s`."""
    started = time.monotonic()
    waiting = list(servers)
    while waiting:
        waiting = [s for s in waiting if predict(s).headers.get("x-config-version") != str(version)]
        assert not waiting or time.monotonic() - started < limit_s, f"{[s.url for s in waiting]} not at {version}"
        time.sleep(0.02)
    return time.monotonic() - started


def test_a_change_through_one_replica_is_served_by_the_other_two_within_a_second(trio: list[ServerProcess]) -> None:
    first, *others = trio
    before = current_version(first)
    canary_weight = 25 if admin("GET", first).json()["config"]["variants"][1]["weight"] != 25 else 30
    response = admin("PATCH", first, body={"weights": {"candidate": canary_weight}})
    assert response.status_code == 200
    assert response.json()["version"] == before + 1
    assert seconds_until_version(others, before + 1, limit_s=1.0) < 1.0


def test_replicas_keep_serving_the_last_config_when_redis_stops_and_say_so(
    replicas: Replicas, trio: list[ServerProcess]
) -> None:
    in_force = current_version(trio[0])
    replicas.redis.stop()
    for replica in trio:
        answers = [predict(replica, f"user-{i}") for i in range(20)]
        assert {(r.status_code, r.headers["x-config-version"]) for r in answers} == {(200, str(in_force))}
    deadline = time.monotonic() + 10
    for replica in trio:
        while (ready := httpx.get(f"{replica.url}/readyz", timeout=5)).json()["config_stale"] is not True:
            assert time.monotonic() < deadline, ready.text
            time.sleep(0.05)
        assert ready.status_code == 503
        assert "serving the last config loaded" in ready.json()["reasons"]
        assert ready.json()["experiments"] == {"churn": in_force}
        assert "abrouter_config_stale 1.0" in httpx.get(f"{replica.url}/metrics", timeout=5).text


def test_replicas_pick_up_changes_again_once_redis_is_back(replicas: Replicas, trio: list[ServerProcess]) -> None:
    replicas.redis.stop()
    for replica in trio:
        deadline = time.monotonic() + 10
        while httpx.get(f"{replica.url}/readyz", timeout=5).json()["config_stale"] is not True:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    replicas.redis.start()
    deadline = time.monotonic() + 10
    while admin("GET", trio[0]).status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    before = current_version(trio[0])
    assert admin("PATCH", trio[0], body={"coverage": 0.9 if before % 2 else 0.8}).status_code == 200
    # resubscribed within RECONNECT_S of Redis coming back, not after the 30 s check interval
    seconds_until_version(trio, before + 1, limit_s=3.0)


async def test_20_concurrent_patches_spread_over_the_replicas_with_one_if_match_let_exactly_one_win(
    trio: list[ServerProcess],
) -> None:
    before = current_version(trio[0])
    weight = admin("GET", trio[0]).json()["config"]["variants"][1]["weight"]
    headers = {"Authorization": f"Bearer {TOKEN}", "If-Match": f'"{before}"'}
    async with httpx.AsyncClient(timeout=10) as client:
        responses = await asyncio.gather(
            *(
                client.patch(
                    f"{trio[i % 3].url}/v1/experiments/churn",
                    json={"weights": {"candidate": weight + 1 + i}},
                    headers=headers,
                )
                for i in range(20)
            )
        )
    assert Counter(r.status_code for r in responses) == {200: 1, 412: 19}
    assert current_version(trio[0]) == before + 1
