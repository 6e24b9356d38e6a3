"""The sequential SRM test's running minimum, kept in Redis so it holds across report looks and replicas.

Optimizely's sequential SRM p-value is valid however often it is read only as the running minimum
of `min(1, 1/BF)` over every look (docs/statistics.md). Each report is a look: the endpoint computes
this look's value from the cumulative counts and `record()` folds it into the stored minimum with
one script, atomically, so two replicas generating reports at once cannot lose a look.

The minimum is for one set of configured shares: the test compares the split against them, so
after a weight change the running minimum of the old shares says nothing and a new series starts.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from router.store.client import RedisClient, translate_errors
from router.store.configs import StoredExperiment
from router.store.keys import Keys

# KEYS: the srm hash. ARGV: the shares' signature, this look's p-value, config version, time (ms).
# Returns the running minimum as a string: Redis would truncate a Lua number to an integer.
_RECORD_LOOK: Final = """
local key, signature, p = KEYS[1], ARGV[1], tonumber(ARGV[2])
if p == nil or p ~= p then
  return redis.error_reply('the p-value of a look must be a number, got ' .. tostring(ARGV[2]))
end
local stored = redis.call('HMGET', key, 'weights', 'p_value')
local previous = tonumber(stored[2])
local running = p
if stored[1] == signature and previous ~= nil then
  if previous < running then running = previous end
  redis.call('HINCRBY', key, 'looks', 1)
else
  redis.call('HSET', key, 'weights', signature, 'since_version', ARGV[3], 'looks', 1)
end
local text = string.format('%.17g', running)
redis.call('HSET', key, 'p_value', text, 'updated_at_ms', ARGV[4])
return text
"""


@dataclass(frozen=True, slots=True)
class SrmLook:
    """The running minimum after a look, and how many looks (at these shares) it covers."""

    p_value: float
    looks: int


def shares_signature(shares: Mapping[str, float]) -> str:
    """The configured shares as a stable string: the series of looks a running minimum belongs to."""
    total = sum(shares.values())
    if not total > 0:
        raise ValueError(f"shares must sum to more than 0, got {dict(shares)}")
    return ",".join(f"{name}={weight / total:.12g}" for name, weight in shares.items())


def shares_window(history: Sequence[StoredExperiment | None]) -> int | None:
    """The first config version of the latest run of versions with today's shares; None when that is all of them.

    The SRM check compares exposed units with the shares in force. Units exposed under other shares
    (a canary's earlier steps, a re-weighting) would make a fair split fail it, so only the units
    first exposed since the shares took effect are checked (`VariantStats.units_since`). A version
    this release cannot read (None, a newer release's) counts as a change of shares.
    """
    newest = history[-1] if history else None
    if newest is None:
        return None
    current = shares_signature(newest.experiment.shares)
    start = len(history) - 1
    while start > 0:
        previous = history[start - 1]
        if previous is None or shares_signature(previous.experiment.shares) != current:
            break
        start -= 1
    first = history[start]
    assert first is not None  # the loop only steps back over readable versions
    return None if start == 0 else first.version


class SrmLooks:
    """Folds each report's sequential SRM p-value into the running minimum stored per experiment."""

    def __init__(self, redis: RedisClient, *, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys
        self._record = redis.register_script(_RECORD_LOOK)

    async def record(self, experiment: str, *, shares: Mapping[str, float], p_value: float, version: int) -> float:
        """Record a look with this `p_value` at these `shares`; the running minimum including it."""
        args = [shares_signature(shares), repr(float(p_value)), str(version), str(int(time.time() * 1000))]
        with translate_errors("recording an SRM look"):
            result = await self._record(keys=[self._keys.srm(experiment)], args=args)
        return float(result.decode() if isinstance(result, bytes) else result)

    async def last(self, experiment: str) -> SrmLook | None:
        """The stored running minimum and its number of looks, None before the first look."""
        with translate_errors("reading the SRM looks"):
            p_value, looks = await self._redis.hmget(self._keys.srm(experiment), ["p_value", "looks"])
        if p_value is None:
            return None
        return SrmLook(p_value=float(p_value), looks=int(looks or 0))
