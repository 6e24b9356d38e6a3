"""Keeping a replica's config current: Redis pub/sub for speed, a periodic version check as the backstop.

Every write publishes a notice (`router.store.configs`); a replica reloads as soon as one arrives,
so an edit made through any replica is served by all of them within milliseconds. Notices are
fire-and-forget (one sent while a replica is reconnecting is lost), so the replica also compares
versions after each (re)subscription and every `interval_s`. A replica that cannot reach Redis
keeps serving the config it has and says so (`LiveConfig.stale`, /readyz, abrouter_config_stale).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final

from router.errors import StoreUnavailable, UnknownExperiment
from router.live_config import LiveConfig
from router.store.client import honour_cancellation
from router.store.configs import ConfigStore

log = logging.getLogger("abrouter.config")

#: seconds between attempts to resubscribe after Redis was lost (at most; a longer check interval is not waited)
RECONNECT_S: Final = 1.0


class ConfigSync:
    """Refreshes a `LiveConfig` on each change notice and every `interval_s` regardless."""

    def __init__(self, live: LiveConfig, store: ConfigStore, *, interval_s: float) -> None:
        self._live = live
        self._store = store
        self._interval_s = interval_s

    async def run(self) -> None:
        """Forever (cancel to stop): subscribe, catch up, then reload on every notice or timeout."""
        while True:
            try:
                async with self._store.subscribe() as feed:
                    await self._refresh()  # whatever changed while we were not subscribed
                    while True:
                        notice = await feed.next(self._interval_s)
                        if notice is not None:
                            log.debug("change notice: %s version %d", notice.name, notice.version)
                        await self._refresh()  # on a notice at once; on a timeout as the backstop
            except StoreUnavailable as exc:
                honour_cancellation()
                self._live.lost_store(exc.message)
                await asyncio.sleep(min(self._interval_s, RECONNECT_S))
            except Exception:
                # A bug or an unforeseen store reply must not end config updates for the life of
                # the process while it goes on serving (and saying it is ready): log, and go on.
                honour_cancellation()
                log.exception("config refresh failed; retrying")
                await asyncio.sleep(min(self._interval_s, RECONNECT_S))

    async def _refresh(self) -> None:
        try:
            await self._live.refresh()
        except UnknownExperiment as exc:
            # archived between reading the versions and reading its config: the next check settles it
            log.info("config refresh raced with an archive: %s", exc.message)
        honour_cancellation()
