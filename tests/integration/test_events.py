"""The event writer against a real Redis: exposures once per unit, counts, outages, spill files and replays."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio
from prometheus_client import CollectorRegistry
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from router.assignment.assign import Assignment, Reason
from router.config.schema import Experiment
from router.errors import StoreUnavailable
from router.metrics import Metrics
from router.store.embedded import RedisServer
from router.store.events import SPILL_PREFIX, SPILL_SUFFIX, EventWriter
from router.store.keys import Keys
from router.store.stats import (
    Applied,
    Event,
    EventKind,
    ExperimentStats,
    StatsStore,
    exposure_event,
    latency_bucket,
    outcome_event,
)

EXPERIMENT = Experiment.model_validate(
    {
        "name": "exp",
        "control": "a",
        "variants": [
            {"name": "a", "weight": 50, "url": "http://127.0.0.1:9/a"},
            {"name": "b", "weight": 50, "url": "http://127.0.0.1:9/b"},
        ],
        "metrics": [{"name": "converted", "kind": "binomial"}, {"name": "revenue", "kind": "mean"}],
    }
)

WriterFactory = Callable[..., EventWriter]


def hashed(variant: str) -> Assignment:
    return Assignment(variant, Reason.HASHED, bucket=0.5)


def expose(writer: EventWriter, unit: str, variant: str = "a", *, status: int = 200, elapsed_s: float = 0.004) -> None:
    """One prediction call of `unit`, assigned `variant` by hash."""
    writer.record_call(EXPERIMENT, 1, unit, hashed(variant), hashed(variant), status=status, elapsed_s=elapsed_s)


def spill_files(directory: Path) -> list[Path]:
    return sorted(directory.glob(f"{SPILL_PREFIX}*{SPILL_SUFFIX}"))


def fail_fast_client(url: str) -> redis.asyncio.Redis:
    """A client that reports a stopped Redis at once instead of retrying for seconds."""
    return redis.asyncio.Redis.from_url(
        url, socket_timeout=0.3, socket_connect_timeout=0.3, retry=Retry(NoBackoff(), 0)
    )


async def read_stats(client: redis.asyncio.Redis, name: str = "exp") -> ExperimentStats:
    return await StatsStore(client, keys=Keys(), stream_maxlen=1000).read(name)


@pytest.fixture
def spill_dir(tmp_path: Path) -> Path:
    return tmp_path / "spill"


@pytest.fixture
async def make_writer(spill_dir: Path) -> AsyncIterator[WriterFactory]:
    """Started writers on a given client (fast flushes by default); closed after the test."""
    writers: list[EventWriter] = []

    def make(client: redis.asyncio.Redis, **options: Any) -> EventWriter:
        settings = {"spill_dir": spill_dir, "flush_interval_s": 0.02, "shutdown_timeout_s": 0.2, **options}
        writer = EventWriter(StatsStore(client, keys=Keys(), stream_maxlen=settings.pop("maxlen", 1000)), **settings)
        writers.append(writer)
        return writer

    yield make
    for writer in writers:
        await writer.close()


@pytest.fixture
async def outage_client(fresh_redis_server: RedisServer) -> AsyncIterator[redis.asyncio.Redis]:
    client = fail_fast_client(fresh_redis_server.url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def frozen(fresh_redis_server: RedisServer) -> Iterator[Callable[[bool], None]]:
    """freeze(True) stops the Redis process (SIGSTOP: it accepts nothing and answers nothing), freeze(False) resumes."""
    pid = fresh_redis_server.pid
    assert pid is not None

    def freeze(on: bool) -> None:
        os.kill(pid, signal.SIGSTOP if on else signal.SIGCONT)

    yield freeze
    os.kill(pid, signal.SIGCONT)


async def test_a_unit_called_many_times_is_one_exposure_of_its_first_variant(
    redis_client: redis.asyncio.Redis, make_writer: WriterFactory
) -> None:
    writer = make_writer(redis_client)
    await writer.start()
    for _ in range(3):
        expose(writer, "u1", "a")
    expose(writer, "u1", "b")  # after a weight change: still the first exposure that counts
    assert await writer.drain(5)
    stats = await read_stats(redis_client)
    assert (stats.variant("a").units, stats.variant("b").units) == (1, 0)
    assert (stats.variant("a").requests, stats.variant("b").requests) == (3, 1)
    assert await redis_client.hget(Keys().exposed("exp"), "u1") == b"a"


async def test_a_unit_exposed_by_two_writers_counts_once_for_the_first(
    redis_client: redis.asyncio.Redis, make_writer: WriterFactory
) -> None:
    first, second = make_writer(redis_client), make_writer(redis_client)
    await first.start()
    expose(first, "u1", "a")
    assert await first.drain(5)
    await second.start()
    expose(second, "u1", "b")
    assert await second.drain(5)
    stats = await read_stats(redis_client)
    assert (stats.variant("a").units, stats.variant("b").units) == (1, 0)
    assert (first.exposures[("exp", "a")], second.exposures[("exp", "b")]) == (1, 0)


@pytest.mark.parametrize(
    "reason",
    [
        pytest.param(Reason.FORCED, id="forced"),
        pytest.param(Reason.OVERRIDE, id="override"),
        pytest.param(Reason.PAUSED, id="paused"),
        pytest.param(Reason.CONCLUDED, id="concluded"),
        pytest.param(Reason.NOT_ENROLLED, id="not-enrolled"),
        pytest.param(Reason.NO_UNIT, id="no-unit"),
    ],
)
async def test_unrandomised_traffic_is_counted_as_requests_but_never_exposed(
    redis_client: redis.asyncio.Redis, make_writer: WriterFactory, reason: Reason
) -> None:
    writer = make_writer(redis_client)
    await writer.start()
    assignment = Assignment("b", reason)
    writer.record_call(EXPERIMENT, 1, "u1", assignment, assignment, status=200, elapsed_s=0.001)
    assert await writer.drain(5)
    stats = await read_stats(redis_client)
    assert (stats.variant("b").units, stats.variant("b").requests) == (0, 1)
    assert await redis_client.hlen(Keys().exposed("exp")) == 0


async def test_a_sticky_assignment_is_an_exposure(
    redis_client: redis.asyncio.Redis, make_writer: WriterFactory
) -> None:
    writer = make_writer(redis_client)
    await writer.start()
    sticky = Assignment("b", Reason.STICKY)
    writer.record_call(EXPERIMENT, 1, "u1", sticky, sticky, status=200, elapsed_s=0.001)
    assert await writer.drain(5)
    assert (await read_stats(redis_client)).variant("b").units == 1


async def test_a_fallback_counts_an_error_for_the_variant_that_failed(
    redis_client: redis.asyncio.Redis, make_writer: WriterFactory
) -> None:
    writer = make_writer(redis_client)
    await writer.start()
    fallback = Assignment("a", Reason.FALLBACK)
    writer.record_call(EXPERIMENT, 1, "u1", hashed("b"), fallback, status=200, elapsed_s=0.001)
    writer.record_call(EXPERIMENT, 1, "u2", hashed("b"), None, status=504, elapsed_s=1.0)
    expose(writer, "u3", "b", status=422)  # the caller's mistake is not the variant's error
    assert await writer.drain(5)
    b = (await read_stats(redis_client)).variant("b")
    assert (b.units, b.requests, b.errors) == (3, 3, 2)


async def test_call_counts_and_latency_histograms_sum_over_writers(
    redis_client: redis.asyncio.Redis, make_writer: WriterFactory
) -> None:
    writers = [make_writer(redis_client), make_writer(redis_client)]
    latencies_ms = [1.0, 3.0, 3.0, 7.0, 45.0, 45.0, 45.0, 90.0, 700.0, 120_000.0]
    for writer in writers:
        await writer.start()
        for i, latency in enumerate(latencies_ms):
            expose(writer, f"u{i}", "a", elapsed_s=latency / 1000)
    for writer in writers:
        assert await writer.drain(5)
    a = (await read_stats(redis_client)).variant("a")
    assert (a.units, a.requests) == (len(latencies_ms), 2 * len(latencies_ms))
    expected = [0] * len(a.latency_counts)
    for latency in latencies_ms:
        expected[latency_bucket(latency)] += 2
    assert list(a.latency_counts) == expected
    assert 40 < (a.latency_ms(0.5) or 0) <= 50


async def test_a_batch_applied_twice_counts_each_event_once(redis_client: redis.asyncio.Redis) -> None:
    stats = StatsStore(redis_client, keys=Keys(), stream_maxlen=1000)
    events = [
        exposure_event("exp", 1, unit="u1", variant="a", version=1, reason="hashed", at_ms=0, status=200, latency_ms=1),
        outcome_event("exp", 2, unit="u1", metric="revenue", kind=EXPERIMENT.metrics[1].kind, value=2.5, at_ms=0),
    ]
    assert await stats.apply("exp", "w1", events) == Applied(exposed={"a": 1}, results={1: "att:a"})
    assert await stats.apply("exp", "w1", events) == Applied(exposed={}, results={0: "dup", 1: "dup"})
    revenue = (await stats.read("exp")).variant("a").metric("revenue")
    assert (revenue.n, revenue.sum, revenue.sum_squares, revenue.outcomes) == (1, 2.5, 6.25, 1)


def new_unit(seq: int, unit: str) -> Event:
    return exposure_event(
        "exp", seq, unit=unit, variant="a", version=1, reason="hashed", at_ms=0, status=200, latency_ms=1
    )


@pytest.mark.parametrize(
    "events",
    [
        pytest.param([new_unit(1, "u1"), Event("exp", 2, EventKind.EXPOSURE, ("u2", "a"))], id="short-last"),
        pytest.param([Event("exp", 1, EventKind.EXPOSURE, ("u1", "a")), new_unit(2, "u2")], id="short-first"),
        pytest.param([Event("exp", 1, EventKind.CALLS, ("a", "1", "0", "", "extra")), new_unit(2, "u2")], id="long"),
    ],
)
async def test_a_batch_with_an_event_of_the_wrong_width_is_refused_whole(
    redis_client: redis.asyncio.Redis, events: list[Event]
) -> None:
    stats = StatsStore(redis_client, keys=Keys(), stream_maxlen=1000)
    with pytest.raises(StoreUnavailable, match="malformed event"):
        await stats.apply("exp", "w1", events)
    assert await redis_client.keys("*") == []


async def test_a_batch_longer_than_one_trim_can_remove_leaves_the_stream_at_about_its_maximum_length(
    redis_client: redis.asyncio.Redis,
) -> None:
    # one XTRIM removes at most 100 stream nodes (10 000 entries by default); the batch adds more than that
    stats = StatsStore(redis_client, keys=Keys(), stream_maxlen=50)
    assert (await stats.apply("exp", "w1", [new_unit(n, f"u{n}") for n in range(1, 12_001)])).exposed == {"a": 12_000}
    assert await redis_client.xlen(Keys().events("exp")) < 50 + 200


async def test_the_stream_holds_each_first_exposure_and_each_outcome(
    redis_client: redis.asyncio.Redis, make_writer: WriterFactory
) -> None:
    writer = make_writer(redis_client)
    await writer.start()
    expose(writer, "u1", "a")
    expose(writer, "u1", "a")
    expose(writer, "u2", "b")
    writer.record_outcomes(EXPERIMENT, [("u1", "revenue", 4.0), ("nobody", "converted", 1.0)])
    assert await writer.drain(5)
    entries = await redis_client.xrange(Keys().events("exp"))
    kinds = [(fields[b"type"], fields[b"unit"], fields[b"variant"]) for _, fields in entries]
    assert kinds == [
        (b"exposure", b"u1", b"a"),
        (b"exposure", b"u2", b"b"),
        (b"outcome", b"u1", b"a"),
        (b"outcome", b"nobody", b""),
    ]


async def test_the_stream_is_trimmed_to_about_its_maximum_length(
    redis_client: redis.asyncio.Redis, make_writer: WriterFactory
) -> None:
    writer = make_writer(redis_client, maxlen=50)
    await writer.start()
    for i in range(2000):
        expose(writer, f"u{i}")
    assert await writer.drain(10)
    assert (await read_stats(redis_client)).variant("a").units == 2000
    # approximate trimming removes whole stream nodes (100 entries by default)
    assert await redis_client.xlen(Keys().events("exp")) < 50 + 200


async def test_events_wait_while_redis_is_down_and_are_written_once_it_is_back(
    fresh_redis_server: RedisServer, outage_client: redis.asyncio.Redis, make_writer: WriterFactory
) -> None:
    writer = make_writer(outage_client)
    await writer.start()
    fresh_redis_server.stop()
    for i in range(300):
        expose(writer, f"u{i}")
    await asyncio.sleep(0.3)
    assert writer.pending == 301  # and the calls event, queued behind them while the batch is retried
    assert writer.store_errors["events"] > 0
    fresh_redis_server.start()
    assert await writer.drain(10)
    assert (await read_stats(outage_client)).variant("a").units == 300
    assert (writer.written, writer.dropped) == (301, 0)  # 300 exposures and one calls event


async def test_call_counts_made_during_an_outage_reach_the_spill_file_so_a_crash_keeps_them(
    fresh_redis_server: RedisServer, outage_client: redis.asyncio.Redis, make_writer: WriterFactory
) -> None:
    writer = make_writer(outage_client, buffer_size=1)
    await writer.start()
    fresh_redis_server.stop()
    expose(writer, "u1")  # the head batch, retried while Redis is away
    await asyncio.sleep(0.1)
    for _round in range(3):  # returning calls: counts only, queued each flush interval behind the batch
        for _ in range(10):
            expose(writer, "u1", status=500)
        await asyncio.sleep(0.1)

    assert writer.spill_path is not None
    spilled = [orjson.loads(line) for line in writer.spill_path.read_bytes().splitlines()]
    calls_events = [line for line in spilled if line[3] == EventKind.CALLS.value]
    # on disk, as a crash would leave them; the first call's count fills the buffer of one
    assert sum(int(line[5]) for line in calls_events) == 30
    assert all(line[6] == line[5] for line in calls_events)  # every one of them an error
    fresh_redis_server.start()
    assert await writer.drain(10)
    a = (await read_stats(outage_client)).variant("a")
    assert (a.units, a.requests, a.errors, writer.dropped) == (1, 31, 30, 0)


async def test_outcomes_are_refused_rather_than_accepted_and_dropped_when_the_spill_file_is_nearly_full(
    fresh_redis_server: RedisServer, outage_client: redis.asyncio.Redis, make_writer: WriterFactory
) -> None:
    """Lines with long unit ids are twice the size estimate: the check measures them."""
    writer = make_writer(outage_client, buffer_size=10, spill_max_bytes=60_000)
    await writer.start()
    fresh_redis_server.stop()
    accepted = 0
    with pytest.raises(StoreUnavailable, match="spill file are full"):
        for call in range(100):
            batch = [(f"{call}-{i}-" + "u" * 240, "revenue", 1.5) for i in range(20)]
            writer.record_outcomes(EXPERIMENT, batch)  # what the endpoint acknowledges with 202
            accepted += len(batch)
    assert accepted > 0
    assert writer.dropped == 0
    assert writer.pending == accepted


async def test_past_the_buffer_events_spill_to_a_file_and_are_replayed_when_redis_is_back(
    fresh_redis_server: RedisServer, outage_client: redis.asyncio.Redis, make_writer: WriterFactory, spill_dir: Path
) -> None:
    writer = make_writer(outage_client, buffer_size=10)
    await writer.start()
    fresh_redis_server.stop()
    for i in range(200):
        expose(writer, f"u{i}")
    writer.record_outcomes(EXPERIMENT, [(f"u{i}", "revenue", 1.0) for i in range(200)])
    assert writer.spill_path is not None
    assert len(writer.spill_path.read_bytes().splitlines()) >= 390
    assert writer.pending == 400
    fresh_redis_server.start()
    assert await writer.drain(10)
    a = (await read_stats(outage_client)).variant("a")
    assert (a.units, a.metric("revenue").sum, writer.dropped) == (200, 200.0, 0)
    assert writer.spill_path.stat().st_size == 0
    await writer.close()
    assert spill_files(spill_dir) == []


async def test_a_write_that_timed_out_after_redis_applied_it_is_not_counted_twice(
    fresh_redis_server: RedisServer,
    outage_client: redis.asyncio.Redis,
    make_writer: WriterFactory,
    frozen: Callable[[bool], None],
) -> None:
    writer = make_writer(outage_client, write_timeout_s=0.2)
    await writer.start()
    frozen(True)
    for i in range(50):
        expose(writer, f"u{i}")
    writer.record_outcomes(EXPERIMENT, [(f"u{i}", "revenue", 2.0) for i in range(50)])
    for _ in range(250):  # the first attempt times out after write_timeout_s
        if writer.store_errors["events"]:
            break
        await asyncio.sleep(0.02)
    assert writer.store_errors["events"] > 0
    frozen(False)  # Redis now runs the batch it had already received, then our retry of it
    assert await writer.drain(10)
    revenue = (await read_stats(outage_client)).variant("a").metric("revenue")
    assert (revenue.n, revenue.sum, revenue.sum_squares) == (50, 100.0, 200.0)


async def test_closing_while_redis_is_down_spills_the_queue_and_the_next_writer_replays_it(
    fresh_redis_server: RedisServer, outage_client: redis.asyncio.Redis, make_writer: WriterFactory, spill_dir: Path
) -> None:
    first = make_writer(outage_client)
    await first.start()
    fresh_redis_server.stop()
    for i in range(100):
        expose(first, f"u{i}", "b")
    await first.close()
    [left] = spill_files(spill_dir)
    assert len(left.read_bytes().splitlines()) == 101  # 100 exposures and the calls event
    fresh_redis_server.start()
    second = make_writer(outage_client)
    await second.start()
    assert await second.drain(10)
    b = (await read_stats(outage_client)).variant("b")
    assert (b.units, b.requests) == (100, 100)
    assert spill_files(spill_dir) == []


async def test_a_spill_file_replayed_twice_counts_its_events_once(
    fresh_redis_server: RedisServer, outage_client: redis.asyncio.Redis, make_writer: WriterFactory, spill_dir: Path
) -> None:
    first = make_writer(outage_client)
    await first.start()
    fresh_redis_server.stop()
    for i in range(100):
        expose(first, f"u{i}")
    first.record_outcomes(EXPERIMENT, [(f"u{i}", "revenue", 3.0) for i in range(100)])
    await first.close()
    [left] = spill_files(spill_dir)
    shutil.copy(left, spill_dir / f"{SPILL_PREFIX}copy{SPILL_SUFFIX}")
    fresh_redis_server.start()
    second = make_writer(outage_client)
    await second.start()
    assert await second.drain(10)
    a = (await read_stats(outage_client)).variant("a")
    assert (a.units, a.requests, a.metric("revenue").sum) == (100, 100, 300.0)
    assert spill_files(spill_dir) == []


async def test_the_spill_file_of_a_running_writer_is_left_alone(
    fresh_redis_server: RedisServer, outage_client: redis.asyncio.Redis, make_writer: WriterFactory, spill_dir: Path
) -> None:
    running = make_writer(outage_client, buffer_size=5)
    await running.start()
    fresh_redis_server.stop()
    for i in range(50):
        expose(running, f"u{i}")
    newcomer = make_writer(outage_client)
    await newcomer.start()
    assert newcomer.pending == 0
    assert spill_files(spill_dir) == [running.spill_path]


async def test_a_torn_last_line_of_a_spill_file_is_counted_as_dropped(
    fresh_redis_server: RedisServer, outage_client: redis.asyncio.Redis, make_writer: WriterFactory, spill_dir: Path
) -> None:
    first = make_writer(outage_client)
    await first.start()
    fresh_redis_server.stop()
    for i in range(10):
        expose(first, f"u{i}")
    await first.close()
    [left] = spill_files(spill_dir)
    with left.open("ab") as spilled:
        spilled.write(b'["writer", 99, "exp", "e", "u-torn"')  # a process killed mid-write
    fresh_redis_server.start()
    second = make_writer(outage_client)
    await second.start()
    assert await second.drain(10)
    assert (await read_stats(outage_client)).variant("a").units == 10
    assert second.dropped == 1


async def test_with_the_spill_file_full_further_events_are_dropped_and_counted(
    fresh_redis_server: RedisServer, outage_client: redis.asyncio.Redis, make_writer: WriterFactory
) -> None:
    writer = make_writer(outage_client, buffer_size=5, spill_max_bytes=2000)
    await writer.start()
    fresh_redis_server.stop()
    for i in range(100):
        expose(writer, f"u{i}")
    assert writer.dropped > 0
    assert writer.dropped + writer.pending == 100
    assert not writer.accepting()


async def test_an_observer_such_as_the_metrics_hears_what_the_writer_does(
    redis_client: redis.asyncio.Redis, make_writer: WriterFactory
) -> None:
    registry = CollectorRegistry()
    writer = make_writer(redis_client, observer=Metrics(registry))
    await writer.start()
    expose(writer, "u1", "a")
    expose(writer, "u2", "b")
    writer.record_outcomes(EXPERIMENT, [("u1", "revenue", 1.0), ("u1", "converted", 1.0), ("nobody", "revenue", 1.0)])
    assert await writer.drain(5)
    await asyncio.sleep(0.1)  # the pending gauge is refreshed on the writer's next round

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    assert value("abrouter_exposures_total", experiment="exp", variant="a") == 1
    assert value("abrouter_outcomes_total", experiment="exp", variant="a", metric="revenue") == 1
    assert value("abrouter_events_written_total") == writer.written == 7  # 2 exposures, 3 outcomes, 2 calls
    assert value("abrouter_events_pending") == 0


async def test_closing_with_redis_known_to_be_down_does_not_wait_out_the_shutdown_timeout(
    fresh_redis_server: RedisServer, outage_client: redis.asyncio.Redis, make_writer: WriterFactory, spill_dir: Path
) -> None:
    writer = make_writer(outage_client, shutdown_timeout_s=30)
    await writer.start()
    fresh_redis_server.stop()
    expose(writer, "u1")
    started = time.monotonic()
    await writer.close()
    assert time.monotonic() - started < 3
    assert len(spill_files(spill_dir)) == 1


@pytest.mark.parametrize(
    "unit",
    [
        pytest.param("josé-ü-日本", id="unicode"),
        pytest.param('a"b\\c', id="quote-and-backslash"),
        pytest.param("a:b:c", id="colons"),
        pytest.param("x" * 256, id="longest"),
    ],
)
async def test_unit_ids_reach_redis_exactly_as_given(
    redis_client: redis.asyncio.Redis, make_writer: WriterFactory, unit: str
) -> None:
    writer = make_writer(redis_client)
    await writer.start()
    expose(writer, unit, "b")
    writer.record_outcomes(EXPERIMENT, [(unit, "revenue", 1.5)])
    assert await writer.drain(5)
    assert await redis_client.hget(Keys().exposed("exp"), unit) == b"b"
    assert (await read_stats(redis_client)).variant("b").metric("revenue").sum == 1.5


async def test_calls_recorded_after_close_are_counted_as_dropped_and_logged_once(
    redis_client: redis.asyncio.Redis, make_writer: WriterFactory, caplog: pytest.LogCaptureFixture
) -> None:
    registry = CollectorRegistry()
    writer = make_writer(redis_client, observer=Metrics(registry))
    await writer.start()
    expose(writer, "u1", "a")
    await writer.close()
    with caplog.at_level("ERROR", logger="abrouter.events"):
        expose(writer, "u1", "a")  # a unit it exposed before: only the call's count is lost
        expose(writer, "u2", "b")  # a new unit: its call's count and its exposure
    assert writer.dropped == registry.get_sample_value("abrouter_events_dropped_total") == 3
    assert len([r for r in caplog.records if "after the event writer closed" in r.getMessage()]) == 1
    stats = await read_stats(redis_client)
    assert (stats.variant("a").requests, stats.variant("b").units) == (1, 0)


async def test_outcomes_recorded_after_close_are_refused_so_the_caller_retries(
    redis_client: redis.asyncio.Redis, make_writer: WriterFactory
) -> None:
    writer = make_writer(redis_client)
    await writer.start()
    await writer.close()
    with pytest.raises(StoreUnavailable, match="shutting down"):
        writer.record_outcomes(EXPERIMENT, [("u1", "revenue", 1.0)])
    assert writer.dropped == 0


async def test_a_writer_that_closes_with_everything_written_leaves_no_field_in_the_writers_hash(
    redis_client: redis.asyncio.Redis, make_writer: WriterFactory
) -> None:
    writer = make_writer(redis_client)
    await writer.start()
    expose(writer, "u1", "a")
    assert await writer.drain(5)
    assert await redis_client.hexists(Keys().writers("exp"), writer.writer_id)
    await writer.close()
    assert not await redis_client.hexists(Keys().writers("exp"), writer.writer_id)
    assert (await read_stats(redis_client)).variant("a").units == 1


async def test_a_writer_that_leaves_events_in_its_spill_file_keeps_its_field_for_their_replay(
    fresh_redis_server: RedisServer, outage_client: redis.asyncio.Redis, make_writer: WriterFactory, spill_dir: Path
) -> None:
    writer = make_writer(outage_client)
    await writer.start()
    expose(writer, "u1", "a")
    assert await writer.drain(5)
    fresh_redis_server.stop()
    expose(writer, "u2", "a")
    await writer.close()
    assert len(spill_files(spill_dir)) == 1
    fresh_redis_server.start()
    assert await outage_client.hexists(Keys().writers("exp"), writer.writer_id)


def test_a_spill_write_that_fails_half_way_leaves_no_torn_line_behind(tmp_path: Path) -> None:
    """A full disk, played by RLIMIT_FSIZE in a child process: the event after the failure is kept whole."""
    script = f"""
import errno, resource, signal
from pathlib import Path
from router.store.events import SpillFile
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing us
spill = SpillFile.create(Path({str(tmp_path)!r}), "writer")
line = b'["writer",1,"exp","o","u","revenue","mean","1.0","0"]' + b"\\n"
_, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (len(line) * 2 + 10, hard))  # room for two lines and a bit
spill.append(line * 2, 2)
try:
    spill.append(line * 2, 2)  # 10 bytes of it fit: a torn line
except OSError as exc:
    assert exc.errno == errno.EFBIG, exc
else:
    raise AssertionError("the write past the limit did not fail")
resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))  # the disk has room again
spill.append(line, 1)
spill.close()
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr

    [path] = spill_files(tmp_path)
    lines = path.read_bytes().splitlines()
    assert len(lines) == 3
    assert all(orjson.loads(line)[0] == "writer" for line in lines)
