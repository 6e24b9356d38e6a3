"""The sequential SRM test's running minimum in a real Redis: kept across looks, restarted by new shares, atomic."""

from __future__ import annotations

import asyncio
import random

import redis.asyncio

from router.store.keys import Keys
from router.store.srm import SrmLooks, shares_signature

HALVES = {"a": 50.0, "b": 50.0}


async def test_each_look_returns_the_smallest_p_value_seen_so_far(redis_client: redis.asyncio.Redis) -> None:
    looks = SrmLooks(redis_client, keys=Keys())
    seen = [await looks.record("x", shares=HALVES, p_value=p, version=1) for p in (0.4, 0.02, 0.9, 0.3)]
    assert seen == [0.4, 0.02, 0.02, 0.02]
    last = await looks.last("x")
    assert last is not None and (last.p_value, last.looks) == (0.02, 4)


async def test_new_shares_start_a_new_series_of_looks(redis_client: redis.asyncio.Redis) -> None:
    looks = SrmLooks(redis_client, keys=Keys())
    await looks.record("x", shares=HALVES, p_value=0.001, version=1)
    after = await looks.record("x", shares={"a": 90.0, "b": 10.0}, p_value=0.6, version=2)
    assert after == 0.6
    stored = await redis_client.hgetall(Keys().srm("x"))
    assert stored[b"looks"] == b"1"
    assert stored[b"since_version"] == b"2"
    assert stored[b"weights"] == b"a=0.9,b=0.1"


async def test_the_same_shares_in_other_units_continue_the_series(redis_client: redis.asyncio.Redis) -> None:
    looks = SrmLooks(redis_client, keys=Keys())
    await looks.record("x", shares={"a": 1.0, "b": 1.0}, p_value=0.05, version=1)
    assert await looks.record("x", shares=HALVES, p_value=0.7, version=2) == 0.05


async def test_concurrent_looks_from_several_replicas_lose_none(redis_client: redis.asyncio.Redis) -> None:
    replicas = [SrmLooks(redis_client, keys=Keys()) for _ in range(4)]
    rng = random.Random(3)
    p_values = [rng.random() for _ in range(40)]
    await asyncio.gather(
        *(replicas[i % 4].record("x", shares=HALVES, p_value=p, version=1) for i, p in enumerate(p_values))
    )
    last = await replicas[0].last("x")
    assert last is not None and (last.p_value, last.looks) == (min(p_values), 40)


async def test_p_values_keep_every_digit_through_redis(redis_client: redis.asyncio.Redis) -> None:
    tiny = 1.2345678901234567e-300
    assert await SrmLooks(redis_client, keys=Keys()).record("x", shares=HALVES, p_value=tiny, version=1) == tiny


async def test_an_experiment_never_looked_at_has_no_running_minimum(redis_client: redis.asyncio.Redis) -> None:
    assert await SrmLooks(redis_client, keys=Keys()).last("never") is None


def test_the_key_lives_in_the_experiments_cluster_slot() -> None:
    assert Keys("p:").srm("churn") == "p:{churn}:srm"
    assert shares_signature({"current": 90, "candidate": 10}) == "current=0.9,candidate=0.1"
