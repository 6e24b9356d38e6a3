"""The type of the Redis client every store takes: a single Redis or a Redis Cluster, both from redis.asyncio."""

from __future__ import annotations

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
