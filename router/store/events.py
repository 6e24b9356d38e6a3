"""The durable path of exposures, outcomes and call counts from the request path to Redis (SPEC section 5).

Requests only append to an in-memory queue (`record_call`, `record_outcomes`); a background task
takes batches from its head and applies them with one script call per experiment
(`StatsStore.apply`), the experiments of a batch concurrently. Nothing on the request path waits
for Redis.

When Redis is down or slow the head batch is retried with exponential backoff while new events
wait in the bounded buffer. Past `buffer_size` they go to an append-only spill file of this
process (``events-<writer id>.jsonl`` under the spill directory, locked with flock while the
process lives), and keep going there until the file is drained, so the queue stays in order:
memory first, then the file. On shutdown (SIGTERM) the queue is written to Redis if it answers
within `shutdown_timeout_s`, else to the spill file; at start-up, and every few seconds after,
a writer claims the files of processes that are gone and replays them.

Nothing is counted twice: every event carries its writer id and a sequence number, and the
script skips events at or below the last sequence it applied for that writer, so a batch that
timed out after Redis applied it, or a spill file replayed after a crash half way, is harmless.
Events are dropped only when both the buffer and the spill file are full, the disk fails, or a
call is recorded after `close()` (outcomes are refused then instead); `dropped` counts them and
the target is zero.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import itertools
import logging
import os
import re
import socket
import time
import uuid
from bisect import bisect_left
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol, Self

import orjson

from router.assignment.assign import Assignment, Reason
from router.config.schema import Experiment
from router.errors import FeatureDisabled, StoreUnavailable
from router.store.stats import (
    ARGUMENTS,
    LATENCY_BUCKETS_MS,
    Applied,
    Event,
    EventKind,
    StatsStore,
    calls_event,
    exposure_event,
    outcome_event,
)

log = logging.getLogger("abrouter.events")

SPILL_PREFIX: Final = "events-"
SPILL_SUFFIX: Final = ".jsonl"
_READ_BLOCK: Final = 1 << 16
_BACKOFF_MIN_S: Final = 0.05
_BACKOFF_MAX_S: Final = 1.0
_ORPHAN_SCAN_S: Final = 10.0
_DROP_LOG_EVERY_S: Final = 10.0
_SHUTDOWN_RETRY_S: Final = 1.0
_LINE_BYTES_ESTIMATE: Final = 160  # a typical encoded event, to tell whether a batch will fit in the spill file

#: Told (experiment, unit, variant) whenever a unit's first variant becomes known: the sticky cache listens.
FirstVariantListener = Callable[[str, str, str], None]

#: `operation` of abrouter_store_errors_total for failed event writes.
STORE_OPERATION: Final = "events"


class EventObserver(Protocol):
    """Told about what the writer does, as it happens: `router.metrics.Metrics` has these methods.

    Counters must be incremented where things happen (each worker has its own writer); reading
    the writer's attributes at scrape time would see one worker only.
    """

    def exposure(self, experiment: str, variant: str, count: int = 1) -> None: ...

    def outcomes(self, experiment: str, variant: str, metric: str, count: int = 1) -> None: ...

    def events_written(self, count: int) -> None: ...

    def events_dropped(self, count: int) -> None: ...

    def set_events_pending(self, count: int) -> None: ...

    def store_error(self, operation: Any) -> None: ...


class SpillFile:
    """An append-only file of encoded events, exclusively locked, read from the front as Redis takes them."""

    def __init__(self, path: Path, fd: int, *, pending: int) -> None:
        self.path = path
        self._fd = fd
        #: events in the file not yet applied in Redis
        self.pending = pending
        self.size = os.fstat(fd).st_size
        self._applied_to = 0  # file offset up to which every event is in Redis

    @classmethod
    def create(cls, directory: Path, writer_id: str) -> Self:
        """A new, locked, empty file named after the writer."""
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{SPILL_PREFIX}{writer_id}{SPILL_SUFFIX}"
        fd = _locked_temporary(path)
        os.rename(_temporary_path(path), path)  # other processes see the name only once it is locked
        return cls(path, fd, pending=0)

    @classmethod
    def claim(cls, path: Path) -> Self | None:
        """Lock a file whose writer is gone, to replay it; None while its writer runs or once it is removed."""
        try:
            fd = os.open(path, os.O_RDWR | os.O_APPEND)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # Its writer may have drained and removed it between our open and our lock.
            if not os.path.samestat(os.fstat(fd), os.stat(path)):
                raise FileNotFoundError(path)
        except (BlockingIOError, FileNotFoundError):
            os.close(fd)
            return None
        return cls(path, fd, pending=_count_lines(fd))

    def append(self, lines: bytes, count: int) -> None:
        """Add `count` encoded events at the end (one write per call: events reach the kernel at once).

        A write that fails part way (disk full) is cut back off: the next append would otherwise
        join its torn line, and an event written after the disk has room again would be lost too.
        """
        try:
            _write_all(self._fd, lines)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self.size)
            raise
        self.pending += count
        self.size += len(lines)

    def read(self, max_lines: int) -> tuple[list[bytes], int]:
        """Up to `max_lines` lines after the applied part, and the offset after them (for `applied`).

        A last line without its newline is the torn write of a process that died mid-write; it
        is returned like the others and fails to decode.
        """
        lines: list[bytes] = []
        position = self._applied_to
        data = b""
        while len(lines) < max_lines:
            block = os.pread(self._fd, _READ_BLOCK, position + len(data))
            if not block:
                if data:
                    lines.append(data)
                    position += len(data)
                break
            data += block
            start = 0
            while len(lines) < max_lines:
                newline = data.find(b"\n", start)
                if newline < 0:
                    break
                lines.append(data[start:newline])
                start = newline + 1
            position += start
            data = data[start:]
        return lines, position

    def applied(self, offset: int, count: int) -> None:
        """Mark the events before `offset` as in Redis; a fully applied file is emptied in place."""
        self._applied_to = offset
        self.pending = max(self.pending - count, 0)
        if self._applied_to >= self.size:
            os.ftruncate(self._fd, 0)
            self._applied_to = self.size = self.pending = 0

    def prepend(self, lines: bytes, count: int) -> None:
        """Put `lines` before the unapplied events, atomically (a new file renamed over this one)."""
        fd = _locked_temporary(self.path)
        try:
            _write_all(fd, lines)
            offset = self._applied_to
            while block := os.pread(self._fd, _READ_BLOCK, offset):
                _write_all(fd, block)
                offset += len(block)
            os.fsync(fd)
            os.rename(_temporary_path(self.path), self.path)
        except OSError:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(_temporary_path(self.path))
            raise
        os.close(self._fd)
        self._fd = fd
        self.pending += count
        self.size = os.fstat(fd).st_size
        self._applied_to = 0

    def sync(self) -> None:
        os.fsync(self._fd)

    def close(self) -> None:
        """Release the lock; the file stays for whoever replays it."""
        os.close(self._fd)

    def remove(self) -> None:
        """Delete the file (while still locked, so nobody claims it half way) and release it."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        os.close(self._fd)

    def __repr__(self) -> str:
        return f"SpillFile({str(self.path)!r}, pending={self.pending})"


