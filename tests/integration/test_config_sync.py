"""How a gateway process keeps its config current against a real Redis: pub/sub, the backstop, outages.

Each test opens the process's real services (`open_services`) and edits the store through a
second client, as another replica would.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis.asyncio

from router.config.schema import Experiment
from router.errors import UnreadableConfig
from router.services import Services, open_services
from router.settings import Settings
from router.store.configs import ConfigStore
from router.store.embedded import RedisServer
from router.store.keys import Keys


def experiment(candidate: float = 10) -> Experiment:
    return Experiment.model_validate(
        {
            "name": "churn",
            "control": "current",
            "variants": [
                {"name": "current", "weight": 100 - candidate, "url": "http://127.0.0.1:9/a"},
                {"name": "candidate", "weight": candidate, "url": "http://127.0.0.1:9/b"},
            ],
        }
    )


async def eventually(check: Callable[[], bool], *, within_s: float) -> float:
    """Seconds until `check()` holds; fails after `within_s`."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < within_s, f"not within {within_s} s"
        await asyncio.sleep(0.01)
    return time.monotonic() - started


def settings(url: str, **fields: Any) -> Settings:
    return Settings(redis_url=url, **fields)


def stale_gauge(services: Services) -> float | None:
    return services.metrics.registry.get_sample_value("abrouter_config_stale")


def version_in_force(services: Services) -> int:
    return services.live.get("churn").version


async def test_an_edit_by_another_replica_is_in_force_within_a_second_without_waiting_for_the_poll(
    redis_client: redis.asyncio.Redis, redis_url: str
) -> None:
    editor = ConfigStore(redis_client, keys=Keys())
    await editor.put(experiment(), actor="alice", expected_version=None)
    # a poll every 60 s cannot explain a change seen within a second: the notice did it
    async with open_services(settings(redis_url, config_refresh_s=60)) as services:
        assert version_in_force(services) == 1
        await asyncio.sleep(0.2)  # let the sync task subscribe
        await editor.put(experiment(25), actor="alice", expected_version=1)
        elapsed = await eventually(lambda: version_in_force(services) == 2, within_s=1.0)
    assert elapsed < 1.0


async def test_a_change_whose_notice_was_missed_is_picked_up_by_the_periodic_check(
    redis_client: redis.asyncio.Redis, redis_url: str
) -> None:
    editor = ConfigStore(redis_client, keys=Keys())
    await editor.put(experiment(), actor="alice", expected_version=None)
    async with open_services(settings(redis_url, config_refresh_s=0.2)) as services:
        # written behind the store's back, so no notice is ever published
        await redis_client.hset(
            Keys().config("churn"), mapping={"version": "2", "config": experiment(25).model_dump_json()}
        )
        await eventually(lambda: version_in_force(services) == 2, within_s=2.0)
        assert services.live.get("churn").experiment.weights == (75, 25)


async def test_an_archived_experiment_stops_being_served_on_every_replica(
    redis_client: redis.asyncio.Redis, redis_url: str
) -> None:
    editor = ConfigStore(redis_client, keys=Keys())
    await editor.put(experiment(), actor="alice", expected_version=None)
    async with open_services(settings(redis_url, config_refresh_s=60)) as services:
        await asyncio.sleep(0.2)
        await editor.archive("churn", actor="alice")
        await eventually(lambda: services.live.names() == [], within_s=1.0)


async def test_a_replica_that_loses_redis_keeps_its_config_says_it_is_stale_and_recovers(
    fresh_redis_server: RedisServer,
) -> None:
    async with redis.asyncio.Redis.from_url(fresh_redis_server.url) as client:
        await ConfigStore(client, keys=Keys()).put(experiment(), actor="alice", expected_version=None)
    async with open_services(settings(fresh_redis_server.url, config_refresh_s=0.2)) as services:
        assert not services.live.stale
        fresh_redis_server.stop()
        await eventually(lambda: services.live.stale, within_s=10.0)
        assert version_in_force(services) == 1
        assert stale_gauge(services) == 1
        fresh_redis_server.start()  # same port, same data: the version is still 1
        async with redis.asyncio.Redis.from_url(fresh_redis_server.url) as client:
            await ConfigStore(client, keys=Keys()).put(experiment(25), actor="alice", expected_version=1)
        await eventually(lambda: not services.live.stale and version_in_force(services) == 2, within_s=10.0)
        assert stale_gauge(services) == 0


async def test_a_config_written_by_a_newer_release_is_rejected_alone_and_updates_go_on(
    redis_client: redis.asyncio.Redis, redis_url: str
) -> None:
    """During a rolling upgrade a newer replica may store fields this release rejects (unknown keys)."""
    editor = ConfigStore(redis_client, keys=Keys())
    await editor.put(experiment(), actor="alice", expected_version=None)
    await editor.put(experiment().model_copy(update={"name": "beta"}), actor="alice", expected_version=None)
    newer = {**experiment().model_copy(update={"name": "beta"}).model_dump(mode="json"), "owner": "team-b"}
    async with open_services(settings(redis_url, config_refresh_s=0.2)) as services:
        await asyncio.sleep(0.2)
        await redis_client.hset(Keys().config("beta"), mapping={"version": "2", "config": json.dumps(newer)})
        await eventually(lambda: "beta" in services.live.rejected, within_s=2.0)
        await editor.put(experiment(25), actor="alice", expected_version=1)

        await eventually(lambda: version_in_force(services) == 2, within_s=2.0)
        assert services.live.get("beta").version == 1  # the version it could read stays in force
        assert (
            "version 2: the stored config of experiment 'beta' (version 2) cannot be read"
            in (services.live.rejected["beta"])
        )
        assert "owner" in services.live.rejected["beta"]
        with pytest.raises(UnreadableConfig) as unreadable:
            await editor.get("beta")
        assert unreadable.value.status_code == 503
        problems = ["owner: is not a known field"]
        assert unreadable.value.details == [{"experiment": "beta", "version": 2, "problems": problems}]


async def test_during_an_upgrade_a_starting_replica_serves_what_it_can_read_and_lists_the_rest(
    redis_client: redis.asyncio.Redis, redis_url: str
) -> None:
    """A replica of the older release (re)started while a newer one wrote beta: it neither crashes nor drops beta."""
    editor = ConfigStore(redis_client, keys=Keys())
    await editor.put(experiment(), actor="alice", expected_version=None)
    beta = experiment().model_copy(update={"name": "beta"})
    await editor.put(beta, actor="alice", expected_version=None)
    newer = {**beta.model_dump(mode="json"), "owner": "team-b"}
    await redis_client.hset(Keys().config("beta"), mapping={"version": "2", "config": json.dumps(newer)})

    assert await editor.create_if_absent(beta, actor="serve --config") is None  # exists: no start-up failure
    assert [stored.name for stored in await editor.list()] == ["churn"]  # listed without it, not a 503
    async with open_services(settings(redis_url, config_refresh_s=0.2)) as services:
        assert services.live.get("beta").version == 1  # its newest version this release can read
        assert "cannot be read" in services.live.rejected["beta"]
        # archived by the newer release (this one cannot read the config to archive it)
        await redis_client.hset(Keys().config("beta"), mapping={"version": "3", "archived": "1"})
        await eventually(lambda: "beta" not in services.live.names(), within_s=2.0)
        assert "beta" not in services.live.rejected  # no warning left about an archived experiment
