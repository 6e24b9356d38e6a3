"""Per-unit sufficient statistics in Redis equal a direct computation from the events that were sent."""

from __future__ import annotations

import random
from collections import defaultdict
from pathlib import Path

import pytest
import redis.asyncio

from router.assignment.assign import Assignment, Reason
from router.config.schema import Experiment
from router.store.events import EventWriter
from router.store.keys import Keys
from router.store.stats import StatsStore

EXPERIMENT = Experiment.model_validate(
    {
        "name": "stats",
        "control": "a",
        "variants": [{"name": name, "weight": 1, "url": f"http://127.0.0.1:9/{name}"} for name in ("a", "b", "c")],
        "metrics": [{"name": "converted", "kind": "binomial"}, {"name": "revenue", "kind": "mean"}],
    }
)


def expected_totals(
    exposed: dict[str, str], outcomes: list[tuple[str, str, float]]
) -> dict[tuple[str, str], tuple[int, float, float]]:
    """(variant, metric) -> (n, sum, sum_squares) computed from scratch, as STATS.md defines per-unit values."""
    per_unit: dict[tuple[str, str], float] = defaultdict(float)
    for unit, metric, value in outcomes:
        if unit not in exposed:
            continue
        if metric == "converted":
            per_unit[(unit, metric)] = max(per_unit[(unit, metric)], 1.0 if value != 0 else 0.0)
        else:
            per_unit[(unit, metric)] += value
    totals = {}
    for variant in EXPERIMENT.variant_names:
        units = [u for u, v in exposed.items() if v == variant]
        for metric in ("converted", "revenue"):
            values = [per_unit.get((u, metric), 0.0) for u in units]
            totals[(variant, metric)] = (len(units), sum(values), sum(v * v for v in values))
    return totals


@pytest.mark.parametrize(
    "batch_size",
    [pytest.param(500, id="large-batches"), pytest.param(7, id="batches-of-7")],
)
async def test_sums_and_sums_of_squares_equal_a_direct_computation(
    redis_client: redis.asyncio.Redis, tmp_path: Path, batch_size: int
) -> None:
    rng = random.Random(3)
    units = [f"user-{i}" for i in range(400)]
    exposed = {unit: rng.choice(EXPERIMENT.variant_names) for unit in units[:300]}  # the last 100 never exposed
    outcomes: list[tuple[str, str, float]] = []
    for _ in range(3000):
        unit = rng.choice(units)
        if rng.random() < 0.5:
            outcomes.append((unit, "converted", float(rng.choice([0, 1, 1]))))
        else:
            # quarters are exact in binary, so "exact" can mean ==, whatever the order of additions
            outcomes.append((unit, "revenue", rng.randint(-20, 400) / 4))
    # two replicas: each exposes half the units, then both report outcomes for any unit
    stats = StatsStore(redis_client, keys=Keys(), stream_maxlen=10_000)
    replicas = [
        EventWriter(stats, spill_dir=tmp_path / "spill", batch_size=batch_size, flush_interval_s=0.01) for _ in range(2)
    ]
    for replica in replicas:
        await replica.start()
    for i, (unit, variant) in enumerate(exposed.items()):
        assigned = Assignment(variant, Reason.HASHED)
        replicas[i % 2].record_call(EXPERIMENT, 1, unit, assigned, assigned, status=200, elapsed_s=0.002)
    for replica in replicas:
        assert await replica.drain(10)
    for i in range(0, len(outcomes), 100):
        replicas[(i // 100) % 2].record_outcomes(EXPERIMENT, outcomes[i : i + 100])
    for replica in replicas:
        assert await replica.drain(10)
        await replica.close()

    stored = await stats.read("stats", variants=EXPERIMENT.variant_names, metrics=["converted", "revenue"])
    measured = {
        (variant, metric): (
            stored.variant(variant).metric(metric).n,
            stored.variant(variant).metric(metric).sum,
            stored.variant(variant).metric(metric).sum_squares,
        )
        for variant in EXPERIMENT.variant_names
        for metric in ("converted", "revenue")
    }
    assert measured == expected_totals(exposed, outcomes)
    never_exposed = [o for o in outcomes if o[0] not in exposed]
    assert stored.unattributed == {
        metric: sum(1 for o in never_exposed if o[1] == metric) for metric in ("converted", "revenue")
    }
    attributed = sum(
        stored.variant(v).metric(m).outcomes for v in EXPERIMENT.variant_names for m in ("converted", "revenue")
    )
    assert attributed == len(outcomes) - len(never_exposed)


async def test_an_experiment_without_data_reads_as_zeros_for_its_variants_and_metrics(
    redis_client: redis.asyncio.Redis,
) -> None:
    stats = await StatsStore(redis_client, keys=Keys(), stream_maxlen=10).read(
        "stats", variants=["a", "b"], metrics=["revenue"]
    )
    assert [(v.name, v.units, v.requests, v.metric("revenue").n) for v in stats.variants.values()] == [
        ("a", 0, 0, 0),
        ("b", 0, 0, 0),
    ]
    assert stats.unattributed == {"revenue": 0}
    assert stats.variant("a").latency_ms(0.95) is None


async def test_first_exposures_are_counted_per_config_version_as_well(
    redis_client: redis.asyncio.Redis, tmp_path: Path
) -> None:
    """The SRM check reads the units of the versions with the current weights (`units_since`)."""
    stats = StatsStore(redis_client, keys=Keys(), stream_maxlen=10_000)
    writer = EventWriter(stats, spill_dir=tmp_path / "spill", flush_interval_s=0.01)
    await writer.start()
    sent: dict[tuple[str, int], int] = defaultdict(int)
    for i in range(300):
        variant, version = ("a", "b", "c")[i % 3], 1 + i // 100  # versions 1, 2 and 3
        writer.record_call(
            EXPERIMENT,
            version,
            f"user-{i}",
            *[Assignment(variant, Reason.HASHED, 0.5)] * 2,
            status=200,
            elapsed_s=0.001,
        )
        sent[(variant, version)] += 1
    writer.record_call(
        EXPERIMENT, 3, "user-0", *[Assignment("a", Reason.HASHED, 0.5)] * 2, status=200, elapsed_s=0.001
    )  # a returning unit: not a first exposure
    assert await writer.drain(5)
    await writer.close()

    read = await stats.read("stats", variants=EXPERIMENT.variant_names)

    for variant in EXPERIMENT.variant_names:
        arm = read.variant(variant)
        assert arm.units_by_version == {v: sent[(variant, v)] for v in (1, 2, 3)}
        assert arm.units == sum(arm.units_by_version.values())
        assert arm.units_since(2) == sent[(variant, 2)] + sent[(variant, 3)]
        assert arm.units_since(4) == 0
