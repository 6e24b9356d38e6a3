"""The type of the Redis client every store takes: a single Redis or a Redis Cluster, both from redis.asyncio."""

from __future__ import annotations

from typing import TypeAlias

import redis.asyncio
import redis.asyncio.cluster

#: Everything in `router.store` works on both: each script and MULTI touches one experiment's slot only.
RedisClient: TypeAlias = redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster
