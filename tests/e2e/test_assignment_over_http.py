"""The variant served over HTTP equals the one GrowthBook's algorithm computes, for 10 000 units.

The reference below is written from GrowthBook's Python SDK (growthbook/util.py), independently
of router.assignment, so the test checks our code against theirs rather than against itself.
"""

from __future__ import annotations

import asyncio
import random

import httpx
import httpx2
import pytest

from router.app import create_app
from router.settings import Settings
from tests.e2e.conftest import UPSTREAM, echo_upstream, experiment, store_experiments_async


def _fnv1a32(text: str) -> int:
    h = 0x811C9DC5
    for byte in text.encode("utf-8"):
        h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    return h


def _gb_hash(seed: str, value: str, version: int) -> float:
    if version == 2:
        return (_fnv1a32(str(_fnv1a32(seed + value))) % 10000) / 10000
    return (_fnv1a32(value + seed) % 1000) / 1000


def _gb_bucket_ranges(weights: list[float], coverage: float) -> list[tuple[float, float]]:
    cumulative, ranges = 0.0, []
    for weight in weights:
        start = cumulative
        cumulative += weight
        ranges.append((start, start + coverage * weight))
    return ranges


def _gb_choose(n: float, ranges: list[tuple[float, float]]) -> int:
    for i, (start, end) in enumerate(ranges):
        if start <= n < end:
            return i
    return -1


@pytest.mark.parametrize(
    ("hash_version", "coverage", "seed", "units"),
    [
        pytest.param(2, 1.0, "checkout-2026", 10_000, id="v2-full-coverage-10000-units"),
        pytest.param(1, 0.8, None, 2_000, id="v1-80pct-coverage-2000-units"),
    ],
)
async def test_units_are_served_the_variant_growthbook_computes(
    redis_url: str, hash_version: int, coverage: float, seed: str | None, units: int
) -> None:
    weights = {"control": 70, "b": 20, "c": 10}
    config = experiment(
        "growthbook",
        control="control",
        seed=seed,
        hash_version=hash_version,
        coverage=coverage,
        variants=[{"name": name, "weight": w, "url": f"{UPSTREAM}/{name}"} for name, w in weights.items()],
    )
    await store_experiments_async(redis_url, [config])
    app = create_app(Settings(redis_url=redis_url), transport=httpx.ASGITransport(app=echo_upstream()))
    names = list(weights)
    ranges = _gb_bucket_ranges([w / 100 for w in weights.values()], coverage)
    rng = random.Random(20261127)
    unit_ids = [f"user-{rng.getrandbits(48):012x}" for _ in range(units)]
    # in one event loop, without TestClient's thread hop per call: 10 000 calls take seconds, not minutes
    async with (
        app.router.lifespan_context(app),
        httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://gateway.test") as client,
    ):
        served = []
        for start in range(0, units, 100):
            batch = unit_ids[start : start + 100]
            responses = await asyncio.gather(
                *(
                    client.post("/v1/experiments/growthbook/predict", content=b"{}", headers={"X-User-Id": u})
                    for u in batch
                )
            )
            served += [(r.headers["x-variant"], r.headers["x-assignment"]) for r in responses]
    mismatches = []
    for unit, got in zip(unit_ids, served, strict=True):
        chosen = _gb_choose(_gb_hash(seed or "growthbook", unit, hash_version), ranges)
        expected = (names[chosen], "hashed") if chosen >= 0 else ("control", "not_enrolled")
        if got != expected:
            mismatches.append((unit, got, expected))
    assert len(served) == units
    assert mismatches == []
