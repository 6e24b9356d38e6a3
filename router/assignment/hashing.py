"""GrowthBook's hash, so the gateway and a GrowthBook front end put a unit in the same bucket.

Pure: no I/O, no clock, no randomness, and never Python's ``hash()`` (salted per process).
"""

from __future__ import annotations

from typing import Final

FNV_OFFSET_BASIS: Final = 0x811C9DC5
FNV_PRIME: Final = 0x01000193


def fnv32a(text: str) -> int:
    """32-bit FNV-1a of the UTF-8 bytes: a stable hash every language can reproduce."""
    h = FNV_OFFSET_BASIS
    # surrogatepass keeps the function total: a lone surrogate from a JSON body must not raise
    # on the request path, and valid text encodes exactly as plain UTF-8.
    for byte in text.encode("utf-8", "surrogatepass"):
        # Literals rather than the names above: this runs per byte on every request, and the
        # global look-ups cost a quarter of the time.
        h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    return h


def gb_hash(seed: str, value: str, version: int) -> float | None:
    """GrowthBook's bucket of `value` in [0, 1), or None for a hash version it does not define."""
    if version == 2:
        return (fnv32a(str(fnv32a(seed + value))) % 10000) / 10000
    if version == 1:
        return (fnv32a(value + seed) % 1000) / 1000
    return None
