"""Adaptive micro-batching: concurrent calls of one local model become one model call.

A scikit-learn `predict_proba` costs about the same for 1 row as for 200 (input validation
dominates), so under concurrency the gateway saves most of the model's CPU by running calls
together. The scheme is BentoML's adaptive batching without a timer: a call that finds the model
idle runs at once, alone (no added latency at low load); calls that arrive while it is busy wait,
and when it frees up everything waiting runs as one batch, up to `max_rows` rows. So the batch
size follows the load, and no call waits longer than the batch ahead of it. The queue is bounded:
past `max_queue` waiting calls a new one is refused at once (`ModelOverloaded`, 503) instead of
queueing without bound.

Where a batch runs is the model's choice (`LocalModel`, router/variants/local.py). In a worker
thread, the calls that arrive while it runs wait; on the event loop, nothing else runs meanwhile,
and the calls that arrived are read in the next loop round and batched together then. The worker
yields to the loop between two batches, so a long queue never holds the loop for more than one.

When a batch of several calls fails, each call is retried alone: one call whose rows make the
model raise must not fail the unrelated calls it happened to be batched with, and the retry
names the culprit in its own error. Failures are rare, so the extra model calls cost nothing
in the common case.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from router.errors import ModelOverloaded, PredictionError

log = logging.getLogger("abrouter.variants")

Rows = npt.NDArray[np.float64]
#: a model's answer for some rows: predictions and, when it has them, probabilities, one of each per row
Outputs = tuple[npt.NDArray[Any], Rows | None]


@dataclass(frozen=True, slots=True)
class Batching:
    """How one local model gathers concurrent calls (ABROUTER_LOCAL_MAX_BATCH_ROWS, ABROUTER_LOCAL_MAX_QUEUE)."""

    max_rows: int = 256
    max_queue: int = 1024


@dataclass(slots=True)
class _Waiting:
    rows: Rows
    answer: asyncio.Future[Outputs]


class MicroBatcher:
    """Awaits `run` (one model call) on the rows of as many waiting calls as fit a batch."""

    def __init__(self, run: Callable[[Rows], Awaitable[Outputs]], *, batching: Batching, name: str) -> None:
        self._run = run
        self._batching = batching
        self._name = name
        self._waiting: deque[_Waiting] = deque()
        self._worker: asyncio.Task[None] | None = None
        # A call that found the model idle sits in `_waiting` until its worker task first runs; it is
        # about to run, not queued behind anything, so it does not count against `max_queue`.
        self._starting = False

    @property
    def waiting(self) -> int:
        """Calls queued behind the batch that is running (or about to run)."""
        return len(self._waiting) - self._starting

    async def predict(self, rows: Rows) -> Outputs:
        """The model's outputs for `rows`, computed alone or as part of a batch."""
        if self.waiting >= self._batching.max_queue:
            raise ModelOverloaded(
                f"model {self._name} has {self.waiting} calls waiting, the most allowed "
                "(ABROUTER_LOCAL_MAX_QUEUE); retry later"
            )
        waiting = _Waiting(rows, asyncio.get_running_loop().create_future())
        self._waiting.append(waiting)
        if self._worker is None:
            self._starting = True
            self._worker = asyncio.create_task(self._work(), name=f"batches of {self._name}")
            self._worker.add_done_callback(_report_failure)
        return await waiting.answer

    async def _work(self) -> None:
        """Run batches while calls wait; the next call to find the model idle starts a new worker."""
        try:
            while self._waiting:
                self._starting = False
                batch = self._next_batch()
                if batch:
                    await self._serve(batch)
                if self._waiting:
                    # More than one batch was queued. A model on the event loop never yields by itself:
                    # answers go out, and the loop serves everything else, between two batches rather
                    # than after the whole queue. (Not after the last: a new worker task, started by
                    # the next call, runs after the loop round's reads and so gathers a larger batch.)
                    await asyncio.sleep(0)
        finally:
            self._worker = None
            self._starting = False
            # Cancelled at shutdown: nobody will serve these calls any more.
            while self._waiting:
                self._waiting.popleft().answer.cancel()

    def _next_batch(self) -> list[_Waiting]:
        """The oldest waiting calls that fit in `max_rows` (always at least one) and share a row width."""
        batch: list[_Waiting] = []
        rows = 0
        while self._waiting:
            head = self._waiting[0]
            if head.answer.done():  # its caller gave up (cancelled) while it waited
                self._waiting.popleft()
                continue
            if batch and (
                rows + len(head.rows) > self._batching.max_rows or head.rows.shape[1] != batch[0].rows.shape[1]
            ):
                break
            batch.append(self._waiting.popleft())
            rows += len(head.rows)
        return batch

    async def _serve(self, batch: list[_Waiting]) -> None:
        try:
            if len(batch) == 1:
                await self._serve_alone(batch[0])
                return
            try:
                predictions, probabilities = await self._run(np.concatenate([call.rows for call in batch]))
            except PredictionError:
                for call in batch:  # find the call the model fails on, and answer the others
                    await self._serve_alone(call)
                    await asyncio.sleep(0)  # as between batches
                return
            start = 0
            for call in batch:
                end = start + len(call.rows)
                _settle(
                    call.answer, (predictions[start:end], None if probabilities is None else probabilities[start:end])
                )
                start = end
        finally:
            for call in batch:  # only when the worker itself was cancelled (shutdown): nobody hangs
                if not call.answer.done():
                    call.answer.cancel()

    async def _serve_alone(self, call: _Waiting) -> None:
        if call.answer.done():
            return
        try:
            outputs = await self._run(call.rows)
        except PredictionError as exc:
            if not call.answer.done():
                call.answer.set_exception(exc)
            return
        _settle(call.answer, outputs)


def _report_failure(task: asyncio.Task[None]) -> None:
    """A worker that stopped by a bug: say so now (its calls were cancelled, the next call starts a new one)."""
    if not task.cancelled() and task.exception() is not None:
        log.error("a micro-batching worker failed", exc_info=task.exception())


def _settle(answer: asyncio.Future[Outputs], outputs: Outputs) -> None:
    with contextlib.suppress(asyncio.InvalidStateError):  # the caller was cancelled while the batch ran
        answer.set_result(outputs)
