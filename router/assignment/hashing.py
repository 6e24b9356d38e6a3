"""GrowthBook's hash, so the gateway and a GrowthBook front end put a unit in the same bucket.

Pure: no I/O, no clock, no randomness, and never Python's ``hash()`` (salted per process).
"""

from __future__ import annotations

from typing import Final

from fnv_hash_fast import fnv1a_32

FNV_OFFSET_BASIS: Final = 0x811C9DC5
FNV_PRIME: Final = 0x01000193


def fnv32a(text: str) -> int:
    """32-bit FNV-1a of the UTF-8 bytes: a stable hash every language can reproduce.

    The loop over bytes is fnv-hash-fast's compiled one: in Python it cost about 60 ns a byte,
    3 us of every prediction call (docs/performance.md). tests/unit/test_hashing.py holds the
    byte loop as the reference.
    """
    # surrogatepass keeps the function total: a lone surrogate from a JSON body must not raise
    # on the request path, and valid text encodes exactly as plain UTF-8.
    return fnv1a_32(text.encode("utf-8", "surrogatepass"))


def gb_hash(seed: str, value: str, version: int) -> float | None:
    """GrowthBook's bucket of `value` in [0, 1), or None for a hash version it does not define."""
    if version == 2:
        return (fnv32a(str(fnv32a(seed + value))) % 10000) / 10000
    if version == 1:
        return (fnv32a(value + seed) % 1000) / 1000
    return None
