"""The gateway's Redis client (`connect_redis`) against a real Redis: what it retries and what it must not."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest
import redis.exceptions
from redis.asyncio.cluster import RedisCluster

from router.services import connect_redis
from router.settings import Settings
from router.store.client import RedisClient
from router.store.embedded import RedisServer
from tests.fixtures.redis_cluster import RedisClusterNodes


async def test_a_command_that_timed_out_is_not_sent_again(fresh_redis_server: RedisServer) -> None:
    """A timeout may mean the command ran: sending a write twice would apply it twice (an INCR here,
    a config compare-and-set reporting its own write as a conflict in the gateway)."""
    pid = fresh_redis_server.pid
    assert pid is not None
    client = connect_redis(Settings(redis_url=fresh_redis_server.url, redis_timeout_s=0.3))
    await incremented_once_across_a_stall(client, pid)


async def test_a_command_that_timed_out_is_not_sent_again_on_a_cluster(
    redis_cluster: RedisClusterNodes, redis_cluster_url: str
) -> None:
    """redis-py's cluster client retries timeouts whatever its Retry says: the gateway's does not."""
    client = connect_redis(Settings(redis_url=redis_cluster_url, redis_cluster=True, redis_timeout_s=0.3))
    assert isinstance(client, RedisCluster)
    await client.ping()
    owner = client.get_node_from_key("counter")
    assert owner is not None
    await incremented_once_across_a_stall(client, redis_cluster.pid_of(owner.port))


async def incremented_once_across_a_stall(client: RedisClient, pid: int) -> None:
    """INCR while the Redis process `pid` is stopped past the client's timeout: it must run once."""
    try:
        await client.delete("counter")  # a pooled connection to the key's node: the INCR is sent, not connected
        os.kill(pid, signal.SIGSTOP)  # Redis takes the command but answers nothing until resumed
        # resumed after the first attempt timed out (0.3 s) and before a second one would (0.6 s)
        resume = asyncio.get_running_loop().call_later(0.45, os.kill, pid, signal.SIGCONT)
        try:
            with pytest.raises(redis.exceptions.TimeoutError):
                await client.incr("counter")
        finally:
            await asyncio.sleep(0.5)
            resume.cancel()
            os.kill(pid, signal.SIGCONT)
        await asyncio.sleep(0.2)  # whatever was sent has run by now

        assert await client.get("counter") == b"1"
    finally:
        await client.aclose()


async def test_a_connection_closed_by_a_redis_restart_is_retried_on_a_fresh_one(
    fresh_redis_server: RedisServer,
) -> None:
    client = connect_redis(Settings(redis_url=fresh_redis_server.url))
    try:
        await client.set("key", "value")
        fresh_redis_server.restart()

        assert await client.ping()  # the pooled connection is dead: only the retry on a fresh one answers
    finally:
        await client.aclose()
