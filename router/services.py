"""Services + open_services(): the only place that opens connections and loads models."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import redis.asyncio as redis
import redis.exceptions as redis_errors
from prometheus_client import CollectorRegistry
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from router.config_sync import ConfigSync
from router.errors import StoreUnavailable
from router.live_config import LiveConfig
from router.metrics import Metrics, NullMetrics
from router.proxy import UpstreamClient, open_upstream_client
from router.rollout.controller import RolloutController
from router.rollout.state import RolloutStore
from router.settings import Settings
from router.shadow import ShadowMirror
from router.store.client import RedisClient
from router.store.configs import ConfigStore
from router.store.events import EventWriter, NullEventWriter
from router.store.keys import Keys
from router.store.srm import SrmLooks
from router.store.stats import StatsStore
from router.store.sticky import StickyStore
from router.variants.batching import Batching
from router.variants.registry import ModelCache

log = logging.getLogger("abrouter.services")


@dataclass(slots=True)
class Services:
    """The long-lived resources of one gateway process, shared by every request."""

    settings: Settings
    redis: RedisClient
    store: ConfigStore
    live: LiveConfig
    upstream: UpstreamClient
    models: ModelCache
    metrics: Metrics
    stats: StatsStore
    events: EventWriter
    sticky: StickyStore
    srm: SrmLooks
    shadow: ShadowMirror
    rollouts: RolloutStore

    async def redis_problem(self) -> str | None:
        """None when Redis answers a PING in time, else what went wrong (for /readyz)."""
        try:
            async with asyncio.timeout(self.settings.redis_timeout_s):
                await self.redis.ping()
        except (TimeoutError, redis_errors.RedisError) as exc:
            return f"redis does not answer: {type(exc).__name__}: {exc}"
        return None


def report_death(task: asyncio.Task[None]) -> None:
    """A background task that should run for the process's life ended by itself: say so at once."""
    if not task.cancelled() and task.exception() is not None:
        log.error("background task %s died", task.get_name(), exc_info=task.exception())


async def stop_task(task: asyncio.Task[None] | None) -> None:
    """Cancel a background task and wait for it; its own failure is logged, never raised into the shutdown."""
    if task is None:
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    except Exception:
        log.exception("background task %s had failed", task.get_name())


class NoTimeoutRetryCluster(RedisCluster):
    """A Redis Cluster client that, like the single-node one, never sends a timed-out command again.

    redis-py's cluster client retries every error in `ERRORS_ALLOW_RETRY`, whatever `Retry` says,
    and that tuple holds TimeoutError: a write whose reply was slow ran twice (a config
    compare-and-set then reported its own write as a conflict). Connection and cluster-state
    errors still retry: the command did not run.
    """

    ERRORS_ALLOW_RETRY = tuple(  # type: ignore[assignment]  # redis-py types it as exactly its own four
        error for error in RedisCluster.ERRORS_ALLOW_RETRY if not issubclass(error, redis_errors.TimeoutError)
    )


def connect_redis(settings: Settings) -> RedisClient:
    """A client whose every command gives up after `redis_timeout_s`, so a hung Redis cannot hang us.

    With `redis_cluster` the URL names any node of a Redis Cluster; the client finds the others.
    """
    if settings.redis_url is None:
        raise StoreUnavailable("no Redis URL: `abrouter serve` starts the embedded one, or set ABROUTER_REDIS_URL")
    # A pooled connection from before a Redis restart fails on first use ("Connection closed by
    # server"); one quick retry on a fresh connection hides that. Only connection errors are
    # retried: a timeout may mean the command ran, and the writes are not all idempotent (a config
    # compare-and-set sent twice reports its own write as a conflict). redis-py retries timeouts
    # too unless told otherwise.
    retry = Retry(ExponentialBackoff(cap=0.1, base=0.01), retries=2, supported_errors=(redis_errors.ConnectionError,))
    if settings.redis_cluster:
        return NoTimeoutRetryCluster.from_url(
            settings.redis_url,
            socket_timeout=settings.redis_timeout_s,
            socket_connect_timeout=settings.redis_timeout_s,
            retry=retry,
        )
    return redis.Redis.from_url(
        settings.redis_url,
        socket_timeout=settings.redis_timeout_s,
        socket_connect_timeout=settings.redis_timeout_s,
        health_check_interval=30,
        retry=retry,
        retry_on_error=[redis_errors.ConnectionError],
    )


