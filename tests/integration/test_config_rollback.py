"""Rollbacks and change notices of the config store against a real Redis."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
import redis.asyncio

from router.config.schema import Experiment
from router.errors import UnknownExperiment, UnknownVersion, VersionConflict
from router.store.configs import ChangeNotice, ConfigStore
from router.store.keys import Keys

NOW = datetime(2026, 11, 27, 9, 0, 0, tzinfo=UTC)


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


@pytest.fixture
async def store(redis_client: redis.asyncio.Redis) -> ConfigStore:
    """A store holding versions 1 (candidate 10), 2 (25) and 3 (50), written by alice, bob and carol."""
    store = ConfigStore(redis_client, keys=Keys(), clock=lambda: NOW)
    await store.put(experiment(10), actor="alice", expected_version=None)
    await store.put(experiment(25), actor="bob", expected_version=1)
    await store.put(experiment(50), actor="carol", expected_version=2)
    return store


async def test_a_rollback_writes_the_previous_config_as_a_new_version(store: ConfigStore) -> None:
    restored = await store.rollback("churn", actor="dave")
    assert (restored.version, restored.updated_by, restored.experiment) == (4, "dave", experiment(25))
    assert restored.change == "rolled back to version 2; weights current 50->75, candidate 50->25"
    assert await store.get("churn") == restored


async def test_a_rollback_to_a_named_version_restores_that_one(store: ConfigStore) -> None:
    restored = await store.rollback("churn", actor="dave", to_version=1)
    assert (restored.version, restored.experiment) == (4, experiment(10))
    assert [s.version for s in await store.history("churn")] == [1, 2, 3, 4]


async def test_a_rollback_to_the_config_in_force_is_a_no_op(store: ConfigStore) -> None:
    current = await store.get("churn")
    assert await store.rollback("churn", actor="dave", to_version=3) == current


@pytest.mark.parametrize("version", [pytest.param(0, id="zero"), pytest.param(9, id="future")])
async def test_a_rollback_to_a_version_that_never_was_raises_unknown_version(store: ConfigStore, version: int) -> None:
    with pytest.raises(UnknownVersion, match=rf"has no version {version} \(its versions are 1 to 3\)") as unknown:
        await store.rollback("churn", actor="dave", to_version=version)
    assert unknown.value.status_code == 422


async def test_a_rollback_of_a_first_version_has_nothing_to_restore(redis_client: redis.asyncio.Redis) -> None:
    store = ConfigStore(redis_client, keys=Keys())
    await store.put(experiment(), actor="alice", expected_version=None)
    with pytest.raises(UnknownVersion, match=r"has only version 1: there is no earlier version to roll back to"):
        await store.rollback("churn", actor="dave")


async def test_a_rollback_with_a_stale_expected_version_raises_version_conflict(store: ConfigStore) -> None:
    with pytest.raises(VersionConflict):
        await store.rollback("churn", actor="dave", expected_version=2)


async def test_a_rollback_of_an_archived_experiment_raises_unknown_experiment(store: ConfigStore) -> None:
    await store.archive("churn", actor="dave")
    with pytest.raises(UnknownExperiment):
        await store.rollback("churn", actor="dave")


async def test_a_note_heads_the_change_summary(store: ConfigStore) -> None:
    stored = await store.put(experiment(60), actor="dave", expected_version=3, note="canary step")
    assert stored.change == "canary step; weights current 50->40, candidate 50->60"


async def test_a_subscriber_receives_a_notice_per_write(store: ConfigStore) -> None:
    async with store.subscribe() as feed:
        await store.put(experiment(60), actor="dave", expected_version=3)
        notice = None
        async with asyncio.timeout(5):
            while notice is None:
                notice = await feed.next(0.5)
    assert notice == ChangeNotice(name="churn", version=4, archived=False)


async def test_a_subscriber_skips_foreign_messages_on_the_channel(
    store: ConfigStore, redis_client: redis.asyncio.Redis
) -> None:
    async with store.subscribe() as feed:
        await redis_client.publish(Keys().config_channel(), b"not json")
        await redis_client.publish(Keys().config_channel(), b'{"name": "churn"}')
        await store.archive("churn", actor="dave")
        notices = []
        async with asyncio.timeout(5):
            while not notices or notices[-1] is None:
                notices.append(await feed.next(0.5))
    assert notices[-1] == ChangeNotice(name="churn", version=4, archived=True)
