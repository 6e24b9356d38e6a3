"""No exposure is lost: prediction calls through a Redis outage, a spill file, SIGTERM and a restart.

The numbers come from the responses: a unit is enrolled when a call answered `X-Assignment:
hashed`, and its variant is the one that call named. After recovery the exposed units stored per
variant must be exactly those.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import random
import time
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import httpx2
import redis.asyncio

from router.app import create_app
from router.config.schema import Experiment
from router.services import Services
from router.settings import Settings
from router.store.embedded import RedisServer
from router.store.events import SPILL_PREFIX, SPILL_SUFFIX
from router.store.keys import Keys
from router.store.stats import StatsStore
from tests.e2e.conftest import echo_upstream, experiment, store_experiments_async, write_config
from tests.fixtures.servers import ServerProcess, model_server
from tests.fixtures.servers import gateway as gateway_process

CALLS, UNITS = 5000, 2000
OUTAGE_S = 10.0


def call_plan(seed: int) -> list[str]:
    """5 000 calls from 2 000 units in a random order, so first calls happen before, during and after the outage."""
    units = [f"user-{i}" for i in range(UNITS)]
    calls = [units[i % UNITS] for i in range(CALLS)]
    random.Random(seed).shuffle(calls)
    return calls


class Tally:
    """What the responses said: every status, and the variant of each enrolled unit."""

    def __init__(self) -> None:
        self.statuses: dict[int, int] = defaultdict(int)
        self.enrolled: dict[str, str] = {}

    def add(self, unit: str, status: int, variant: str | None, reason: str | None) -> None:
        self.statuses[status] += 1
        if reason == "hashed" and variant is not None:
            assert self.enrolled.setdefault(unit, variant) == variant, f"{unit} changed variant"

    def units_per_variant(self) -> dict[str, int]:
        counts: dict[str, int] = defaultdict(int)
        for variant in self.enrolled.values():
            counts[variant] += 1
        return dict(counts)


async def stored_units(redis_url: str, name: str) -> dict[str, int]:
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        stats = await StatsStore(client, keys=Keys(), stream_maxlen=1).read(name)
    finally:
        await client.aclose()
    return {variant: v.units for variant, v in stats.variants.items() if v.units}


async def stored_requests(redis_url: str, name: str) -> int:
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        stats = await StatsStore(client, keys=Keys(), stream_maxlen=1).read(name)
    finally:
        await client.aclose()
    return sum(v.requests for v in stats.variants.values())


async def test_calls_through_a_ten_second_redis_outage_all_succeed_and_every_exposure_is_stored(
    fresh_redis_server: RedisServer, tmp_path: Path
) -> None:
    durable = experiment("durable", coverage=0.8)  # a fifth of the units are not enrolled: not exposures
    await store_experiments_async(fresh_redis_server.url, [durable])
    settings = Settings(redis_url=fresh_redis_server.url, data_dir=tmp_path / "gateway", redis_timeout_s=0.2)
    app = create_app(settings, transport=httpx.ASGITransport(app=echo_upstream()))
    plan, tally = call_plan(seed=1), Tally()
    # one event loop, no thread hop per call: the gateway's background writer runs between the calls
    async with (
        app.router.lifespan_context(app),
        httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://gateway.test") as client,
    ):
        services: Services = app.state.services

        async def run(units: Sequence[str]) -> None:
            for start in range(0, len(units), 25):
                batch = units[start : start + 25]
                answers = await asyncio.gather(
                    *(client.post("/v1/experiments/durable/predict", json={}, headers={"X-User-Id": u}) for u in batch)
                )
                for unit, response in zip(batch, answers, strict=True):
                    tally.add(
                        unit,
                        response.status_code,
                        response.headers.get("x-variant"),
                        response.headers.get("x-assignment"),
                    )

        await run(plan[:2000])
        await asyncio.to_thread(fresh_redis_server.stop)
        outage_ends = time.monotonic() + OUTAGE_S
        await run(plan[2000:3500])
        assert services.events.pending > 0  # the outage is real: events are waiting
        await asyncio.sleep(max(0.0, outage_ends - time.monotonic()))
        await asyncio.to_thread(fresh_redis_server.start)
        await run(plan[3500:])
        assert await services.events.drain(20.0)
        assert dict(tally.statuses) == {200: CALLS}
        assert await stored_units(fresh_redis_server.url, "durable") == tally.units_per_variant()
        assert await stored_requests(fresh_redis_server.url, "durable") == CALLS
        assert services.events.dropped == 0
        assert services.events.store_errors["events"] > 0


def remote_experiment(upstream_url: str) -> Experiment:
    return Experiment.model_validate(
        {
            "name": "durable",
            "control": "current",
            "coverage": 0.8,
            "variants": [
                {"name": "current", "weight": 50, "url": f"{upstream_url}/predict"},
                {"name": "candidate", "weight": 50, "url": f"{upstream_url}/predict"},
            ],
        }
    )


def run_calls(base_url: str, units: Sequence[str], tally: Tally, *, connections: int = 8) -> None:
    """The calls in `units` over `connections` keep-alive connections (http.client: little client CPU)."""
    address = urlsplit(base_url)
    body = json.dumps({"instances": [[12.0, 70.5, 1.0, 0.1]]})
    chunks = [units[i::connections] for i in range(connections)]

    def call_all(chunk: Sequence[str]) -> list[tuple[str, int, str | None, str | None]]:
        answers = []
        connection = http.client.HTTPConnection(address.hostname or "127.0.0.1", address.port, timeout=10)
        try:
            for unit in chunk:
                headers = {"X-User-Id": unit, "Content-Type": "application/json"}
                connection.request("POST", "/v1/experiments/durable/predict", body=body, headers=headers)
                response = connection.getresponse()
                response.read()
                answers.append(
                    (unit, response.status, response.getheader("x-variant"), response.getheader("x-assignment"))
                )
        finally:
            connection.close()
        return answers

    with ThreadPoolExecutor(connections) as pool:
        for answers in pool.map(call_all, chunks):
            for answer in answers:
                tally.add(*answer)


def test_events_spilled_to_disk_survive_sigterm_and_are_replayed_by_the_next_gateway(
    tmp_path: Path, fresh_redis_server: RedisServer, started: list[ServerProcess]
) -> None:
    upstream = model_server(tmp_path)
    started.append(upstream.start())
    config = write_config(tmp_path / "durable.json", [remote_experiment(upstream.url)])
    env = {
        "ABROUTER_EVENTS_BUFFER_SIZE": "50",  # so small that the outage's events go to the spill file
        "ABROUTER_EVENTS_SHUTDOWN_TIMEOUT_S": "0.5",
        "ABROUTER_REDIS_TIMEOUT_S": "0.2",
    }
    first = gateway_process(tmp_path, redis_url=fresh_redis_server.url, config=config, env=env)
    started.append(first.start())
    plan, tally = call_plan(seed=2), Tally()

    run_calls(first.url, plan[:2000], tally)
    fresh_redis_server.stop()
    run_calls(first.url, plan[2000:3500], tally)
    assert first.stop() == 0  # SIGTERM: the queue cannot reach Redis, so it is spilled
    spill_dir = tmp_path / "data" / "spill"
    spilled = list(spill_dir.glob(f"{SPILL_PREFIX}*{SPILL_SUFFIX}"))
    assert sum(len(path.read_bytes().splitlines()) for path in spilled) > 100, "the outage's events were not spilled"

    fresh_redis_server.start()
    second = gateway_process(tmp_path, redis_url=fresh_redis_server.url, config=config, env=env)
    started.append(second.start())
    run_calls(second.url, plan[3500:], tally)
    assert dict(tally.statuses) == {200: CALLS}
    deadline = time.monotonic() + 20
    expected = tally.units_per_variant()
    while asyncio.run(stored_units(fresh_redis_server.url, "durable")) != expected:
        assert time.monotonic() < deadline, "the stored exposures never matched the responses"
        time.sleep(0.2)
    assert not any(path.exists() for path in spilled)  # replayed, then deleted
    assert second.stop() == 0
    assert list(spill_dir.glob(f"{SPILL_PREFIX}*{SPILL_SUFFIX}")) == []  # a clean stop leaves no file
    assert asyncio.run(stored_requests(fresh_redis_server.url, "durable")) == CALLS
