"""First exposures as the request path reads them: sticky assignments and the attribution check of outcomes.

The record is the experiment's `exposed` hash (unit -> variant of its first exposure), written by
the event writer's script; a small in-process LRU cache keeps hot units off Redis. Reads here
are on the request path, so each has a short deadline, and after a failure Redis is left alone
for a moment: a Redis that is down or slow makes a sticky experiment fall back to the hash
(SPEC section 2) instead of making prediction calls wait or fail.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, Final, Protocol

import redis.exceptions

from router.config.schema import Experiment, Status
from router.store.client import RedisClient
from router.store.keys import Keys

log = logging.getLogger("abrouter.sticky")

#: `operation` of abrouter_store_errors_total for failed reads of first exposures.
STORE_OPERATION: Final = "sticky"


class StoreErrorObserver(Protocol):
    """Told of each failed read; `router.metrics.Metrics` has this method."""

    def store_error(self, operation: Any) -> None: ...


class StickyStore:
    """Reads units' first variants with a deadline, an LRU cache and a pause after failures."""

    def __init__(
        self,
        redis: RedisClient,
        *,
        keys: Keys,
        timeout_s: float,
        cache_size: int,
        retry_after_s: float = 1.0,
        observer: StoreErrorObserver | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._timeout_s = timeout_s
        self._cache_size = cache_size
        self._retry_after_s = retry_after_s
        self._observer = observer
        self._clock = clock
        self._cache: OrderedDict[tuple[str, str], str] = OrderedDict()
        self._unavailable_until = 0.0
        self._failing = False
        #: failed reads, under STORE_OPERATION (sticky lookups and the exposure check of outcomes alike)
        self.store_errors: Counter[str] = Counter()

    async def lookup(self, experiment: Experiment, unit: str | None) -> str | None:
        """The stored first variant of `unit` when `experiment` is sticky; None to let the hash decide.

        Never raises and never waits longer than the deadline: a failed read is a None.
        """
        if not experiment.sticky or experiment.status is not Status.RUNNING or not unit:
            return None
        cached = self._cached(experiment.name, unit)
        if cached is not None:
            return cached
        found = await self._read(experiment.name, [unit], "sticky lookup")
        return None if found is None else found.get(unit)

    async def first_variants(self, experiment: str, units: Sequence[str]) -> dict[str, str] | None:
        """unit -> first variant for those of `units` that were exposed; None when Redis cannot tell now."""
        known = {unit: variant for unit in units if (variant := self._cached(experiment, unit)) is not None}
        missing = [unit for unit in dict.fromkeys(units) if unit not in known]
        if not missing:
            return known
        found = await self._read(experiment, missing, "exposure check")
        return None if found is None else known | found

    def remember(self, experiment: str, unit: str, variant: str) -> None:
        """Cache a first variant learnt elsewhere (an assignment made here, or the writer's answer)."""
        key = (experiment, unit)
        self._cache[key] = variant
        self._cache.move_to_end(key)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    def _cached(self, experiment: str, unit: str) -> str | None:
        key = (experiment, unit)
        variant = self._cache.get(key)
        if variant is not None:
            self._cache.move_to_end(key)
        return variant

    async def _read(self, experiment: str, units: Sequence[str], doing: str) -> dict[str, str] | None:
        if self._clock() < self._unavailable_until:
            return None
        try:
            async with asyncio.timeout(self._timeout_s):
                values = await self._redis.hmget(self._keys.exposed(experiment), list(units))
        except (TimeoutError, redis.exceptions.RedisError) as exc:
            self.store_errors[STORE_OPERATION] += 1
            if self._observer is not None:
                self._observer.store_error(STORE_OPERATION)
            if not self._failing:
                log.warning("%s in Redis failed (the hash decides): %s: %s", doing, type(exc).__name__, exc)
            self._failing = True
            self._unavailable_until = self._clock() + self._retry_after_s
            return None
        if self._failing:
            log.info("%s in Redis works again", doing)
            self._failing = False
        found: dict[str, str] = {}
        for unit, value in zip(units, values, strict=True):
            if value is not None:
                found[unit] = value.decode() if isinstance(value, bytes) else str(value)
                self.remember(experiment, unit, found[unit])
        return found
