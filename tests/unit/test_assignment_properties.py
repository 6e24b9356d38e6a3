"""Properties of assignment over many random units: shares, monotone canary growth, determinism."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from router.assignment.assign import assign
from router.assignment.hashing import gb_hash
from router.assignment.ranges import choose_variation, normalized_ranges
from router.config.schema import Experiment

ROOT = Path(__file__).resolve().parents[2]
SHARE_UNITS = 100_000
SHARE_TOLERANCE = 0.01  # absolute; binomial sd at 100 000 units is at most 0.0016
MOVE_UNITS = 20_000
PROCESS_UNITS = 200


def random_unit_ids(count: int, seed: int) -> list[str]:
    """uuid4-like ids from a seeded generator, so a failure reproduces."""
    rng = random.Random(seed)
    return [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(count)]


def experiment(weights: Sequence[float], **fields: Any) -> Experiment:
    # control first, the canary last, as a rollout lays them out
    names = ["control", *(f"arm{i}" for i in range(1, len(weights) - 1)), "canary"][: len(weights)]
    config: dict[str, Any] = {
        "name": "props",
        "control": "control",
        "variants": [
            {"name": name, "weight": weight, "url": f"http://127.0.0.1:{9000 + i}/predict"}
            for i, (name, weight) in enumerate(zip(names, weights, strict=True))
        ],
    }
    config.update(fields)
    return Experiment.model_validate(config)


@pytest.fixture(scope="module")
def share_buckets() -> list[float]:
    # Hashing 100 000 ids once and sharing the buckets keeps the file fast: the bucket does not
    # depend on the weights, and step 6 of assign() is exactly hash -> ranges -> choose.
    buckets = [gb_hash("props", unit, 2) for unit in random_unit_ids(SHARE_UNITS, seed=20240601)]
    return [n for n in buckets if n is not None]


@pytest.mark.parametrize(
    "weights",
    [
        pytest.param((50, 50), id="50-50"),
        pytest.param((90, 10), id="90-10"),
        pytest.param((1, 1, 1), id="1-1-1"),
        pytest.param((70, 20, 10), id="70-20-10"),
        pytest.param((99, 1), id="99-1"),
    ],
)
def test_each_arm_gets_its_weight_share_of_random_units(share_buckets: list[float], weights: tuple[float, ...]) -> None:
    ranges = normalized_ranges(1.0, weights)
    counts = Counter(choose_variation(n, ranges) for n in share_buckets)
    shares = [counts[i] / len(share_buckets) for i in range(len(weights))]
    expected = [w / sum(weights) for w in weights]
    assert shares == pytest.approx(expected, abs=SHARE_TOLERANCE)


def _moves(before: Experiment, after: Experiment, units: Sequence[str]) -> Counter[tuple[str, str]]:
    pairs = ((assign(before, unit), assign(after, unit)) for unit in units)
    return Counter((old.variant, new.variant) for old, new in pairs if old.variant != new.variant)


@pytest.mark.parametrize(
    ("before", "after"),
    [
        pytest.param((90, 10), (75, 25), id="90-10-to-75-25"),
        pytest.param((90, 10), (90, 25), id="sum-changes-90-10-to-90-25"),
        pytest.param((50, 40, 10), (50, 25, 25), id="taken-from-the-arm-before-50-40-10-to-50-25-25"),
    ],
)
def test_raising_the_canary_weight_only_moves_units_into_the_canary(
    before: tuple[float, ...], after: tuple[float, ...]
) -> None:
    moves = _moves(experiment(before), experiment(after), random_unit_ids(MOVE_UNITS, seed=7))
    assert moves and all(to == "canary" for _, to in moves), moves


def test_the_same_units_get_the_same_variants_in_a_fresh_process() -> None:
    units = random_unit_ids(PROCESS_UNITS, seed=99)
    config = experiment((70, 20, 10)).model_dump(mode="json")
    script = (
        "import json, sys\n"
        "from router.assignment.assign import assign\n"
        "from router.config.schema import Experiment\n"
        "data = json.load(sys.stdin)\n"
        "exp = Experiment.model_validate(data['experiment'])\n"
        "print(json.dumps([assign(exp, unit).variant for unit in data['units']]))\n"
    )
    # A different PYTHONHASHSEED proves nothing leans on the per-process salted hash().
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", script],
        input=json.dumps({"experiment": config, "units": units}),
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=60,
        check=True,
    )
    here = [assign(experiment((70, 20, 10)), unit).variant for unit in units]
    assert json.loads(result.stdout) == here


def test_the_fresh_process_comparison_covers_every_arm() -> None:
    units = random_unit_ids(PROCESS_UNITS, seed=99)
    assignments = [assign(experiment((70, 20, 10)), unit) for unit in units]
    assert {a.variant for a in assignments} == {"control", "arm1", "canary"}
