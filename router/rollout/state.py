"""Where a progressive rollout stands, kept in Redis so every replica agrees and a restart loses nothing.

Per experiment, in its cluster slot: a hash with the state, the current step and when the next
decision is due; a list of decisions with their inputs, newest first; and a lease naming the one
gateway process that runs the controller. Every change of the state is a compare-and-set on its
`revision` that also appends the decision, so a controller and an operator acting at the same
moment cannot both win, and no decision is recorded without its state or the other way round.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any, Final

import orjson

from router.store.client import RedisClient, translate_errors
from router.store.keys import Keys

#: decisions kept per experiment (a decision per `interval_s`: at 300 s, over a month of them)
MAX_DECISIONS: Final = 10_000

# KEYS: state hash, decisions list. ARGV: expected revision ('' = no state yet), the new fields as a
# flat JSON [field, value, ...], the decision as JSON ('' = none), most decisions kept.
# Returns the new revision, or -1 when the state changed since it was read.
_WRITE_STATE: Final = """
local current = redis.call('HGET', KEYS[1], 'revision')
if (ARGV[1] == '' and current) or (ARGV[1] ~= '' and current ~= ARGV[1]) then return -1 end
local fields = cjson.decode(ARGV[2])
for i = 1, #fields, 2 do redis.call('HSET', KEYS[1], fields[i], fields[i + 1]) end
local revision = redis.call('HINCRBY', KEYS[1], 'revision', 1)
if ARGV[3] ~= '' then
  redis.call('LPUSH', KEYS[2], ARGV[3])
  redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[4]) - 1)
end
return revision
"""

# KEYS: lease. ARGV: owner, time to live in ms. Takes a free lease or extends our own; 1 when we hold it.
_HOLD_LEASE: Final = """
local holder = redis.call('GET', KEYS[1])
if holder == false then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

# KEYS: lease. ARGV: owner. Gives the lease up only if we hold it.
_RELEASE_LEASE: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class Phase(StrEnum):
    """Where a rollout is: moving (`running`), held by an operator (`paused`), or over."""

    RUNNING = "running"
    PAUSED = "paused"  # by an operator, or by a failing gate with `on_failure: pause`
    ROLLED_BACK = "rolled_back"  # a gate failed with `on_failure: rollback`: the canary gets no traffic
    ABORTED = "aborted"  # by an operator: the canary gets no traffic
    PROMOTED = "promoted"  # the canary passed the last step and won: the experiment is concluded


@dataclass(frozen=True, slots=True)
class RolloutState:
    """One experiment's rollout as stored; `revision` counts the changes (the compare-and-set's version)."""

    plan: str  # the canary and steps it was started with (`plan_of`): another plan starts over
    phase: Phase
    step: int  # index into the plan's steps
    next_decision_at: float  # unix seconds
    weights_applied: bool  # False until the config carries this step's weights
    revision: int = 0
    #: the arms' call counts when the step began (`StepBaseline.to_json`), "" until the controller took them
    baseline: str = ""
    #: the config version this state's decision was taken on (0: unknown, a state from before it was kept)
    decided_on: int = 0

    def fields(self) -> list[str]:
        """The hash fields, as the flat [field, value, ...] the write script takes."""
        return [
            "plan",
            self.plan,
            "phase",
            self.phase.value,
            "step",
            str(self.step),
            "next_decision_at",
            repr(self.next_decision_at),
            "weights_applied",
            "1" if self.weights_applied else "0",
            "baseline",
            self.baseline,
            "decided_on",
            str(self.decided_on),
        ]

    def but(self, **changes: Any) -> RolloutState:
        return replace(self, **changes)


class RolloutStore:
    """Reads and writes rollout states, decisions and leases."""

    def __init__(self, redis: RedisClient, *, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys
        self._write = redis.register_script(_WRITE_STATE)
        self._hold = redis.register_script(_HOLD_LEASE)
        self._release = redis.register_script(_RELEASE_LEASE)

    async def read(self, experiment: str) -> RolloutState | None:
        """The stored state, None before the controller first saw the rollout."""
        with translate_errors("reading a rollout's state"):
            row = await self._redis.hgetall(self._keys.rollout(experiment))
        if not row:
            return None
        return _state_from_hash({_text(k): _text(v) for k, v in row.items()})

    async def write(
        self, experiment: str, state: RolloutState, *, decision: Mapping[str, Any] | None = None
    ) -> RolloutState | None:
        """Store `state` if nobody changed it since it was read (its `revision`), with `decision` appended.

        A new state (revision 0) is written only where none exists. Returns the state as stored
        (with its new revision), or None when the compare-and-set lost.
        """
        expected = "" if state.revision == 0 else str(state.revision)
        with translate_errors("writing a rollout's state"):
            revision = await self._write(
                keys=[self._keys.rollout(experiment), self._keys.rollout_decisions(experiment)],
                args=[
                    expected,
                    orjson.dumps(state.fields()),
                    orjson.dumps(decision) if decision is not None else "",
                    MAX_DECISIONS,
                ],
            )
        return None if int(revision) < 0 else state.but(revision=int(revision))

    async def decisions(self, experiment: str, *, limit: int = 100) -> list[dict[str, Any]]:
        """The latest `limit` decisions, newest first."""
        with translate_errors("reading a rollout's decisions"):
            raw = await self._redis.lrange(self._keys.rollout_decisions(experiment), 0, limit - 1)
        return [orjson.loads(entry) for entry in raw]

    async def hold_lease(self, experiment: str, owner: str, ttl_s: float) -> bool:
        """Take the lease if it is free or extend it if `owner` holds it; True when `owner` holds it now."""
        with translate_errors("taking a rollout lease"):
            held = await self._hold(
                keys=[self._keys.rollout_lease(experiment)], args=[owner, max(1, int(ttl_s * 1000))]
            )
        return bool(held)

    async def release_lease(self, experiment: str, owner: str) -> None:
        with translate_errors("releasing a rollout lease"):
            await self._release(keys=[self._keys.rollout_lease(experiment)], args=[owner])

    async def lease(self, experiment: str) -> tuple[str, float] | None:
        """Who holds the lease and for how many more seconds; None when nobody does."""
        key = self._keys.rollout_lease(experiment)
        with translate_errors("reading a rollout lease"):
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.get(key)
                pipe.pttl(key)
                holder, ttl_ms = await pipe.execute()
        if holder is None or int(ttl_ms) < 0:
            return None
        return _text(holder), int(ttl_ms) / 1000


def _state_from_hash(fields: Mapping[str, str]) -> RolloutState:
    return RolloutState(
        plan=fields.get("plan", ""),
        phase=Phase(fields.get("phase", Phase.RUNNING.value)),
        step=int(fields.get("step", "0")),
        next_decision_at=float(fields.get("next_decision_at", "0")),
        weights_applied=fields.get("weights_applied") == "1",
        baseline=fields.get("baseline", ""),
        revision=int(fields.get("revision", "0")),
        decided_on=int(fields.get("decided_on", "0")),
    )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
