"""Shadow traffic: a share of an experiment's calls mirrored to a variant whose answers are discarded (SPEC section 3).

A mirror is sent after the caller's answer, in a background task, so it can neither delay nor
change that answer; it logs no events and counts only in abrouter_shadow_requests_total. At most
`max_in_flight` mirrors run at once per process and the rest are dropped (counted), so a slow
shadow variant cannot pile up tasks, connections or memory in the gateway.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final

from router.assignment.hashing import gb_hash
from router.errors import RouterError, UpstreamTimeout
from router.live_config import ActiveExperiment
from router.metrics import Metrics, ShadowResult
from router.variants.base import PredictCall

log = logging.getLogger("abrouter.shadow")

#: appended to the experiment's hash seed, so whether a unit is mirrored does not depend on the variant it gets
SEED_SUFFIX: Final = ":shadow"


def mirrors_unit(seed: str, unit_id: str | None, percent: float) -> bool:
    """Whether `percent` of units mirrors this one: the same answer for a unit every time, in every process."""
    if not unit_id:
        return False
    bucket = gb_hash(seed + SEED_SUFFIX, unit_id, 2)
    return bucket is not None and bucket < percent / 100


class ShadowMirror:
    """Sends the mirrored calls of every experiment of one process, each in its own task."""

    def __init__(self, metrics: Metrics, *, max_in_flight: int) -> None:
        self._metrics = metrics
        self.max_in_flight = max_in_flight
        # Strong references: the event loop keeps only weak ones, and a collected task would vanish mid-call.
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    def mirror(
        self, active: ActiveExperiment, call: PredictCall, *, unit_id: str | None, assigned: str, served: str
    ) -> None:
        """Send `call` to the experiment's shadow variant too, if its unit is in the share; never waits.

        Not when the shadow variant was assigned or served the call itself: it has had the call already.
        """
        experiment = active.experiment
        shadow = experiment.shadow
        if shadow is None or shadow.variant in (assigned, served):
            return
        if not mirrors_unit(experiment.hash_seed, unit_id, shadow.percent):
            return
        if self._closed or len(self._tasks) >= self.max_in_flight:
            self._metrics.shadow(experiment.name, shadow.variant, ShadowResult.DROPPED)
            return
        task = asyncio.create_task(self._send(active, shadow.variant, call), name="shadow")
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    async def _send(self, active: ActiveExperiment, variant: str, call: PredictCall) -> None:
        # Classed by the status the variant would have answered: a 4xx is the caller's input, not the variant's fault.
        try:
            answer = await active.backends[variant].predict(call)
        except UpstreamTimeout:
            result = ShadowResult.TIMEOUT
        except RouterError as exc:
            result = ShadowResult.ERROR if exc.status_code >= 500 else ShadowResult.OK
        else:
            result = ShadowResult.ERROR if answer.failed else ShadowResult.OK
        self._metrics.shadow(active.experiment.name, variant, result)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            # A bug rather than a failing variant (those are counted): said now, not lost with the task.
            log.error("shadow call failed unexpectedly: %s: %s", type(error).__name__, error, exc_info=error)

    async def close(self) -> None:
        """Cancel the mirrors still in flight (their answers would be discarded anyway) and wait until they end."""
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
