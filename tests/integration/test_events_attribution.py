"""Outcomes that reach Redis before their unit's exposure (another worker's queue, a later spill replay) are kept."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis.asyncio

from router.assignment.assign import Assignment, Reason
from router.config.schema import Experiment, MetricKind
from router.store.events import EventWriter
from router.store.keys import Keys
from router.store.stats import Applied, Event, StatsStore, exposure_event, outcome_event

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
METRICS = ["converted", "revenue"]


def exposure(seq: int, unit: str, variant: str) -> Event:
    return exposure_event(
        "exp", seq, unit=unit, variant=variant, version=1, reason="hashed", at_ms=0, status=200, latency_ms=1.0
    )


def revenue(seq: int, unit: str, value: float) -> Event:
    return outcome_event("exp", seq, unit=unit, metric="revenue", kind=MetricKind.MEAN, value=value, at_ms=0)


def converted(seq: int, unit: str, value: float) -> Event:
    return outcome_event("exp", seq, unit=unit, metric="converted", kind=MetricKind.BINOMIAL, value=value, at_ms=0)


@pytest.fixture
def stats(redis_client: redis.asyncio.Redis) -> StatsStore:
    return StatsStore(redis_client, keys=Keys(), stream_maxlen=1000)


async def test_an_outcome_written_before_its_units_exposure_is_attributed_once_the_exposure_arrives(
    stats: StatsStore,
) -> None:
    # writer "B" reports u1's outcomes; writer "A" exposed u1 but its batch reaches Redis later
    assert await stats.apply(
        "exp", "B", [revenue(1, "u1", 2.5), revenue(2, "u1", 4.0), revenue(3, "u2", 1.0)]
    ) == Applied(exposed={}, results={0: "park", 1: "park", 2: "park"})
    assert await stats.apply("exp", "A", [exposure(1, "u1", "b"), exposure(2, "u2", "b")]) == Applied(
        exposed={"b": 2}, results={0: 'new{"revenue":2}', 1: 'new{"revenue":1}'}
    )
    stored = await stats.read("exp", metrics=METRICS)
    b = stored.variant("b").metric("revenue")
    assert (b.n, b.sum, b.sum_squares, b.outcomes) == (2, 7.5, 6.5**2 + 1.0, 3)
    assert stored.unattributed == {"converted": 0, "revenue": 0}


async def test_an_outcome_parked_earlier_in_the_same_batch_is_claimed_by_the_units_exposure(
    stats: StatsStore, redis_client: redis.asyncio.Redis
) -> None:
    # nothing was parked before this batch: the script must still look for what the batch itself parked
    batch = [exposure(1, "u0", "a"), revenue(2, "u1", 2.5), exposure(3, "u1", "a"), exposure(4, "u2", "a")]
    assert await stats.apply("exp", "A", batch) == Applied(exposed={"a": 3}, results={1: "park", 2: 'new{"revenue":1}'})
    a = (await stats.read("exp", metrics=METRICS)).variant("a").metric("revenue")
    assert (a.n, a.sum, a.sum_squares, a.outcomes) == (3, 2.5, 6.25, 1)
    assert await redis_client.exists(Keys().pending("exp"), Keys().pending_since("exp")) == 0


async def test_outcomes_before_and_after_the_exposure_add_up_to_the_units_total(stats: StatsStore) -> None:
    await stats.apply("exp", "B", [revenue(1, "u1", 2.5), revenue(2, "u1", -1.0)])
    await stats.apply("exp", "A", [exposure(1, "u1", "a")])
    await stats.apply("exp", "B", [revenue(3, "u1", 10.0)])
    a = (await stats.read("exp")).variant("a").metric("revenue")
    assert (a.n, a.sum, a.sum_squares, a.outcomes) == (1, 11.5, 11.5**2, 3)


async def test_a_parked_conversion_makes_the_unit_converted_once(stats: StatsStore) -> None:
    await stats.apply("exp", "B", [converted(1, "u1", 0), converted(2, "u1", 1), converted(3, "u1", 1)])
    await stats.apply("exp", "A", [exposure(1, "u1", "a"), exposure(2, "u2", "a")])
    assert await stats.apply("exp", "B", [converted(4, "u1", 1)]) == Applied(exposed={}, results={0: "att:a"})
    a = (await stats.read("exp")).variant("a").metric("converted")
    assert (a.n, a.sum, a.sum_squares, a.outcomes) == (2, 1.0, 1.0, 4)


async def test_outcomes_of_a_unit_never_exposed_stay_unattributed(
    stats: StatsStore, redis_client: redis.asyncio.Redis
) -> None:
    await stats.apply("exp", "B", [revenue(1, "ghost", 3.0), converted(2, "ghost", 1), revenue(3, "u1", 1.0)])
    await stats.apply("exp", "A", [exposure(1, "u1", "a")])
    stored = await stats.read("exp", variants=["a", "b"], metrics=METRICS)
    assert stored.unattributed == {"converted": 1, "revenue": 1}
    assert [stored.variant(v).metric("revenue").sum for v in ("a", "b")] == [1.0, 0.0]
    assert await redis_client.hkeys(Keys().pending("exp")) == [b"ghost"]


@pytest.mark.parametrize(
    "order",
    [
        pytest.param(("B", "A", "B", "A"), id="outcomes-first-both-times"),
        pytest.param(("B", "A", "A", "B"), id="exposures-replayed-first"),
    ],
)
async def test_replayed_batches_of_parked_outcomes_and_exposures_count_once(
    stats: StatsStore, order: tuple[str, ...]
) -> None:
    batches = {
        "B": [revenue(1, "u1", 2.0), converted(2, "u1", 1), revenue(3, "u2", 5.0)],
        "A": [exposure(1, "u1", "a"), exposure(2, "u2", "b")],
    }
    for writer in order:
        await stats.apply("exp", writer, batches[writer])
    stored = await stats.read("exp", metrics=METRICS)
    a, b = stored.variant("a"), stored.variant("b")
    assert (a.units, a.metric("revenue").sum, a.metric("revenue").sum_squares, a.metric("converted").sum) == (
        1,
        2.0,
        4.0,
        1.0,
    )
    assert (b.units, b.metric("revenue").sum, b.metric("revenue").sum_squares, b.metric("revenue").outcomes) == (
        1,
        5.0,
        25.0,
        1,
    )
    assert stored.unattributed == {"converted": 0, "revenue": 0}


async def test_past_the_cap_the_units_parked_longest_ago_are_given_up_and_counted_as_overflow(
    redis_client: redis.asyncio.Redis,
) -> None:
    stats = StatsStore(redis_client, keys=Keys(), stream_maxlen=1000, pending_max_units=2)
    for seq, unit in enumerate(["u1", "u2", "u3"], start=1):
        await stats.apply("exp", "B", [revenue(seq, unit, 1.0)])
    await stats.apply("exp", "B", [revenue(4, "u1", 1.0)])  # parked again, now as the newest
    await stats.apply("exp", "A", [exposure(n, unit, "a") for n, unit in enumerate(["u1", "u2", "u3"], start=1)])
    stored = await stats.read("exp", metrics=METRICS)
    revenue_a = stored.variant("a").metric("revenue")
    # u3 pushed out u1, whose second outcome then pushed out u2: u1's second outcome and u3's are attributed
    assert (revenue_a.n, revenue_a.sum, revenue_a.outcomes) == (3, 2.0, 2)
    assert stored.unattributed == {"converted": 0, "revenue": 2}
    assert stored.overflow == {"converted": 0, "revenue": 2}
    assert await redis_client.hlen(Keys().pending("exp")) == 0
    assert await redis_client.zcard(Keys().pending_since("exp")) == 0


async def test_with_parking_off_an_early_outcome_stays_unattributed(redis_client: redis.asyncio.Redis) -> None:
    stats = StatsStore(redis_client, keys=Keys(), stream_maxlen=1000, pending_max_units=0)
    assert await stats.apply("exp", "B", [revenue(1, "u1", 1.0)]) == Applied(exposed={}, results={0: "un"})
    assert await stats.apply("exp", "A", [exposure(1, "u1", "a")]) == Applied(exposed={"a": 1}, results={})
    stored = await stats.read("exp", metrics=["revenue"])
    assert (stored.unattributed, stored.overflow) == ({"revenue": 1}, {"revenue": 1})
    assert stored.variant("a").metric("revenue").sum == 0.0


async def test_a_workers_exposure_written_after_another_workers_outcomes_claims_them(
    redis_client: redis.asyncio.Redis, tmp_path: Path
) -> None:
    store = StatsStore(redis_client, keys=Keys(), stream_maxlen=1000)
    exposing, reporting = (
        EventWriter(store, spill_dir=tmp_path / "spill", flush_interval_s=0.01, shutdown_timeout_s=1) for _ in range(2)
    )
    hashed = Assignment("b", Reason.HASHED, bucket=0.5)
    for i in range(20):  # queued in the first worker, whose writes are late (backoff, a long batch)
        exposing.record_call(EXPERIMENT, 1, f"u{i}", hashed, hashed, status=200, elapsed_s=0.001)
    await reporting.start()
    reporting.record_outcomes(EXPERIMENT, [(f"u{i}", "revenue", i / 4) for i in range(20)])
    assert await reporting.drain(5)
    await exposing.start()
    assert await exposing.drain(5)
    await exposing.close()
    await reporting.close()

    b = (await store.read("exp")).variant("b").metric("revenue")
    values = [i / 4 for i in range(20)]
    assert (b.n, b.sum, b.sum_squares, b.outcomes) == (20, sum(values), sum(v * v for v in values), 20)
    assert reporting.unattributed[("exp", "revenue")] == 20  # not attributed when written...
    assert exposing.outcomes[("exp", "b", "revenue")] == 20  # ...but by the exposures that came later