class SeenUnits:
    """Units this process exposed recently, per experiment: at most `size` of them, the oldest forgotten first.

    Two generations of plain sets rather than an LRU `OrderedDict` of (experiment, unit) tuples,
    whose insert and eviction touched cold memory for every new unit: under the benchmark's load
    (every call a new unit) the gateway took 83.2 us of CPU per call with these sets against 90.5
    with the ordered dict (docs/performance.md, item 16). A unit met again in the
    old generation moves to the young one; when the young one holds half of `size`, it becomes the
    old one and the previous old one is dropped whole. So a unit is remembered for between half
    of `size` and `size` newer units, and a forgotten unit only costs an event Redis ignores.
    """

    def __init__(self, size: int) -> None:
        self._young_max = max(1, size // 2)
        self._young: dict[str, set[str]] = {}
        self._old: dict[str, set[str]] = {}
        self._young_count = 0

    def __len__(self) -> int:
        """Units held, both generations: up to `size` (a unit met again can be in both for a while)."""
        return sum(len(units) for generation in (self._young, self._old) for units in generation.values())

    def __contains__(self, key: tuple[str, str]) -> bool:
        experiment, unit = key
        return unit in self._young.get(experiment, ()) or unit in self._old.get(experiment, ())

    def add(self, experiment: str, unit: str) -> bool:
        """Remember `unit`; True when it was not remembered already (its exposure is new to this process)."""
        young = self._young.get(experiment)
        if young is None:
            young = self._young[experiment] = set()
        elif unit in young:
            return False
        young.add(unit)
        self._young_count += 1
        new = unit not in self._old.get(experiment, ())
        if self._young_count >= self._young_max:
            self._old, self._young, self._young_count = self._young, {}, 0
        return new


@dataclass(slots=True)
class _CallTally:
    """Calls served by one variant since the last calls event."""

    requests: int = 0
    errors: int = 0
    latency: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS_MS) + 1))


