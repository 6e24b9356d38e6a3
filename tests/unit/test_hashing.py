"""The hash against GrowthBook's shared vectors and the FNV-1a reference values."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from router.assignment.hashing import FNV_OFFSET_BASIS, FNV_PRIME, fnv32a, gb_hash

CASES = Path(__file__).parent.parent / "data" / "growthbook_cases.json"


def _hash_cases() -> list[Any]:
    cases = json.loads(CASES.read_text(encoding="utf-8"))["hash"]
    return [
        pytest.param(seed, value, version, expected, id=f"v{version}-{seed!r}+{value!r}")
        for seed, value, version, expected in cases
    ]


@pytest.mark.parametrize(("seed", "value", "version", "expected"), _hash_cases())
def test_gb_hash_matches_growthbook_vectors(seed: str, value: str, version: int, expected: float | None) -> None:
    # GrowthBook's own SDK tests compare hashes with ==: the divisions are exact enough to agree.
    assert gb_hash(seed, value, version) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("", 0x811C9DC5, id="empty-is-the-offset-basis"),
        pytest.param("a", 0xE40C292C, id="a"),
        pytest.param("foobar", 0xBF9CF968, id="foobar"),
    ],
)
def test_fnv32a_matches_the_fnv_reference_values(text: str, expected: int) -> None:
    assert fnv32a(text) == expected


def test_fnv32a_hashes_the_utf8_bytes_of_non_ascii_text() -> None:
    # "é" is the two bytes c3 a9 in UTF-8; hashing code points instead would give 0x6C0B6C44.
    assert fnv32a("é") == 0x1E9DE8C1


def test_fnv32a_accepts_a_lone_surrogate_instead_of_raising() -> None:
    assert fnv32a("\ud800") == 0x75A7B798


def reference_fnv32a(data: bytes) -> int:
    """FNV-1a as its definition reads, one byte at a time: the oracle for the compiled loop."""
    h = FNV_OFFSET_BASIS
    for byte in data:
        h = ((h ^ byte) * FNV_PRIME) & 0xFFFFFFFF
    return h


@given(st.text())
def test_fnv32a_equals_the_byte_by_byte_definition(text: str) -> None:
    # st.text() draws lone surrogates too: they hash as their surrogatepass bytes.
    assert fnv32a(text) == reference_fnv32a(text.encode("utf-8", "surrogatepass"))


def test_gb_hash_is_none_for_an_unknown_version() -> None:
    assert gb_hash("seed", "unit", 3) is None


@pytest.mark.parametrize(
    ("version", "places"),
    [pytest.param(1, 3, id="v1-thousandths"), pytest.param(2, 4, id="v2-ten-thousandths")],
)
def test_gb_hash_lies_in_the_unit_interval_on_its_grid(version: int, places: int) -> None:
    values = [gb_hash("seed", f"user-{i}", version) for i in range(500)]
    assert all(v is not None and 0 <= v < 1 and round(v, places) == v for v in values)
