"""Services + open_services(): the only place that opens connections and loads models."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import redis.asyncio as redis
import redis.exceptions as redis_errors

from router.errors import StoreUnavailable
from router.live_config import LiveConfig
from router.proxy import UpstreamClient
from router.settings import Settings
from router.store.configs import ConfigStore
from router.store.keys import Keys
from router.variants.registry import ModelCache


@dataclass(slots=True)
class Services:
    """The long-lived resources of one gateway process, shared by every request."""

    settings: Settings
    redis: redis.Redis
    store: ConfigStore
    live: LiveConfig
    upstream: UpstreamClient
    models: ModelCache

    async def redis_problem(self) -> str | None:
        """None when Redis answers a PING in time, else what went wrong (for /readyz)."""
        try:
            async with asyncio.timeout(self.settings.redis_timeout_s):
                await self.redis.ping()
        except (TimeoutError, redis_errors.RedisError) as exc:
            return f"redis does not answer: {type(exc).__name__}: {exc}"
        return None


def connect_redis(settings: Settings) -> redis.Redis:
    """A client whose every command gives up after `redis_timeout_s`, so a hung Redis cannot hang us."""
    if settings.redis_url is None:
        raise StoreUnavailable("no Redis URL: `abrouter serve` starts the embedded one, or set ABROUTER_REDIS_URL")
    return redis.Redis.from_url(
        settings.redis_url,
        socket_timeout=settings.redis_timeout_s,
        socket_connect_timeout=settings.redis_timeout_s,
        health_check_interval=30,
    )


@contextlib.asynccontextmanager
async def open_services(
    settings: Settings, *, transport: httpx.AsyncBaseTransport | None = None
) -> AsyncIterator[Services]:
    """Connect, load the config in force and its models, and keep it fresh until the block exits.

    A model that fails to load stops start-up (`ModelLoadError`); a Redis that does not answer
    does not: the process starts unready and keeps trying.
    """
    client = connect_redis(settings)
    upstream = UpstreamClient(
        transport=transport,
        max_connections=settings.upstream_max_connections,
        keepalive_s=settings.upstream_keepalive_s,
    )
    store = ConfigStore(client, keys=Keys(settings.redis_prefix))
    models = ModelCache()
    live = LiveConfig(store, client=upstream, models=models)
    refresher: asyncio.Task[None] | None = None
    try:
        with contextlib.suppress(StoreUnavailable):
            await live.refresh(strict=True)
        refresher = asyncio.create_task(live.run(settings.config_refresh_s), name="config-refresh")
        yield Services(settings=settings, redis=client, store=store, live=live, upstream=upstream, models=models)
    finally:
        if refresher is not None:
            refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await refresher
        await upstream.aclose()
        await client.aclose()