@dataclass(slots=True)
class _Batch:
    """Events from the head of one source, grouped per (writer, experiment), each group written in one call."""

    source: SpillFile | None  # None: the in-memory buffer
    groups: dict[tuple[str, str], list[Event]]
    count: int
    end: int = 0  # the source file's offset after these events

    @property
    def unwritten(self) -> int:
        return sum(len(events) for events in self.groups.values())


class EventWriter:
    """Takes events from the request path without waiting and gets every one of them into Redis once."""

    def __init__(
        self,
        stats: StatsStore,
        *,
        spill_dir: Path,
        buffer_size: int = 100_000,
        batch_size: int = 500,
        flush_interval_s: float = 0.1,
        spill_max_bytes: int = 1 << 30,
        write_timeout_s: float = 2.0,
        shutdown_timeout_s: float = 5.0,
        seen_cache_size: int = 100_000,
        on_first_variant: FirstVariantListener | None = None,
        observer: EventObserver | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.writer_id = _writer_id()
        self._stats = stats
        self._spill_dir = spill_dir
        self._buffer_size = buffer_size
        self._batch_size = batch_size
        self._flush_interval_s = flush_interval_s
        self._spill_max_bytes = spill_max_bytes
        self._write_timeout_s = write_timeout_s
        self._shutdown_timeout_s = shutdown_timeout_s
        self._on_first_variant = on_first_variant
        self._observer = observer
        self._clock = clock
        # The numbers behind abrouter_events_* and abrouter_store_errors_total (see docs/events.md).
        self.written = 0
        self.dropped = 0
        self.store_errors: Counter[str] = Counter()  # failed Redis writes, under STORE_OPERATION
        self.spill_errors = 0  # the spill file could not be written or read (disk full, permissions)
        self.exposures: Counter[tuple[str, str]] = Counter()  # (experiment, variant): first exposures written
        self.outcomes: Counter[tuple[str, str, str]] = Counter()  # (experiment, variant, metric): attributed
        # (experiment, metric): unit not exposed when written; an exposure claiming them later counts them in `outcomes`
        self.unattributed: Counter[tuple[str, str]] = Counter()
        self._seq = itertools.count(1)
        self._memory: deque[Event] = deque()
        self._spill: SpillFile | None = None
        self._orphans: deque[SpillFile] = deque()
        self._batch: _Batch | None = None
        self._tallies: dict[tuple[str, str], _CallTally] = {}
        self._written_to: set[str] = set()  # experiments whose writers hash holds this writer's sequence
        self._seen = SeenUnits(seen_cache_size)
        self._wakeup = asyncio.Event()
        self._flush_now = False
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._failing_since: float | None = None
        self._last_drop_log = 0.0
        self._dropped_after_close = False

    @property
    def pending(self) -> int:
        """Events recorded and not yet in Redis: in memory, in flight and in spill files (abrouter_events_pending)."""
        in_flight = self._batch.unwritten if self._batch is not None and self._batch.source is None else 0
        spilled = self._spill.pending if self._spill is not None else 0
        return len(self._memory) + in_flight + spilled + sum(orphan.pending for orphan in self._orphans)

    @property
    def spill_path(self) -> Path | None:
        """This process's spill file, once it had to spill."""
        return self._spill.path if self._spill is not None else None

    async def start(self) -> None:
        """Claim spill files left by processes that are gone, then write in the background."""
        self._claim_orphans()
        self._task = asyncio.create_task(self._run(), name="event-writer")
        self._task.add_done_callback(_report_death)

    def record_call(
        self,
        experiment: Experiment,
        version: int,
        unit: str | None,
        assigned: Assignment | None,
        served: Assignment | None,
        *,
        status: int,
        elapsed_s: float,
    ) -> None:
        """Count one prediction call for its assigned variant and log the unit's exposure if it is the first.

        A call that fell back to control counts as an error of the variant that failed. Only hashed
        and sticky assignments expose; this process remembers units it exposed so their later
        calls cost no event (Redis keeps the first exposure anyway).
        """
        if assigned is None:
            return
        if self._closed:
            self._drop_after_close(experiment.name, unit, assigned)
            return
        name, variant = experiment.name, assigned.variant
        tally = self._tallies.get((name, variant))
        if tally is None:
            tally = self._tallies[(name, variant)] = _CallTally()
        tally.requests += 1
        if status >= 500 or (served is not None and served.reason is Reason.FALLBACK):
            tally.errors += 1
        latency_ms = elapsed_s * 1000.0
        tally.latency[bisect_left(LATENCY_BUCKETS_MS, latency_ms)] += 1  # latency_bucket(), less a call
        if unit is None or not assigned.exposed:
            return
        if not self._seen.add(name, unit):
            return
        if experiment.sticky and self._on_first_variant is not None:
            self._on_first_variant(name, unit, variant)
        self._enqueue(
            exposure_event(
                name,
                next(self._seq),
                unit=unit,
                variant=variant,
                version=version,
                reason=assigned.reason,  # a StrEnum member is the string itself; `.value` is a slow property
                at_ms=int(self._clock() * 1000),
                status=status,
                latency_ms=latency_ms,
            )
        )

    def record_outcomes(self, experiment: Experiment, outcomes: Iterable[tuple[str, str, float]]) -> None:
        """Queue (unit, metric, value) outcomes of declared metrics; `StoreUnavailable` if they cannot be kept.

        Refused rather than dropped, so the caller retries: after `close()` too, when nothing queued would be kept.
        """
        batch = list(outcomes)
        if self._closed:
            raise StoreUnavailable(
                f"outcomes of experiment {experiment.name!r} cannot be kept: this gateway process is shutting down; "
                "retry (another replica, or this one once restarted)"
            )
        kinds = {metric.name: metric.kind for metric in experiment.metrics}
        at_ms = int(self._clock() * 1000)
        events = [
            outcome_event(
                experiment.name, next(self._seq), unit=unit, metric=metric, kind=kinds[metric], value=value, at_ms=at_ms
            )
            for unit, metric, value in batch
        ]
        if not self.accepting(len(events), events):
            raise StoreUnavailable(
                f"the event buffer ({self._buffer_size} events) and spill file are full; retry later",
                details=[{"pending": self.pending}],
            )
        for event in events:
            self._enqueue(event)

    def exposed_here(self, experiment: str, unit: str) -> bool:
        """Whether this process recorded `unit`'s exposure recently (it may not be in Redis yet)."""
        return (experiment, unit) in self._seen

    def accepting(self, count: int = 1, events: Sequence[Event] = ()) -> bool:
        """Whether `count` more events can be kept, in memory or in the spill file.

        With the `events` themselves, their size in the spill file is measured rather than
        estimated: an outcome acknowledged with 202 must not be dropped for a long unit id.
        """
        if self._closed:
            return False
        spilling = self._spill is not None and self._spill.pending > 0
        if not spilling and len(self._memory) + count <= self._buffer_size:
            return True
        spilled = self._spill.size if self._spill is not None else 0
        size = sum(len(_encode(self.writer_id, e)) for e in events) if events else count * _LINE_BYTES_ESTIMATE
        return spilled + size <= self._spill_max_bytes

    async def drain(self, timeout_s: float, *, failing_grace_s: float | None = None) -> bool:
        """Write everything recorded so far, call counts included; False if that took longer than `timeout_s`.

        With `failing_grace_s`, give up that long after writes are seen failing, if sooner.
        """
        self._flush_now = True
        self._wakeup.set()
        started = time.monotonic()
        deadline = started + timeout_s
        while (now := time.monotonic()) < deadline:
            if self.pending == 0 and self._batch is None and not self._tallies:
                return True
            if failing_grace_s is not None and self._failing_since is not None:
                deadline = min(deadline, max(self._failing_since, started) + failing_grace_s)
            await asyncio.sleep(min(0.01, max(deadline - now, 0.0)))
        return False

    async def close(self) -> None:
        """Flush to Redis within `shutdown_timeout_s`, spill what is left, release the files.

        Once writes are seen failing, Redis gets `_SHUTDOWN_RETRY_S` more: a stop should not wait
        out the whole timeout for a Redis that is known to be away.
        """
        if self._closed:
            return
        self._closed = True
        if self._task is not None:
            await self.drain(self._shutdown_timeout_s, failing_grace_s=_SHUTDOWN_RETRY_S)
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            except Exception:
                # Whatever stopped the writer, the queue must still reach the spill file below.
                log.exception("the event writer failed")
        self._enqueue_tallies()
        kept = self._persist_queue()
        for orphan in self._orphans:
            orphan.close()
        self._orphans.clear()
        if kept == 0:
            await self._forget_this_writer()

    async def _forget_this_writer(self) -> None:
        """Remove this writer's field from the writers hashes: every event of it is in Redis, none can come again.

        Without this the hashes would grow by one field per process start. Best effort: a field
        left behind (Redis away at the end, a crash) costs a few bytes and nothing else.
        """
        try:
            async with asyncio.timeout(_SHUTDOWN_RETRY_S):
                for experiment in sorted(self._written_to):
                    await self._stats.forget_writer(experiment, self.writer_id)
        except (StoreUnavailable, TimeoutError):
            pass

    # -- the queue ---------------------------------------------------------------------------------

    def _enqueue(self, event: Event) -> None:
        # Once the spill file holds events, newer ones follow them there: the queue stays in order.
        spilling = self._spill is not None and self._spill.pending > 0
        if not spilling and len(self._memory) < self._buffer_size:
            self._memory.append(event)
            if len(self._memory) >= self._batch_size and self._failing_since is None:
                self._wakeup.set()
            return
        self._spill_events([event])

    def _spill_events(self, events: Sequence[Event]) -> None:
        lines = b"".join(_encode(self.writer_id, event) for event in events)
        try:
            if self._spill is None:
                self._spill = SpillFile.create(self._spill_dir, self.writer_id)
            if self._spill.size + len(lines) > self._spill_max_bytes:
                self._drop(len(events), f"the spill file {self._spill.path} reached {self._spill_max_bytes} bytes")
                return
            if self._spill.pending == 0:
                log.warning(
                    "event buffer full (%d events, Redis not keeping up): spilling to %s",
                    len(self._memory),
                    self._spill.path,
                )
            self._spill.append(lines, len(events))
        except OSError as exc:
            self.spill_errors += 1
            self._drop(len(events), f"cannot write the spill file in {self._spill_dir}: {exc}")

    def _drop(self, count: int, why: str) -> None:
        self.dropped += count
        if self._observer is not None:
            self._observer.events_dropped(count)
        now = time.monotonic()
        if now - self._last_drop_log >= _DROP_LOG_EVERY_S:
            self._last_drop_log = now
            log.error("events dropped (%d so far): %s", self.dropped, why)

    def _drop_after_close(self, experiment: str, unit: str | None, assigned: Assignment) -> None:
        """A call served after `close()` (past the shutdown grace): its count, and its exposure if new, are lost."""
        exposure = unit is not None and assigned.exposed and (experiment, unit) not in self._seen
        count = 1 + int(exposure)
        self.dropped += count
        if self._observer is not None:
            self._observer.events_dropped(count)
        if not self._dropped_after_close:
            self._dropped_after_close = True
            log.error(
                "a call of experiment %r was served after the event writer closed: its events are dropped "
                "(and counted in abrouter_events_dropped_total); this is logged once",
                experiment,
            )

    def _enqueue_tallies(self) -> None:
        tallies, self._tallies = self._tallies, {}
        for (name, variant), tally in tallies.items():
            self._enqueue(
                calls_event(
                    name,
                    next(self._seq),
                    variant=variant,
                    requests=tally.requests,
                    errors=tally.errors,
                    latency_counts=dict(enumerate(tally.latency)),
                )
            )

    def _next_batch(self) -> _Batch | None:
        """The oldest events: other processes' spill files first, then memory, then this process's file."""
        while self._orphans:
            orphan = self._orphans[0]
            lines, end = orphan.read(self._batch_size)
            if lines:
                return self._decoded_batch(orphan, lines, end)
            self._replayed(orphan)
        if self._memory:
            events = [self._memory.popleft() for _ in range(min(self._batch_size, len(self._memory)))]
            groups: dict[tuple[str, str], list[Event]] = {}
            for event in events:
                groups.setdefault((self.writer_id, event.experiment), []).append(event)
            return _Batch(source=None, groups=groups, count=len(events))
        if self._spill is not None and self._spill.pending > 0:
            lines, end = self._spill.read(self._batch_size)
            return self._decoded_batch(self._spill, lines, end)
        return None

    def _replayed(self, orphan: SpillFile) -> None:
        log.warning("replayed the spill file %s", orphan.path)
        orphan.remove()
        self._orphans.remove(orphan)

    def _decoded_batch(self, source: SpillFile, lines: Sequence[bytes], end: int) -> _Batch:
        groups: dict[tuple[str, str], list[Event]] = {}
        for line in lines:
            decoded = _decode(line)
            if decoded is None:
                self._drop(1, f"an unreadable line in the spill file {source.path}: {line[:200]!r}")
                continue
            writer, event = decoded
            groups.setdefault((writer, event.experiment), []).append(event)
        return _Batch(source=source, groups=groups, count=len(lines), end=end)

    def _persist_queue(self) -> int:
        """At shutdown: what Redis did not take goes to the spill file, ahead of what was already there.

        Returns the events this process leaves in its spill file for the next start.
        """
        head: list[Event] = []
        if self._batch is not None and self._batch.source is None:
            head = sorted((e for events in self._batch.groups.values() for e in events), key=lambda e: e.seq)
        self._batch = None
        head += self._memory
        self._memory.clear()
        try:
            if head:
                lines = b"".join(_encode(self.writer_id, event) for event in head)
                if self._spill is not None and self._spill.pending > 0:
                    self._spill.prepend(lines, len(head))
                else:
                    self._spill = self._spill or SpillFile.create(self._spill_dir, self.writer_id)
                    self._spill.append(lines, len(head))
            if self._spill is None:
                return 0
            kept = self._spill.pending
            if kept == 0:
                self._spill.remove()
            else:
                self._spill.sync()
                log.warning(
                    "%d events not written to Redis are kept in %s; they are written at the next start",
                    self._spill.pending,
                    self._spill.path,
                )
                self._spill.close()
        except OSError as exc:
            self.spill_errors += 1
            self._drop(len(head), f"cannot spill at shutdown: {exc}")
            kept = max(len(head), 1)  # what the file holds is unknown now: keep this writer's sequence in Redis
        self._spill = None
        return kept

    def _claim_orphans(self) -> None:
        claimed = {orphan.path for orphan in self._orphans}
        if self._spill is not None:
            claimed.add(self._spill.path)
        try:
            paths = sorted(self._spill_dir.glob(f"{SPILL_PREFIX}*{SPILL_SUFFIX}"))
        except OSError:
            return
        for path in paths:
            if path in claimed:
                continue
            try:
                orphan = SpillFile.claim(path)
            except OSError as exc:
                self.spill_errors += 1
                log.error("cannot open the spill file %s: %s", path, exc)
                continue
            if orphan is None:
                continue
            if orphan.pending == 0:
                orphan.remove()
                continue
            log.warning("replaying %d events left in %s by a process that is gone", orphan.pending, path)
            self._orphans.append(orphan)

    # -- the background task -----------------------------------------------------------------------

    async def _run(self) -> None:
        backoff = _BACKOFF_MIN_S
        last_tally = last_scan = time.monotonic()
        while True:
            now = time.monotonic()
            # Queued while a batch is retried too: during an outage the counts then reach the
            # buffer and the spill file like every other event, instead of waiting in memory.
            if self._tallies and (self._flush_now or now - last_tally >= self._flush_interval_s):
                self._enqueue_tallies()
                last_tally = now
            if self._batch is None:
                self._flush_now = False
                if now - last_scan >= _ORPHAN_SCAN_S:
                    self._claim_orphans()
                    last_scan = now
                self._batch = self._next_batch()
            batch = self._batch
            if self._observer is not None:
                self._observer.set_events_pending(self.pending)
            if batch is None:
                await self._sleep(self._flush_interval_s)
                continue
            if not await self._write(batch):
                await self._sleep(backoff)  # drain() and close() cut it short; new events do not
                backoff = min(backoff * 2, _BACKOFF_MAX_S)
                continue
            backoff = _BACKOFF_MIN_S
            self._batch = None
            if batch.source is not None:
                batch.source.applied(batch.end, batch.count)
                if batch.source is not self._spill and batch.source.size == 0:
                    self._replayed(batch.source)
            if batch.count < self._batch_size and not self._flush_now:
                await self._sleep(self._flush_interval_s)  # a short batch: let the next one fill

    async def _sleep(self, seconds: float) -> None:
        self._wakeup.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._wakeup.wait()

    async def _write(self, batch: _Batch) -> bool:
        """Write every group of `batch` not yet written; True once all are in Redis."""

        async def write_group(key: tuple[str, str], events: list[Event]) -> str | None:
            writer, experiment = key
            try:
                applied = await self._stats.apply(experiment, writer, events)
            except StoreUnavailable as exc:
                return exc.message
            del batch.groups[key]
            if writer == self.writer_id:
                self._written_to.add(experiment)
            self._account(experiment, events, applied)
            return None

        try:
            async with asyncio.timeout(self._write_timeout_s):
                writes = [write_group(key, events) for key, events in list(batch.groups.items())]
                failures = [failure for failure in await asyncio.gather(*writes) if failure is not None]
        except TimeoutError:
            failures = [f"Redis did not answer within {self._write_timeout_s:g} s"]
        if failures:
            self.store_errors[STORE_OPERATION] += 1
            if self._observer is not None:
                self._observer.store_error(STORE_OPERATION)
            if self._failing_since is None:
                self._failing_since = time.monotonic()
                log.warning("cannot write events to Redis, retrying with backoff: %s", failures[0])
            return False
        if self._failing_since is not None:
            log.warning(
                "events are written to Redis again after %.1f s; %d pending",
                time.monotonic() - self._failing_since,
                self.pending,
            )
            self._failing_since = None
        return True

    def _account(self, experiment: str, events: Sequence[Event], applied: Applied) -> None:
        """Count what the script did; events missing from `applied.results` had their kind's usual result."""
        exposures = applied.exposed  # first exposures, those that claimed outcomes included
        outcomes: Counter[tuple[str, str]] = Counter()
        for index, result in applied.results.items():
            event = events[index]
            if event.kind is EventKind.EXPOSURE:
                if result.startswith("new"):
                    # outcomes that reached Redis before this exposure, parked there until now
                    for metric, count in orjson.loads(result[3:]).items():
                        outcomes[(event.args[1], metric)] += int(count)
                elif result.startswith("old:") and self._on_first_variant is not None:
                    self._on_first_variant(experiment, event.args[0], result.removeprefix("old:"))
            elif event.kind is EventKind.OUTCOME:
                if result.startswith("att:"):
                    outcomes[(result.removeprefix("att:"), event.args[1])] += 1
                elif result in ("park", "un"):
                    self.unattributed[(experiment, event.args[1])] += 1
        self.written += len(events)
        for variant, count in exposures.items():
            self.exposures[(experiment, variant)] += count
        for (variant, metric), count in outcomes.items():
            self.outcomes[(experiment, variant, metric)] += count
        if self._observer is not None:
            self._observer.events_written(len(events))
            for variant, count in exposures.items():
                self._observer.exposure(experiment, variant, count)
            for (variant, metric), count in outcomes.items():
                self._observer.outcomes(experiment, variant, metric, count)


class NullEventWriter(EventWriter):
    """`ABROUTER_EVENTS_ENABLED=false`: the writer's interface, with nothing recorded, queued or written.

    Outcomes are refused (`FeatureDisabled`) rather than silently lost. Spill files that other
    processes left are not touched: a gateway with event logging on replays them.
    """

    async def start(self) -> None:
        """No background task and no spill files claimed."""

    def record_call(
        self,
        experiment: Experiment,
        version: int,
        unit: str | None,
        assigned: Assignment | None,
        served: Assignment | None,
        *,
        status: int,
        elapsed_s: float,
    ) -> None:
        pass

    def record_outcomes(self, experiment: Experiment, outcomes: Iterable[tuple[str, str, float]]) -> None:
        raise FeatureDisabled(
            f"outcomes of experiment {experiment.name!r} cannot be kept: this gateway runs with event logging off "
            "(ABROUTER_EVENTS_ENABLED=false)"
        )

    def accepting(self, count: int = 1, events: Sequence[Event] = ()) -> bool:
        return False

    async def drain(self, timeout_s: float, *, failing_grace_s: float | None = None) -> bool:
        return True

    async def close(self) -> None:
        self._closed = True


def _report_death(task: asyncio.Task[None]) -> None:
    """Say at once when the writer stops by a bug, rather than when the buffer fills."""
    if not task.cancelled() and task.exception() is not None:
        log.error("the event writer stopped; events now wait for shutdown to be spilled", exc_info=task.exception())


def _encode(writer: str, event: Event) -> bytes:
    return orjson.dumps([writer, event.seq, event.experiment, event.kind.value, *event.args]) + b"\n"


def _decode(line: bytes) -> tuple[str, Event] | None:
    """(writer, event) from a spill-file line; None for a line that is not one we wrote."""
    try:
        writer, seq, experiment, kind, *args = orjson.loads(line)
        event_kind = EventKind(kind)
    except (orjson.JSONDecodeError, ValueError, TypeError):
        return None
    valid = (
        isinstance(writer, str)
        and isinstance(seq, int)
        and isinstance(experiment, str)
        and len(args) == ARGUMENTS[event_kind]
        and all(isinstance(arg, str) for arg in args)
    )
    return (writer, Event(experiment, seq, event_kind, tuple(args))) if valid else None


def _writer_id() -> str:
    """Unique per process start; host and pid make spill files and the writers hash readable to operators."""
    host = re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname())[:64] or "host"
    return f"{host}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _temporary_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp")


def _locked_temporary(path: Path) -> int:
    """A new locked file beside `path`, to be renamed over it: nobody can claim it before it is complete."""
    fd = os.open(_temporary_path(path), os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _count_lines(fd: int) -> int:
    count, offset, last = 0, 0, b"\n"
    while block := os.pread(fd, _READ_BLOCK, offset):
        count += block.count(b"\n")
        offset += len(block)
        last = block[-1:]
    return count + (last != b"\n")
