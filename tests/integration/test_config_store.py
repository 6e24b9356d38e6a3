"""The config store against a real Redis: versions, compare-and-set under races, history, archive, outages."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import key_slot

from router.config.schema import Experiment
from router.errors import StoreUnavailable, UnknownExperiment, VersionConflict
from router.store.configs import ConfigStore, StoredExperiment, describe_change
from router.store.embedded import RedisServer
from router.store.keys import Keys

NOW = datetime(2026, 11, 27, 9, 0, 0, tzinfo=UTC)


def experiment(name: str = "churn", **changes: Any) -> Experiment:
    """A valid two-arm experiment; `changes` override top-level fields, `weights` the variant weights."""
    current, candidate = changes.pop("weights", (90, 10))
    fields: dict[str, Any] = {
        "name": name,
        "control": "current",
        "variants": [
            {"name": "current", "weight": current, "url": "http://127.0.0.1:9001/predict"},
            {"name": "candidate", "weight": candidate, "url": "http://127.0.0.1:9002/predict"},
        ],
    }
    return Experiment.model_validate(fields | changes)


@pytest.fixture
def store(redis_client: redis.asyncio.Redis) -> ConfigStore:
    return ConfigStore(redis_client, keys=Keys(), clock=lambda: NOW)


@pytest.fixture
async def unreliable_client(fresh_redis_server: RedisServer) -> AsyncIterator[redis.asyncio.Redis]:
    """A client on a Redis the test may stop, failing fast instead of retrying for seconds."""
    client = redis.asyncio.Redis.from_url(
        fresh_redis_server.url, socket_timeout=0.5, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0)
    )
    try:
        yield client
    finally:
        await client.aclose()


async def test_creating_an_experiment_gives_version_1(store: ConfigStore) -> None:
    stored = await store.put(experiment(), actor="alice", expected_version=None)
    assert stored == StoredExperiment(
        experiment=experiment(), version=1, updated_at="2026-11-27T09:00:00Z", updated_by="alice", change="created"
    )


async def test_get_returns_the_stored_version(store: ConfigStore) -> None:
    created = await store.put(experiment(), actor="alice", expected_version=None)
    assert await store.get("churn") == created


async def test_replacing_with_the_current_version_gives_the_next_version(store: ConfigStore) -> None:
    await store.put(experiment(), actor="alice", expected_version=None)
    replaced = await store.put(experiment(weights=(75, 25)), actor="bob", expected_version=1)
    assert (replaced.version, replaced.updated_by) == (2, "bob")
    assert (await store.get("churn")).experiment.weights == (75, 25)


async def test_replacing_with_a_stale_version_raises_version_conflict_naming_both(store: ConfigStore) -> None:
    await store.put(experiment(), actor="alice", expected_version=None)
    await store.put(experiment(weights=(75, 25)), actor="bob", expected_version=1)
    with pytest.raises(VersionConflict, match=r"at version 2, not the expected version 1") as conflict:
        await store.put(experiment(weights=(50, 50)), actor="carol", expected_version=1)
    assert conflict.value.status_code == 412
    assert (await store.get("churn")).experiment.weights == (75, 25)


async def test_creating_an_existing_experiment_raises_version_conflict(store: ConfigStore) -> None:
    await store.put(experiment(), actor="alice", expected_version=None)
    with pytest.raises(VersionConflict, match=r"already exists at version 1"):
        await store.put(experiment(weights=(50, 50)), actor="bob", expected_version=None)


async def test_replacing_an_absent_experiment_raises_unknown_experiment(store: ConfigStore) -> None:
    with pytest.raises(UnknownExperiment, match=r"no experiment named 'churn'"):
        await store.put(experiment(), actor="alice", expected_version=1)


async def test_getting_an_absent_experiment_raises_unknown_experiment(store: ConfigStore) -> None:
    with pytest.raises(UnknownExperiment) as unknown:
        await store.get("nope")
    assert unknown.value.status_code == 404


async def test_an_identical_put_is_a_no_op(store: ConfigStore) -> None:
    created = await store.put(experiment(), actor="alice", expected_version=None)
    again = await store.put(experiment(), actor="bob", expected_version=1)
    assert again == created
    assert len(await store.history("churn")) == 1


async def test_concurrent_replaces_of_one_version_let_exactly_one_win(store: ConfigStore) -> None:
    await store.put(experiment(), actor="alice", expected_version=None)
    results = await asyncio.gather(
        *(
            store.put(experiment(weights=(90 - i, 10 + i)), actor=f"editor-{i}", expected_version=1)
            for i in range(1, 21)
        ),
        return_exceptions=True,
    )
    winners = [r for r in results if isinstance(r, StoredExperiment)]
    assert len(winners) == 1
    assert sum(isinstance(r, VersionConflict) for r in results) == 19
    assert winners[0].version == 2
    assert await store.get("churn") == winners[0]
    assert [s.version for s in await store.history("churn")] == [1, 2]


async def test_concurrent_creates_let_exactly_one_win(store: ConfigStore) -> None:
    results = await asyncio.gather(
        *(store.put(experiment(weights=(i, 1)), actor=f"editor-{i}", expected_version=None) for i in range(1, 21)),
        return_exceptions=True,
    )
    assert sum(isinstance(r, StoredExperiment) for r in results) == 1
    assert sum(isinstance(r, VersionConflict) for r in results) == 19
    assert len(await store.history("churn")) == 1


async def test_history_lists_every_version_with_its_actor_and_change(store: ConfigStore) -> None:
    await store.put(experiment(), actor="alice", expected_version=None)
    await store.put(experiment(weights=(75, 25)), actor="bob", expected_version=1)
    await store.put(experiment(weights=(75, 25), status="paused"), actor="carol", expected_version=2)
    history = await store.history("churn")
    assert [(s.version, s.updated_by, s.change) for s in history] == [
        (1, "alice", "created"),
        (2, "bob", "weights current 90->75, candidate 10->25"),
        (3, "carol", "status running->paused"),
    ]
    assert history[1].experiment == experiment(weights=(75, 25))


async def test_history_of_an_absent_experiment_raises_unknown_experiment(store: ConfigStore) -> None:
    with pytest.raises(UnknownExperiment):
        await store.history("nope")


@pytest.mark.parametrize(
    ("after", "summary"),
    [
        pytest.param(experiment(weights=(75, 25)), "weights current 90->75, candidate 10->25", id="weights"),
        pytest.param(experiment(weights=(90, 12.5)), "weights candidate 10->12.5", id="one-fractional-weight"),
        pytest.param(experiment(status="paused"), "status running->paused", id="status"),
        pytest.param(
            experiment(status="concluded", winner="candidate"),
            "status running->concluded; winner none->candidate",
            id="concluded-with-winner",
        ),
        pytest.param(experiment(coverage=0.5), "coverage 1->0.5", id="coverage"),
        pytest.param(
            experiment(shadow={"variant": "candidate", "percent": 10}),
            'shadow none->{"variant":"candidate","percent":10.0}',
            id="shadow",
        ),
        pytest.param(experiment(description="x" * 100), "description changed", id="long-value"),
        pytest.param(
            experiment().model_copy(
                update={
                    "variants": [
                        experiment().variants[0],
                        experiment().variants[1].model_copy(update={"timeout_s": 2.0}),
                    ]
                }
            ),
            "variant candidate timeout_s 1->2",
            id="variant-field",
        ),
        pytest.param(
            experiment().model_copy(update={"variants": list(reversed(experiment().variants))}),
            "variants reordered",
            id="reordered",
        ),
        pytest.param(experiment(), "no change", id="nothing"),
    ],
)
def test_a_change_is_summarised_readably(after: Experiment, summary: str) -> None:
    assert describe_change(experiment(), after) == summary


def test_added_and_removed_variants_are_summarised() -> None:
    before = experiment()
    after = before.model_copy(
        update={
            "variants": [
                before.variants[0],
                before.variants[1].model_copy(update={"name": "challenger", "weight": 5.0}),
            ]
        }
    )
    assert describe_change(before, after) == "variant challenger added (weight 5); variant candidate removed"


async def test_an_archived_experiment_is_hidden_from_get_list_and_versions(store: ConfigStore) -> None:
    await store.put(experiment("churn"), actor="alice", expected_version=None)
    await store.put(experiment("upsell"), actor="alice", expected_version=None)
    archived = await store.archive("churn", actor="bob")
    assert (archived.version, archived.archived, archived.change) == (2, True, "archived")
    with pytest.raises(UnknownExperiment, match=r"'churn' is archived"):
        await store.get("churn")
    assert [s.name for s in await store.list()] == ["upsell"]
    assert await store.versions() == {"upsell": 1}


async def test_archive_keeps_the_history(store: ConfigStore) -> None:
    await store.put(experiment(), actor="alice", expected_version=None)
    await store.archive("churn", actor="bob", expected_version=1)
    history = await store.history("churn")
    assert [(s.version, s.archived, s.updated_by) for s in history] == [(1, False, "alice"), (2, True, "bob")]


async def test_archiving_a_stale_version_raises_version_conflict(store: ConfigStore) -> None:
    await store.put(experiment(), actor="alice", expected_version=None)
    await store.put(experiment(weights=(75, 25)), actor="bob", expected_version=1)
    with pytest.raises(VersionConflict):
        await store.archive("churn", actor="carol", expected_version=1)


async def test_archiving_an_absent_experiment_raises_unknown_experiment(store: ConfigStore) -> None:
    with pytest.raises(UnknownExperiment):
        await store.archive("nope", actor="alice")


async def test_creating_an_archived_experiment_again_continues_its_versions(store: ConfigStore) -> None:
    await store.put(experiment(), actor="alice", expected_version=None)
    await store.archive("churn", actor="bob")
    revived = await store.put(experiment(weights=(50, 50)), actor="carol", expected_version=None)
    assert (revived.version, revived.archived) == (3, False)
    assert revived.change == "re-created; weights current 90->50, candidate 10->50"
    assert await store.get("churn") == revived


async def test_list_returns_live_experiments_sorted_by_name(store: ConfigStore) -> None:
    for name in ("upsell", "churn", "ranking"):
        await store.put(experiment(name), actor="alice", expected_version=None)
    assert [s.name for s in await store.list()] == ["churn", "ranking", "upsell"]


async def test_versions_maps_each_live_experiment_to_its_version(store: ConfigStore) -> None:
    await store.put(experiment("churn"), actor="alice", expected_version=None)
    await store.put(experiment("churn", weights=(50, 50)), actor="alice", expected_version=1)
    await store.put(experiment("upsell"), actor="alice", expected_version=None)
    assert await store.versions() == {"churn": 2, "upsell": 1}


async def test_an_empty_store_lists_nothing(store: ConfigStore) -> None:
    assert (await store.list(), await store.versions()) == ([], {})


async def test_create_if_absent_creates_a_missing_experiment(store: ConfigStore) -> None:
    created = await store.create_if_absent(experiment(), actor="serve --config")
    assert created is not None
    assert (created.version, created.updated_by) == (1, "serve --config")


async def test_create_if_absent_leaves_an_existing_experiment_alone(store: ConfigStore) -> None:
    await store.put(experiment(), actor="alice", expected_version=None)
    assert await store.create_if_absent(experiment(weights=(50, 50)), actor="serve --config") is None
    assert (await store.get("churn")).experiment.weights == (90, 10)


async def test_create_if_absent_does_not_revive_an_archived_experiment(store: ConfigStore) -> None:
    await store.put(experiment(), actor="alice", expected_version=None)
    await store.archive("churn", actor="alice")
    assert await store.create_if_absent(experiment(), actor="serve --config") is None
    with pytest.raises(UnknownExperiment):
        await store.get("churn")


async def test_every_change_is_published_on_the_config_channel(
    store: ConfigStore, redis_client: redis.asyncio.Redis
) -> None:
    pubsub = redis_client.pubsub()
    try:
        await pubsub.subscribe(Keys().config_channel())
        await store.put(experiment(), actor="alice", expected_version=None)
        await store.archive("churn", actor="alice")
        messages: list[dict[str, object]] = []
        async with asyncio.timeout(5):
            while len(messages) < 2:
                # None also comes back for the swallowed subscribe confirmation: keep reading.
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if message is not None:
                    messages.append(json.loads(message["data"]))
    finally:
        await pubsub.aclose()
    assert messages == [
        {"name": "churn", "version": 1, "archived": False},
        {"name": "churn", "version": 2, "archived": True},
    ]


async def test_the_store_writes_only_the_keys_named_in_keys(
    store: ConfigStore, redis_client: redis.asyncio.Redis
) -> None:
    await store.put(experiment(), actor="alice", expected_version=None)
    keys = Keys()
    expected = {keys.config("churn"), keys.history("churn"), keys.index()}
    assert set(await redis_client.keys("*")) == {key.encode() for key in expected}


async def test_the_store_works_with_a_client_that_decodes_responses(redis_url: str) -> None:
    async with redis.asyncio.Redis.from_url(redis_url, decode_responses=True) as client:
        store = ConfigStore(client, keys=Keys(), clock=lambda: NOW)
        created = await store.put(experiment(), actor="alice", expected_version=None)
        assert await store.get("churn") == created
        assert await store.list() == [created]
        assert await store.versions() == {"churn": 1}
        assert await store.history("churn") == [created]


async def test_a_prefix_keeps_two_gateways_apart(redis_client: redis.asyncio.Redis) -> None:
    blue = ConfigStore(redis_client, keys=Keys("blue:"))
    green = ConfigStore(redis_client, keys=Keys("green:"))
    await blue.put(experiment(), actor="alice", expected_version=None)
    assert await green.list() == []


@pytest.mark.parametrize(
    "operation",
    [
        pytest.param(lambda store: store.get("churn"), id="get"),
        pytest.param(lambda store: store.list(), id="list"),
        pytest.param(lambda store: store.versions(), id="versions"),
        pytest.param(lambda store: store.history("churn"), id="history"),
        pytest.param(lambda store: store.put(experiment(), actor="a", expected_version=1), id="put"),
        pytest.param(lambda store: store.archive("churn", actor="a"), id="archive"),
    ],
)
async def test_a_stopped_redis_raises_store_unavailable(
    fresh_redis_server: RedisServer, unreliable_client: redis.asyncio.Redis, operation: Any
) -> None:
    store = ConfigStore(unreliable_client, keys=Keys())
    await store.put(experiment(), actor="alice", expected_version=None)
    fresh_redis_server.stop()
    with pytest.raises(StoreUnavailable, match=r"config store in Redis failed") as unavailable:
        await operation(store)
    assert unavailable.value.status_code == 503


async def test_the_store_works_again_once_redis_is_back(
    fresh_redis_server: RedisServer, unreliable_client: redis.asyncio.Redis
) -> None:
    store = ConfigStore(unreliable_client, keys=Keys())
    created = await store.put(experiment(), actor="alice", expected_version=None)
    fresh_redis_server.stop()
    with pytest.raises(StoreUnavailable):
        await store.get("churn")
    fresh_redis_server.start()
    assert await store.get("churn") == created


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        pytest.param(Keys().config("churn"), "abr:{churn}:config", id="config"),
        pytest.param(Keys().history("churn"), "abr:{churn}:history", id="history"),
        pytest.param(Keys().index(), "abr:experiments", id="index"),
        pytest.param(Keys().config_channel(), "abr:config-changes", id="channel"),
        pytest.param(Keys("t1:").config("churn"), "t1:{churn}:config", id="custom-prefix"),
    ],
)
def test_keys_are_spelled_as_documented(key: str, expected: str) -> None:
    assert key == expected


def test_an_experiments_keys_share_one_cluster_slot() -> None:
    keys = Keys()
    assert key_slot(keys.config("churn").encode()) == key_slot(keys.history("churn").encode())
    assert key_slot(keys.config("churn").encode()) != key_slot(keys.config("upsell").encode())


def test_a_prefix_with_a_brace_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"cannot contain"):
        Keys("abr:{x}:")