@contextlib.asynccontextmanager
async def open_services(
    settings: Settings, *, transport: httpx.AsyncBaseTransport | None = None, metrics: Metrics | None = None
) -> AsyncIterator[Services]:
    """Connect, load the config in force and its models, and keep it fresh until the block exits.

    A model that fails to load stops start-up (`ModelLoadError`); a Redis that does not answer
    does not: the process starts unready and keeps trying. Without `metrics`, they go to a
    registry of their own. `events_enabled` and `metrics_enabled` off swap in writers that do nothing.
    """
    if not settings.metrics_enabled:
        metrics = NullMetrics()  # not even the app's: off means no recording at all
    elif metrics is None:
        metrics = Metrics(CollectorRegistry())
    client = connect_redis(settings)
    upstream = open_upstream_client(
        settings.upstream_client,
        transport=transport,
        max_connections=settings.upstream_max_connections,
        keepalive_s=settings.upstream_keepalive_s,
    )
    keys = Keys(settings.redis_prefix)
    store = ConfigStore(client, keys=keys)
    batching = Batching(max_rows=settings.local_max_batch_rows, max_queue=settings.local_max_queue)
    models = ModelCache(
        settings.models_dir,
        batching=batching if settings.local_batching else None,
        inline_max_s=settings.local_inline_max_ms / 1000,
    )
    live = LiveConfig(store, client=upstream, models=models, metrics=metrics)
    stats = StatsStore(
        client,
        keys=keys,
        stream_maxlen=settings.events_stream_maxlen,
        pending_max_units=settings.events_pending_max_units,
    )
    sticky = StickyStore(
        client,
        keys=keys,
        timeout_s=settings.sticky_timeout_s,
        cache_size=settings.sticky_cache_size,
        observer=metrics,
    )
    # Off (ABROUTER_EVENTS_ENABLED=false) means no work on the request path, not work thrown away later.
    writer = EventWriter if settings.events_enabled else NullEventWriter
    events = writer(
        stats,
        spill_dir=settings.spill_dir,
        buffer_size=settings.events_buffer_size,
        batch_size=settings.events_batch_size,
        flush_interval_s=settings.events_flush_interval_s,
        spill_max_bytes=settings.events_spill_max_bytes,
        write_timeout_s=settings.events_write_timeout_s,
        shutdown_timeout_s=settings.events_shutdown_timeout_s,
        on_first_variant=sticky.remember,
        observer=metrics,
    )
    shadow = ShadowMirror(metrics, max_in_flight=settings.shadow_max_in_flight)
    refresher: asyncio.Task[None] | None = None
    metrics_flusher: asyncio.Task[None] | None = None
    rollouts = RolloutStore(client, keys=keys)
    controller = RolloutController(
        live=live, configs=store, rollouts=rollouts, stats=stats, metrics=metrics, tick_s=settings.rollout_tick_s
    )
    rollout_driver: asyncio.Task[None] | None = None
    try:
        with contextlib.suppress(StoreUnavailable):
            await live.refresh(strict=True)
        sync = ConfigSync(live, store, interval_s=settings.config_refresh_s)
        refresher = asyncio.create_task(sync.run(), name="config-sync")
        metrics_flusher = asyncio.create_task(metrics.flush_periodically(), name="metrics-flush")
        if settings.rollout_enabled:
            rollout_driver = asyncio.create_task(controller.run(), name="rollout-controller")
            rollout_driver.add_done_callback(report_death)
        await events.start()
        yield Services(
            settings=settings,
            redis=client,
            store=store,
            live=live,
            upstream=upstream,
            models=models,
            metrics=metrics,
            stats=stats,
            events=events,
            sticky=sticky,
            srm=SrmLooks(client, keys=keys),
            shadow=shadow,
            rollouts=rollouts,
        )
    finally:
        # First the rollout controller, so another process takes its leases over at once.
        await stop_task(rollout_driver)
        if rollout_driver is not None:
            await controller.close()
        # Then mirrors still in flight: they use the upstream client and the models.
        await shadow.close()
        # Before the client closes: shutdown (SIGTERM) writes or spills every pending event.
        await events.close()
        for task in (refresher, metrics_flusher):
            await stop_task(task)
        metrics.flush()  # the last calls' counts, into this worker's files before it is marked dead
        await upstream.aclose()
        await client.aclose()
