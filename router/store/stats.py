"""Per-variant sufficient statistics in Redis: the script that applies events and the reads a report makes.

Everything the report needs (STATS.md) is kept incrementally, so a report costs one HGETALL
whatever the traffic: per variant the exposed units, requests, errors and latency histogram, and
per variant and metric the `sum` and `sum_squares` of per-unit values. A unit's value is its
total after exposure (mean metrics) or whether it converted at least once (binomial), so when a
unit's total goes from t to t+v the script adds v to `sum` and (t+v)^2 - t^2 to `sum_squares`;
units without outcomes count as 0 without being stored.

One Lua script applies a batch of one experiment's events atomically. It touches only that
experiment's keys (one cluster slot), and it skips events whose sequence number the writer has
already had applied, so a batch retried after a timeout or replayed from a spill file counts once.

Each process (worker, replica) has its own queue, so a unit's outcome can reach Redis before its
exposure does (another worker's batch, another writer's backoff, a spill file replayed later).
Such an outcome is counted unattributed and *parked* in the experiment's pending hash; the unit's
first exposure claims it into the variant's sums and takes it off the unattributed count. Parking
is bounded: past `pending_max_units` units the ones parked longest ago are given up (`overflow`),
and their outcomes stay unattributed even if the unit is exposed later.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final, NamedTuple

import orjson

from router.config.schema import MetricKind
from router.store.client import RedisClient, translate_errors
from router.store.keys import Keys

#: Upper bounds (ms) of the fixed latency buckets; one more bucket holds everything slower.
#: Roughly 25% apart, so a quantile read from them is within about 12% of the exact one.
LATENCY_BUCKETS_MS: Final[tuple[float, ...]] = (
    0.5, 1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10, 12.5, 15, 20, 25, 30, 40, 50, 60, 80,
    100, 125, 150, 200, 250, 300, 400, 500, 600, 800, 1000, 1250, 1500, 2000, 2500, 3000, 4000, 5000,
    6000, 8000, 10000, 15000, 20000, 30000, 60000,
)  # fmt: skip

#: The field of the stats hash counting outcomes of units not exposed (so far), per metric (`*` is no variant name).
UNATTRIBUTED: Final = "*:unattributed:"
#: The field counting unattributed outcomes given up when the pending hash was full: never attributed.
OVERFLOW: Final = "*:overflow:"
#: Units whose outcomes wait for their exposure, per experiment, by default (a few hundred bytes each).
PENDING_MAX_UNITS: Final = 100_000


class EventKind(StrEnum):
    """The events the script understands; the value is what travels to Redis and into spill files."""

    EXPOSURE = "e"
    OUTCOME = "o"
    CALLS = "c"


#: How many string arguments each kind carries after its kind and sequence number.
ARGUMENTS: Final[Mapping[EventKind, int]] = {EventKind.EXPOSURE: 7, EventKind.OUTCOME: 5, EventKind.CALLS: 4}


class Event(NamedTuple):
    """One event in the form the script takes: kind, per-writer sequence number and string arguments.

    A named tuple rather than a frozen dataclass: one is made per exposure on the request path, and a
    tuple costs half as much to build.
    """

    experiment: str
    seq: int
    kind: EventKind
    args: tuple[str, ...]


def exposure_event(
    experiment: str,
    seq: int,
    *,
    unit: str,
    variant: str,
    version: int,
    reason: str,
    at_ms: int,
    status: int,
    latency_ms: float,
) -> Event:
    """A unit was assigned `variant` by hash or sticky record; the script keeps only its first exposure."""
    args = (unit, variant, str(version), reason, str(at_ms), str(status), f"{latency_ms:.3f}")
    return Event(experiment, seq, EventKind.EXPOSURE, args)


def outcome_event(
    experiment: str, seq: int, *, unit: str, metric: str, kind: MetricKind, value: float, at_ms: int
) -> Event:
    """A metric value reported for a unit; `repr` keeps the float exact on its way through Lua."""
    return Event(experiment, seq, EventKind.OUTCOME, (unit, metric, kind.value, repr(float(value)), str(at_ms)))


def calls_event(
    experiment: str, seq: int, *, variant: str, requests: int, errors: int, latency_counts: Mapping[int, int]
) -> Event:
    """Calls served by a variant since the last such event: counts and latency histogram increments."""
    buckets = ",".join(f"{bucket}={count}" for bucket, count in sorted(latency_counts.items()) if count)
    return Event(experiment, seq, EventKind.CALLS, (variant, str(requests), str(errors), buckets))


def latency_bucket(latency_ms: float) -> int:
    """The index of the bucket holding `latency_ms` (upper bounds are inclusive, like Prometheus's `le`)."""
    return bisect.bisect_left(LATENCY_BUCKETS_MS, latency_ms)


# KEYS: exposed hash, stats hash, values hash, events stream, writers hash, pending hash, pending-since sorted set.
# ARGV: writer id, stream max length, most units with parked outcomes, the events as one flat JSON array
# of kind, sequence, arguments..., kind, ... (one argument, not thousands: packing each string separately
# costs the gateway more than the write; flat, because decoding a table per event cost Redis 10%).
# Returns {first exposures as a flat [variant, count, ...], results as a flat [index, result, ...]}, the
# index 0-based, for the events whose result is not their kind's usual one (a plain 'new' for an exposure,
# 'ok' for call counts): parsing one reply string per event cost the gateway more than the rest of the
# write. Results: 'dup' (already applied); for an exposure 'new' followed by a JSON object metric -> count
# when it claimed parked outcomes, or 'old:VARIANT' (repeated, with the variant of the first); for an
# outcome 'att:VARIANT' (attributed), 'park' (its unit is not exposed yet: parked) or 'un' (not exposed
# and not parked: parking is off).
_APPLY_EVENTS: Final = """
local exposed, stats, values, stream, writers, pending, since = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6],
  KEYS[7]
local writer, maxlen, cap = ARGV[1], ARGV[2], tonumber(ARGV[3])
local a = cjson.decode(ARGV[4])
local size = #a
local widths = {e = 9, o = 7, c = 6}  -- kind and sequence included
-- Validate first: a script that fails half way leaves its first writes in place. Sequences are the only
-- numbers (arguments are strings), so an event of the wrong width puts a string where one is expected.
local i, n = 1, 1
while i <= size do
  if widths[a[i]] == nil or type(a[i + 1]) ~= 'number' then return redis.error_reply('malformed event ' .. n) end
  i, n = i + widths[a[i]], n + 1
end
if i ~= size + 1 then return redis.error_reply('malformed event ' .. n - 1) end
local function add(field, amount)
  local total = (tonumber(redis.call('HGET', stats, field)) or 0) + amount
  redis.call('HSET', stats, field, string.format('%.17g', total))
end
-- `count` outcomes of `unit` adding up to `total` (binomial: 1 if any converted) join `variant`'s sums.
local function attribute(variant, unit, metric, kind, total, count)
  local prefix = variant .. ':metric:' .. metric .. ':'
  local field = metric .. ':' .. unit
  if kind == 'binomial' then
    -- a unit converts once: later conversions change neither its value nor the sums
    if total ~= 0 and redis.call('HSETNX', values, field, '1') == 1 then
      add(prefix .. 'sum', 1)
      add(prefix .. 'sum_squares', 1)
    end
  else
    local before = tonumber(redis.call('HGET', values, field)) or 0
    local after = before + total
    redis.call('HSET', values, field, string.format('%.17g', after))
    add(prefix .. 'sum', total)
    add(prefix .. 'sum_squares', after * after - before * before)
  end
  redis.call('HINCRBY', stats, prefix .. 'outcomes', count)
end
-- A parked unit's entry: metric -> {kind, total as %.17g (cjson keeps only 14 digits of numbers), count}.
local function parked(unit)
  local entry = redis.call('HGET', pending, unit)
  if entry then return cjson.decode(entry) end
  return nil
end
local function unpark(unit)
  redis.call('HDEL', pending, unit)
  redis.call('ZREM', since, unit)
end
local now = nil
-- Most batches meet no parked outcome: one EXISTS spares an HGET per exposure.
local any_parked = redis.call('EXISTS', pending) == 1
local function park(unit, metric, kind, v)
  any_parked = true
  local entry = parked(unit)
  if entry == nil then
    -- Full: give up the units parked longest ago; their outcomes stay unattributed for good.
    while redis.call('ZCARD', since) >= cap do
      local oldest = redis.call('ZRANGE', since, 0, 0)[1]
      for old_metric, slot in pairs(parked(oldest) or {}) do
        redis.call('HINCRBY', stats, '*:overflow:' .. old_metric, slot[3])
      end
      unpark(oldest)
    end
    if now == nil then
      local time = redis.call('TIME')
      now = tonumber(time[1]) + tonumber(time[2]) / 1e6
    end
    redis.call('ZADD', since, now, unit)
    entry = {}
  end
  local slot = entry[metric] or {kind, '0', 0}
  local total = tonumber(slot[2])
  if slot[1] == 'binomial' then
    if v ~= 0 then total = 1 end
  else
    total = total + v
  end
  entry[metric] = {slot[1], string.format('%.17g', total), slot[3] + 1}
  redis.call('HSET', pending, unit, cjson.encode(entry))
end
-- A unit's first exposure takes the outcomes parked for it: they were counted unattributed until now.
local function claim(unit, variant)
  if not any_parked then return nil end
  local entry = parked(unit)
  if entry == nil then return nil end
  unpark(unit)
  local claimed = {}
  for metric, slot in pairs(entry) do
    attribute(variant, unit, metric, slot[1], tonumber(slot[2]), slot[3])
    redis.call('HINCRBY', stats, '*:unattributed:' .. metric, -slot[3])
    claimed[metric] = slot[3]
  end
  return claimed
end
local last = tonumber(redis.call('HGET', writers, writer)) or 0
local units = {}  -- variant -> first exposures: one HINCRBY each at the end
local units_by_version = {}  -- 'VARIANT:units:vVERSION' -> first exposures under that config version
local added = 0
local results = {}
i, n = 1, 0
while i <= size do
  local kind, seq, e = a[i], a[i + 1], i - 1  -- a[e + 1] is the event's kind, a[e + 3] its first argument
  i, n = i + widths[kind], n + 1
  local result = nil
  if seq <= last then
    result = 'dup'
  elseif kind == 'e' then
    local unit, variant = a[e + 3], a[e + 4]
    if redis.call('HSETNX', exposed, unit, variant) == 1 then
      units[variant] = (units[variant] or 0) + 1
      local by_version = variant .. ':units:v' .. a[e + 5]
      units_by_version[by_version] = (units_by_version[by_version] or 0) + 1
      added = added + 1
      redis.call('XADD', stream, '*', 'type', 'exposure', 'unit', unit, 'variant', variant, 'version', a[e + 5],
                 'reason', a[e + 6], 'at_ms', a[e + 7], 'status', a[e + 8], 'latency_ms', a[e + 9])
      local claimed = claim(unit, variant)
      if claimed then result = 'new' .. cjson.encode(claimed) end
    else
      result = 'old:' .. redis.call('HGET', exposed, unit)
    end
  elseif kind == 'o' then
    local unit, metric, metric_kind, value = a[e + 3], a[e + 4], a[e + 5], a[e + 6]
    local variant = redis.call('HGET', exposed, unit)
    if variant then
      attribute(variant, unit, metric, metric_kind, tonumber(value), 1)
      result = 'att:' .. variant
    else
      -- Not exposed yet: its exposure may still be on its way from another process or a spill file.
      variant = ''
      redis.call('HINCRBY', stats, '*:unattributed:' .. metric, 1)
      if cap > 0 then
        park(unit, metric, metric_kind, tonumber(value))
        result = 'park'
      else
        redis.call('HINCRBY', stats, '*:overflow:' .. metric, 1)
        result = 'un'
      end
    end
    added = added + 1
    redis.call('XADD', stream, '*', 'type', 'outcome', 'unit', unit, 'metric', metric, 'value', value,
               'variant', variant, 'at_ms', a[e + 7])
  else
    local variant = a[e + 3]
    redis.call('HINCRBY', stats, variant .. ':requests', a[e + 4])
    redis.call('HINCRBY', stats, variant .. ':errors', a[e + 5])
    for bucket, count in string.gmatch(a[e + 6], '(%d+)=(%d+)') do
      redis.call('HINCRBY', stats, variant .. ':latency:' .. bucket, count)
    end
  end
  if result then
    results[#results + 1] = n - 1
    results[#results + 1] = result
  end
  if seq > last then last = seq end
end
local counts = {}
for variant, count in pairs(units) do
  redis.call('HINCRBY', stats, variant .. ':units', count)
  counts[#counts + 1] = variant
  counts[#counts + 1] = count
end
for field, count in pairs(units_by_version) do
  redis.call('HINCRBY', stats, field, count)
end
-- Trimmed after the batch rather than by each XADD (fewer arguments each): `~` removes the same whole
-- nodes either way; up to one XTRIM per entry added, as each XADD could, each bounded by its default LIMIT.
for _ = 1, added do
  if redis.call('XTRIM', stream, 'MAXLEN', '~', maxlen) == 0 then break end
end
redis.call('HSET', writers, writer, string.format('%d', last))
return {counts, results}
"""


@dataclass(frozen=True, slots=True)
class Applied:
    """What the script did with a batch, in its short form: most events' results are implied.

    `results` holds only the events whose result is not the usual one of their kind (see
    `_APPLY_EVENTS`): an exposure missing from it was a first exposure that claimed nothing, a
    calls event missing from it was counted. Outcome events are always in it.
    """

    exposed: Mapping[str, int]  # variant -> first exposures in the batch
    results: Mapping[int, str]  # index of the event in the batch -> its result


@dataclass(frozen=True, slots=True)
class MetricTotals:
    """One metric in one arm: `n` exposed units and the sum and sum of squares of their per-unit values."""

    n: int
    sum: float = 0.0
    sum_squares: float = 0.0
    outcomes: int = 0  # outcome events attributed to the arm, for operators; not a statistic


@dataclass(frozen=True, slots=True)
class VariantStats:
    """Everything stored about one variant of one experiment, summed over every replica."""

    name: str
    units: int = 0
    requests: int = 0
    errors: int = 0
    latency_counts: tuple[int, ...] = (0,) * (len(LATENCY_BUCKETS_MS) + 1)
    metrics: Mapping[str, MetricTotals] = field(default_factory=dict)
    # config version -> units first exposed under it (counted since 0.2: earlier units are only in `units`)
    units_by_version: Mapping[int, int] = field(default_factory=dict)

    def units_since(self, version: int) -> int:
        """Units first exposed under config version `version` or a later one."""
        return sum(count for exposed_under, count in self.units_by_version.items() if exposed_under >= version)

    def metric(self, name: str) -> MetricTotals:
        """The totals of `name`; an arm without outcomes has n units of value 0."""
        return self.metrics.get(name, MetricTotals(n=self.units))

    def latency_ms(self, quantile: float) -> float | None:
        """The latency quantile from the histogram, None without calls (see `latency_quantile`)."""
        return latency_quantile(self.latency_counts, quantile)


@dataclass(frozen=True, slots=True)
class ExperimentStats:
    """The stored statistics of one experiment, as a report reads them."""

    experiment: str
    variants: Mapping[str, VariantStats]
    unattributed: Mapping[str, int]  # metric -> outcomes of units not exposed so far (parked ones included)
    overflow: Mapping[str, int] = field(default_factory=dict)  # metric -> of those, given up: never attributed

    def variant(self, name: str) -> VariantStats:
        """The stats of `name`, zeros when nothing was recorded for it yet."""
        return self.variants.get(name, VariantStats(name))


def latency_quantile(counts: Sequence[int], quantile: float) -> float | None:
    """A quantile of a latency histogram, interpolated linearly inside its bucket as Prometheus does.

    None when there are no observations; the slowest bucket has no upper bound, so a quantile
    that falls in it reads as that bucket's lower bound.
    """
    if not 0 <= quantile <= 1:
        raise ValueError(f"quantile must be between 0 and 1, got {quantile}")
    total = sum(counts)
    if total == 0:
        return None
    rank = quantile * total
    cumulative = 0
    for index, count in enumerate(counts):
        if count and cumulative + count >= rank:
            lower = LATENCY_BUCKETS_MS[index - 1] if index > 0 else 0.0
            if index >= len(LATENCY_BUCKETS_MS):
                return lower
            upper = LATENCY_BUCKETS_MS[index]
            return lower + (upper - lower) * max(rank - cumulative, 0) / count
        cumulative += count
    return LATENCY_BUCKETS_MS[-1]


class StatsStore:
    """Applies batches of events to an experiment's statistics and reads them back."""

    def __init__(
        self, redis: RedisClient, *, keys: Keys, stream_maxlen: int, pending_max_units: int = PENDING_MAX_UNITS
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._stream_maxlen = str(stream_maxlen)
        self._pending_max_units = str(pending_max_units)
        self._apply = redis.register_script(_APPLY_EVENTS)

    async def apply(self, experiment: str, writer: str, events: Sequence[Event]) -> Applied:
        """Apply `events` (all of `experiment`, by one writer, in sequence order)."""
        flat: list[object] = []
        extend = flat.extend
        for event in events:
            flat.append(event.kind)  # orjson writes an enum as its value
            flat.append(event.seq)
            extend(event.args)
        payload = orjson.dumps(flat)
        keys = self._keys
        with translate_errors("writing events"):
            counts, results = await self._apply(
                keys=[
                    keys.exposed(experiment),
                    keys.stats(experiment),
                    keys.values(experiment),
                    keys.events(experiment),
                    keys.writers(experiment),
                    keys.pending(experiment),
                    keys.pending_since(experiment),
                ],
                args=[writer, self._stream_maxlen, self._pending_max_units, payload],
            )
        return Applied(
            exposed={_text(counts[i]): int(counts[i + 1]) for i in range(0, len(counts), 2)},
            results={int(results[i]): _text(results[i + 1]) for i in range(0, len(results), 2)},
        )

    async def forget_writer(self, experiment: str, writer: str) -> None:
        """Drop `writer`'s last applied sequence: only once none of its events can be applied any more."""
        with translate_errors("forgetting an event writer"):
            await self._redis.hdel(self._keys.writers(experiment), writer)

    async def read(
        self, experiment: str, *, variants: Sequence[str] = (), metrics: Sequence[str] = ()
    ) -> ExperimentStats:
        """Every statistic of `experiment` in one command; `variants` and `metrics` are present even at zero."""
        with translate_errors("reading statistics"):
            row = await self._redis.hgetall(self._keys.stats(experiment))
        return parse_stats(experiment, {_text(k): _text(v) for k, v in row.items()}, variants, metrics)


def parse_stats(
    experiment: str, fields: Mapping[str, str], variants: Sequence[str] = (), metrics: Sequence[str] = ()
) -> ExperimentStats:
    """The stats hash as typed values; field names are documented in `router.store.keys`."""
    counters: dict[str, dict[str, int]] = {name: {} for name in variants}
    by_version: dict[str, dict[int, int]] = {}
    latency: dict[str, list[int]] = {}
    sums: dict[str, dict[str, dict[str, float]]] = {}
    unattributed: dict[str, int] = {}
    overflow: dict[str, int] = {}
    for name, value in fields.items():
        variant, _, rest = name.partition(":")
        if variant == "*":
            if name.startswith(UNATTRIBUTED):
                unattributed[name.removeprefix(UNATTRIBUTED)] = int(value)
            elif name.startswith(OVERFLOW):
                overflow[name.removeprefix(OVERFLOW)] = int(value)
            continue
        counters.setdefault(variant, {})
        kind, _, detail = rest.partition(":")
        if kind == "latency":
            buckets = latency.setdefault(variant, [0] * (len(LATENCY_BUCKETS_MS) + 1))
            index = int(detail)
            if 0 <= index < len(buckets):
                buckets[index] += int(value)
        elif kind == "metric":
            metric, _, figure = detail.partition(":")
            sums.setdefault(variant, {}).setdefault(metric, {})[figure] = float(value)
        elif kind == "units" and detail:  # VARIANT:units:vVERSION
            if detail.startswith("v") and detail[1:].isdigit():
                by_version.setdefault(variant, {})[int(detail[1:])] = int(value)
        elif kind in ("units", "requests", "errors"):
            counters[variant][kind] = int(value)
    result: dict[str, VariantStats] = {}
    for variant, counts in counters.items():
        units = counts.get("units", 0)
        figures = sums.get(variant, {})
        totals = {
            metric: MetricTotals(
                n=units,
                sum=figures.get(metric, {}).get("sum", 0.0),
                sum_squares=figures.get(metric, {}).get("sum_squares", 0.0),
                outcomes=int(figures.get(metric, {}).get("outcomes", 0)),
            )
            for metric in dict.fromkeys([*metrics, *figures])
        }
        result[variant] = VariantStats(
            name=variant,
            units=units,
            requests=counts.get("requests", 0),
            errors=counts.get("errors", 0),
            latency_counts=tuple(latency.get(variant, [0] * (len(LATENCY_BUCKETS_MS) + 1))),
            metrics=totals,
            units_by_version=by_version.get(variant, {}),
        )
    for metric in metrics:
        unattributed.setdefault(metric, 0)
        overflow.setdefault(metric, 0)
    return ExperimentStats(experiment=experiment, variants=result, unattributed=unattributed, overflow=overflow)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
