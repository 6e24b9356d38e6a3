"""Sticky lookups against a real Redis: the stored first variant, the cache, and a Redis that is gone or hung."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from router.config.schema import Experiment
from router.store.embedded import RedisServer
from router.store.keys import Keys
from router.store.sticky import StickyStore


def experiment(**fields: Any) -> Experiment:
    base: dict[str, Any] = {
        "name": "exp",
        "control": "a",
        "sticky": True,
        "variants": [
            {"name": "a", "weight": 50, "url": "http://127.0.0.1:9/a"},
            {"name": "b", "weight": 50, "url": "http://127.0.0.1:9/b"},
        ],
    }
    return Experiment.model_validate(base | fields)


@pytest.fixture
async def client(fresh_redis_server: RedisServer) -> AsyncIterator[redis.asyncio.Redis]:
    """A client of a Redis the test may stop; its own retries are off so only the store's deadline counts."""
    client = redis.asyncio.Redis.from_url(
        fresh_redis_server.url, socket_timeout=2, socket_connect_timeout=2, retry=Retry(NoBackoff(), 0)
    )
    await client.hset(Keys().exposed("exp"), mapping={"u1": "b"})
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def store(client: redis.asyncio.Redis) -> StickyStore:
    return StickyStore(client, keys=Keys(), timeout_s=0.05, cache_size=100, retry_after_s=0.5)


@pytest.fixture
def hung(fresh_redis_server: RedisServer) -> Iterator[None]:
    """The Redis process stopped by SIGSTOP: connections stay open, nothing answers."""
    pid = fresh_redis_server.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


async def test_the_first_variant_stored_for_a_unit_is_its_sticky_variant(store: StickyStore) -> None:
    assert await store.lookup(experiment(), "u1") == "b"


async def test_a_unit_never_exposed_has_no_sticky_variant(store: StickyStore) -> None:
    assert await store.lookup(experiment(), "u2") is None


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({"sticky": False}, id="not-sticky"),
        pytest.param({"status": "paused"}, id="paused"),
    ],
)
async def test_experiments_that_would_not_use_a_sticky_variant_do_not_look_it_up(
    store: StickyStore, fields: dict[str, Any]
) -> None:
    assert await store.lookup(experiment(**fields), "u1") is None


async def test_once_looked_up_a_unit_is_answered_from_the_cache_without_redis(
    store: StickyStore, fresh_redis_server: RedisServer
) -> None:
    assert await store.lookup(experiment(), "u1") == "b"
    fresh_redis_server.stop()
    assert await store.lookup(experiment(), "u1") == "b"
    assert store.store_errors["sticky"] == 0


async def test_a_variant_remembered_here_is_sticky_before_redis_has_it(store: StickyStore) -> None:
    store.remember("exp", "u2", "a")
    assert await store.lookup(experiment(), "u2") == "a"


async def test_with_redis_hung_a_lookup_gives_up_at_its_deadline_and_lets_the_hash_decide(
    store: StickyStore, hung: None
) -> None:
    started = time.perf_counter()
    assert await store.lookup(experiment(), "u1") is None
    assert time.perf_counter() - started < 0.5
    assert store.store_errors["sticky"] == 1


async def test_after_a_failure_lookups_leave_redis_alone_for_a_moment(
    store: StickyStore, fresh_redis_server: RedisServer
) -> None:
    fresh_redis_server.stop()
    assert await store.lookup(experiment(), "u1") is None
    started = time.perf_counter()
    for _ in range(100):
        assert await store.lookup(experiment(), "u1") is None
    assert time.perf_counter() - started < 0.05
    assert store.store_errors["sticky"] == 1


async def test_the_exposure_check_of_outcomes_says_it_cannot_tell_when_redis_is_down(
    store: StickyStore, fresh_redis_server: RedisServer
) -> None:
    assert await store.first_variants("exp", ["u1", "u2"]) == {"u1": "b"}
    fresh_redis_server.stop()
    assert await store.first_variants("exp", ["u2"]) is None
    assert await store.first_variants("exp", ["u1"]) == {"u1": "b"}  # cached: no need to ask
