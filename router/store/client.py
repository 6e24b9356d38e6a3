"""The type of the Redis client every store takes: a single Redis or a Redis Cluster, both from redis.asyncio."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import TypeAlias

import redis.asyncio
import redis.asyncio.cluster
import redis.exceptions

from router.errors import StoreUnavailable

#: Everything in `router.store` works on both: each script and MULTI touches one experiment's slot only.
RedisClient: TypeAlias = redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster


@contextlib.contextmanager
def translate_errors(doing: str) -> Iterator[None]:
    """Redis errors (and timeouts around them) become `StoreUnavailable`: nothing above `router.store` sees redis."""
    try:
        yield
    except (redis.exceptions.RedisError, TimeoutError) as exc:
        raise StoreUnavailable(f"{doing} in Redis failed: {type(exc).__name__}: {exc}") from exc


def honour_cancellation() -> None:
    """Stop if a cancellation was requested but swallowed on the way; call it where `StoreUnavailable` is caught.

    A cancel that lands while one of redis-py's read timeouts expires can be turned into a
    timeout (and retried) by Python 3.11's `asyncio.timeout`; the task is still marked as
    cancelling, and a background loop that goes on after the error would never stop.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
