"""The progressive canary (SPEC section 7): move the canary through its steps while its gates hold.

Every gateway process runs a `RolloutController`; per experiment, only the process holding the
rollout's lease in Redis acts. At each `interval_s` it reads the experiment's statistics (the
report's numbers, summed over every replica) and decides:

- too few units in either arm, or any gate inconclusive: **hold** the step (never roll back for
  lack of data);
- any gate failed: `on_failure`, **rollback** (the canary gets no traffic) or **pause**;
- every gate passed: **advance** to the next step; advancing into the last step **promotes** the
  canary (the experiment is concluded with the canary as winner).

The state (phase, step, next decision) lives in Redis beside the decisions (`router.rollout.state`),
so a restart or a lease moving to another replica carries on where it was. A step's weights are
written as a new config version (actor `rollout`, the decision in the history's change summary),
which every replica picks up within a second like any other edit. Operators act through
`operate` (pause, resume, advance, abort), with the same compare-and-set on the state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Final

import orjson

from router.config.edits import ConfigPatch, Promotion
from router.config.schema import Experiment, Rollout, Status
from router.errors import (
    NoRollout,
    RolloutConflict,
    StoreUnavailable,
    UnknownExperiment,
    UnreadableConfig,
    VersionConflict,
)
from router.live_config import LiveConfig
from router.metrics import Metrics, RolloutDecision, StoreOperation
from router.rollout.gates import GateResult, Verdict, evaluate_gate
from router.rollout.state import Phase, RolloutState, RolloutStore
from router.store.client import honour_cancellation
from router.store.configs import ConfigStore, StoredExperiment
from router.store.stats import StatsStore, VariantStats

log = logging.getLogger("abrouter.rollout")

#: the actor of config versions and decisions the controller makes (operators' carry their own name)
CONTROLLER: Final = "rollout"
#: the lease outlives this many missed ticks before another process may take it over
LEASE_TICKS: Final = 5
#: but never shorter than this, so a slow Redis round trip does not hand the lease around
MIN_LEASE_S: Final = 10.0
#: the phases in which a rollout has a current step (and so a step baseline)
MOVING: Final = frozenset({Phase.RUNNING, Phase.PAUSED})
#: the phases in which a rollout is over
OVER: Final = frozenset({Phase.PROMOTED, Phase.ROLLED_BACK, Phase.ABORTED})
#: percent: a canary share further than this from the step's is someone else's edit
SHARE_TOLERANCE: Final = 1e-6
#: tries of an operator's action to write its weights when other config edits keep winning
OPERATOR_WRITE_ATTEMPTS: Final = 5


class RolloutAction(StrEnum):
    """What an operator can do to a rollout: POST /v1/experiments/{name}/rollout/{action}."""

    PAUSE = "pause"
    RESUME = "resume"
    ADVANCE = "advance"
    ABORT = "abort"


def plan_of(rollout: Rollout) -> str:
    """What identifies a rollout: its canary and steps. A config with another plan starts over at step 0."""
    return f"{rollout.canary}:{','.join(f'{step:g}' for step in rollout.steps)}"


def percent_of(rollout: Rollout, state: RolloutState) -> float:
    """The canary's share of traffic, in percent, that `state` gives it."""
    if state.phase in (Phase.ROLLED_BACK, Phase.ABORTED):
        return 0.0
    if state.phase is Phase.PROMOTED:
        return 100.0
    return rollout.steps[min(state.step, len(rollout.steps) - 1)]


def weights_at(experiment: Experiment, canary: str, percent: float) -> dict[str, float]:
    """Weights giving `canary` `percent` of the traffic; the other variants share the rest as their weights did."""
    others = {v.name: v.weight for v in experiment.variants if v.name != canary}
    total = sum(others.values())
    rest = 100.0 - percent
    if total > 0:
        weights = {name: rest * weight / total for name, weight in others.items()}
    else:  # nobody else had traffic: control takes the rest
        weights = {name: (rest if name == experiment.control else 0.0) for name in others}
    return {**weights, canary: percent}


def baseline_of(control: VariantStats, canary: VariantStats) -> str:
    """The arms' call counts and latency histograms, as a step's baseline is stored (JSON)."""
    arms = {"control": control, "canary": canary}
    return orjson.dumps({arm: [s.requests, s.errors, list(s.latency_counts)] for arm, s in arms.items()}).decode()


def since_step(baseline: str, control: VariantStats, canary: VariantStats) -> tuple[VariantStats, VariantStats]:
    """The arms' calls since the step's `baseline` (all of them without one): what operational gates judge."""
    if not baseline:
        return control, canary
    taken = orjson.loads(baseline)

    def minus(stats: VariantStats, base: list[Any]) -> VariantStats:
        requests, errors, latency = base
        return replace(
            stats,
            requests=max(0, stats.requests - requests),
            errors=max(0, stats.errors - errors),
            latency_counts=tuple(max(0, now - then) for now, then in zip(stats.latency_counts, latency, strict=False)),
        )

    return minus(control, taken["control"]), minus(canary, taken["canary"])


def target_config(experiment: Experiment, state: RolloutState) -> Experiment:
    """The config that carries `state`: the step's weights, no canary traffic after a rollback, or the promotion."""
    rollout = experiment.rollout
    assert rollout is not None
    if state.phase is Phase.PROMOTED:
        return Promotion(variant=rollout.canary).apply(experiment)
    return ConfigPatch(weights=weights_at(experiment, rollout.canary, percent_of(rollout, state))).apply(experiment)


def current(state: RolloutState | None, rollout: Rollout) -> RolloutState | None:
    """The stored `state` if it is a state of this rollout's plan; None if there is none or it is another plan's."""
    return state if state is not None and state.plan == plan_of(rollout) else None


def _edited_since(stored: StoredExperiment, state: RolloutState) -> bool:
    """Whether someone other than the controller wrote the config after `state`'s decision."""
    return 0 < state.decided_on < stored.version and stored.updated_by != CONTROLLER


def _running_again_after_promotion(stored: StoredExperiment, state: RolloutState) -> bool:
    """A promoted rollout whose experiment someone set running again: a new model to roll out, from step 0."""
    return (
        state.phase is Phase.PROMOTED
        and state.weights_applied
        and stored.experiment.status is Status.RUNNING
        and _edited_since(stored, state)
    )


def start_state(rollout: Rollout, now: float, *, previous: RolloutState | None = None) -> RolloutState:
    """A rollout at its first step, its first decision one interval away, its weights not yet written.

    `previous` is the state stored until now, if any: the new one replaces it (compare-and-set on its revision).
    """
    return RolloutState(
        plan=plan_of(rollout),
        phase=Phase.RUNNING,
        step=0,
        next_decision_at=now + rollout.interval_s,
        weights_applied=False,
        revision=previous.revision if previous is not None else 0,
    )


async def record_decision(
    rollouts: RolloutStore,
    metrics: Metrics,
    experiment: str,
    *,
    decision: RolloutDecision,
    actor: str,
    now: float,
    rollout: Rollout,
    before: RolloutState | None,
    after: RolloutState,
    reason: str,
    decided_on: int,
    units: Mapping[str, int] | None = None,
    gates: list[GateResult] | None = None,
) -> RolloutState | None:
    """Store `after` with the decision that led to it (what, by whom, on what) and count it.

    `decided_on` is the config version the decision was taken on. Returns the state as stored, or
    None when the compare-and-set lost: someone else decided first.
    """
    after = after.but(decided_on=decided_on)
    record = {
        "at": datetime.fromtimestamp(now, UTC).isoformat().replace("+00:00", "Z"),
        "decision": decision.value,
        "actor": actor,
        "reason": reason,
        "from_percent": percent_of(rollout, before) if before is not None else None,
        "percent": percent_of(rollout, after),
        "step": after.step,
        "phase": after.phase.value,
        "units": dict(units) if units is not None else None,
        "gates": [gate.to_json() for gate in gates] if gates is not None else None,
    }
    written = await rollouts.write(experiment, after, decision=record)
    if written is not None:
        metrics.rollout_decision(experiment, decision)
        metrics.set_rollout_step(experiment, percent_of(rollout, written))
    return written


class RolloutController:
    """Drives every rollout whose lease this process holds; `run` is the background task."""

    def __init__(
        self,
        *,
        live: LiveConfig,
        configs: ConfigStore,
        rollouts: RolloutStore,
        stats: StatsStore,
        metrics: Metrics,
        tick_s: float = 1.0,
        clock: Callable[[], float] = time.time,
        owner: str | None = None,
    ) -> None:
        self._live = live
        self._configs = configs
        self._rollouts = rollouts
        self._stats = stats
        self._metrics = metrics
        self._tick_s = tick_s
        self._lease_s = max(MIN_LEASE_S, LEASE_TICKS * tick_s)
        self._clock = clock
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._held: set[str] = set()
        self._unreadable: set[str] = set()  # experiments whose config this release cannot read, warned about once

    async def run(self) -> None:
        """Tick forever; what goes wrong with one rollout is logged, and the next tick tries again."""
        while True:
            await self.tick()
            await asyncio.sleep(self._tick_s)

    async def tick(self) -> None:
        """One pass over the experiments in force that have a rollout, each on its own.

        A Redis outage is counted and logged; any other error is logged with its traceback. Neither
        stops the pass (another experiment may live on a healthy Redis Cluster shard) nor the task.
        """
        for name in self._live.names():
            try:
                await self._tick_one(name)
                self._unreadable.discard(name)
            except StoreUnavailable as exc:
                honour_cancellation()
                self._metrics.store_error(StoreOperation.ROLLOUT)
                log.warning("rollout of %s: %s", name, exc.message)
            except UnknownExperiment:
                self._held.discard(name)  # archived meanwhile
            except UnreadableConfig as exc:
                # A newer release wrote it: leave the rollout to a replica that can read it.
                with contextlib.suppress(StoreUnavailable):
                    await self._rollouts.release_lease(name, self.owner)
                self._held.discard(name)
                if name not in self._unreadable:
                    self._unreadable.add(name)
                    log.warning("rollout of %s left to replicas that can read its config: %s", name, exc.message)
            except Exception:
                log.exception("rollout of %s: unexpected error; trying again at the next tick", name)

    async def _tick_one(self, name: str) -> None:
        experiment = self._live.get(name).experiment
        if experiment.rollout is None:
            self._held.discard(name)
            return
        if not await self._rollouts.hold_lease(name, self.owner, self._lease_s):
            self._held.discard(name)
            return
        self._held.add(name)
        await self.drive(name)

    async def close(self) -> None:
        """Give up the leases at shutdown, so another process takes over without waiting for them to expire."""
        for name in sorted(self._held):
            with contextlib.suppress(StoreUnavailable):  # it expires by itself
                await self._rollouts.release_lease(name, self.owner)
        self._held.clear()

    async def drive(self, name: str) -> None:
        """Start, reconcile or decide one rollout, as the holder of its lease."""
        stored = await self._configs.get(name)
        experiment, rollout = stored.experiment, stored.experiment.rollout
        if rollout is None:
            return
        now = self._clock()
        previous = await self._rollouts.read(name)
        state = current(previous, rollout)
        restarted = state is not None and _running_again_after_promotion(stored, state)
        if state is not None and state.phase in OVER and not state.weights_applied and _edited_since(stored, state):
            # Its config write went through, or not, but someone has written the config since: the
            # decision is not laid over their edit (it could conclude a new, untested model).
            await self._rollouts.write(name, state.but(weights_applied=True))
            return
        if state is None or restarted:
            if experiment.status is not Status.RUNNING:
                return  # a paused or concluded experiment does not start a rollout
            started = start_state(rollout, now, previous=previous)
            if previous is None:
                reason = "rollout started"
            elif restarted:
                reason = "rollout started again: the experiment runs again after its promotion"
            else:
                reason = "rollout started again: its canary or steps changed"
            state = await record_decision(
                self._rollouts,
                self._metrics,
                name,
                decision=RolloutDecision.ADVANCE,
                actor=CONTROLLER,
                now=now,
                rollout=rollout,
                before=None,
                after=started,
                reason=reason,
                decided_on=stored.version,
            )
            if state is None:
                return  # an operator acted meanwhile: look again next tick
        self._metrics.set_rollout_step(name, percent_of(rollout, state))
        if experiment.status is not Status.RUNNING:
            return  # an operator paused or concluded the experiment: no weights written, no decisions
        if not state.weights_applied or (state.phase in MOVING and not state.baseline):
            await self._settle(stored, state)
            return
        if state.phase is not Phase.RUNNING:
            return
        share = experiment.shares[rollout.canary] * 100
        if not math.isclose(share, percent_of(rollout, state), abs_tol=SHARE_TOLERANCE):
            await self._yield_to_edit(stored, state, share, now)
            return
        if now < state.next_decision_at:
            return
        await self.decide(stored, state, now)

    async def _yield_to_edit(self, stored: StoredExperiment, state: RolloutState, share: float, now: float) -> None:
        """Someone changed the canary's share by hand (an edit, a config rollback, a file applied again): pause.

        The controller would otherwise overwrite the edit at its next decision. Resuming carries on
        from the current step and writes its share again.
        """
        rollout = stored.experiment.rollout
        assert rollout is not None
        paused = state.but(phase=Phase.PAUSED)
        reason = (
            f"the canary's share was changed to {share:g}% by {stored.updated_by} (version {stored.version}), "
            f"not by the rollout ({percent_of(rollout, state):g}%): paused so the edit stands"
        )
        written = await record_decision(
            self._rollouts,
            self._metrics,
            stored.name,
            decision=RolloutDecision.PAUSE,
            actor=CONTROLLER,
            now=now,
            rollout=rollout,
            before=state,
            after=paused,
            reason=reason,
            decided_on=stored.version,
        )
        if written is not None:
            log.warning("rollout of %s: %s", stored.name, reason)

    async def _settle(self, stored: StoredExperiment, state: RolloutState, *, why: str = "") -> RolloutState | None:
        """Write the step's weights if they are not yet, then note the arms' call counts as the step's baseline.

        Error-rate and latency gates judge the calls since their step began (`since_step`), so a
        canary is judged at the share it has now, and one resumed after a rollback is not held to
        the calls that failed it. Returns the state as stored after, None if another writer won.
        """
        settled: RolloutState | None = state
        if not state.weights_applied:
            settled = await apply_weights(self._configs, self._rollouts, stored, state, actor=CONTROLLER, why=why)
        if settled is None or settled.phase not in MOVING or settled.baseline:
            return settled
        control, canary = await self._arms(stored.experiment)
        return await self._rollouts.write(stored.name, settled.but(baseline=baseline_of(control, canary)))

    async def _arms(self, experiment: Experiment) -> tuple[VariantStats, VariantStats]:
        """Control's and the canary's statistics, summed over every replica, since the experiment began."""
        assert experiment.rollout is not None
        metrics = [metric.name for metric in experiment.metrics]
        stats = await self._stats.read(experiment.name, variants=list(experiment.variant_names), metrics=metrics)
        return stats.variant(experiment.control), stats.variant(experiment.rollout.canary)

    async def decide(self, stored: StoredExperiment, state: RolloutState, now: float) -> RolloutDecision | None:
        """Compare canary and control on the gates and act; the decision made, None if another writer won."""
        experiment = stored.experiment
        rollout = experiment.rollout
        assert rollout is not None
        control, canary = await self._arms(experiment)
        units = {"control": control.units, "canary": canary.units}
        results: list[GateResult] | None = None
        if min(control.units, canary.units) < rollout.min_units:
            decision = RolloutDecision.HOLD
            reason = (
                f"too few units: control {control.units}, canary {canary.units}; "
                f"{rollout.min_units} per arm are needed before any decision"
            )
        else:
            kinds = {metric.name: metric.kind for metric in experiment.metrics}
            step_control, step_canary = since_step(state.baseline, control, canary)
            sequential = rollout.intervals == "sequential"
            results = [
                evaluate_gate(gate, control, canary, kind=kinds[gate.metric], sequential=sequential)
                if gate.metric in kinds
                else evaluate_gate(gate, step_control, step_canary, kind=None, sequential=sequential)
                for gate in rollout.gates
            ]
            failed = [result for result in results if result.verdict is Verdict.FAIL]
            unsure = [result for result in results if result.verdict is Verdict.INCONCLUSIVE]
            if failed:
                decision = RolloutDecision.ROLLBACK if rollout.on_failure == "rollback" else RolloutDecision.PAUSE
                reason = "gate failed: " + "; ".join(_gate_text(result) for result in failed)
            elif unsure:
                decision = RolloutDecision.HOLD
                reason = "gate inconclusive: " + "; ".join(_gate_text(result) for result in unsure)
            else:
                decision = _advance_or_promote(rollout, state)
                reason = "every gate passed" if results else "no gates; enough units in both arms"
        after = _after(decision, rollout, state, now)
        written = await record_decision(
            self._rollouts,
            self._metrics,
            experiment.name,
            decision=decision,
            actor=CONTROLLER,
            now=now,
            rollout=rollout,
            before=state,
            after=after,
            reason=reason,
            decided_on=stored.version,
            units=units,
            gates=results,
        )
        if written is None:
            return None
        if not written.weights_applied:
            inputs = f"{reason}; units: control {control.units}, canary {canary.units}"
            await self._settle(stored, written, why=inputs)
        log.info("rollout of %s: %s (%s)", experiment.name, decision.value, reason)
        return decision


async def apply_weights(
    configs: ConfigStore,
    rollouts: RolloutStore,
    stored: StoredExperiment,
    state: RolloutState,
    *,
    actor: str,
    why: str = "",
) -> RolloutState | None:
    """Write the config that carries `state` as a new version, then mark the state applied; None if raced.

    `why` (the decision's reason and inputs) goes into the history's change summary. A lost race
    (another edit of the config or of the state) is left for the caller, or the controller's next
    tick, which reads both again.
    """
    experiment = stored.experiment
    rollout = experiment.rollout
    assert rollout is not None
    target = target_config(experiment, state)
    note = f"rollout: {_phase_text(rollout, state)}" + (f" ({why})" if why else "")
    try:
        await configs.put(target, actor=actor, expected_version=stored.version, note=note)
    except VersionConflict:
        return None
    return await rollouts.write(experiment.name, state.but(weights_applied=True))


async def operate(
    action: RolloutAction,
    stored: StoredExperiment,
    *,
    configs: ConfigStore,
    rollouts: RolloutStore,
    metrics: Metrics,
    actor: str,
    now: float,
) -> RolloutState:
    """An operator's action on a rollout, recorded as a decision; `RolloutConflict` when it does not apply."""
    experiment = stored.experiment
    rollout = experiment.rollout
    if rollout is None:
        raise NoRollout(f"experiment {experiment.name!r} has no rollout in its config (see docs/rollout.md)")
    if action in (RolloutAction.ADVANCE, RolloutAction.RESUME) and experiment.status is not Status.RUNNING:
        raise RolloutConflict(
            f"cannot {action.value} the rollout of {experiment.name!r}: the experiment is {experiment.status}; "
            "set its status to running first"
        )
    previous = await rollouts.read(experiment.name)
    state = current(previous, rollout) or start_state(rollout, now, previous=previous)  # as the controller would
    decision, after = _operator_change(action, rollout, state, now)
    written = await record_decision(
        rollouts,
        metrics,
        experiment.name,
        decision=decision,
        actor=actor,
        now=now,
        rollout=rollout,
        before=state,
        after=after,
        reason=f"{action.value} by {actor}",
        decided_on=stored.version,
    )
    if written is None:
        raise RolloutConflict(
            f"the rollout of {experiment.name!r} changed while this {action.value} was being applied; "
            "read it again (GET .../rollout) and retry"
        )
    if written.weights_applied:
        return written
    for _ in range(OPERATOR_WRITE_ATTEMPTS):
        applied = await apply_weights(configs, rollouts, stored, written, actor=actor, why=f"{action.value} by {actor}")
        if applied is not None:
            return applied  # the controller notes the step's baseline at its next tick
        # another edit of the config came first: apply the step's weights to the newer version
        stored = await configs.get(experiment.name)
        latest = await rollouts.read(experiment.name)
        if latest is None or latest.revision != written.revision:
            break  # the state moved on too: the controller's next tick settles the weights
    raise RolloutConflict(
        f"the {action.value} of {experiment.name!r} is recorded, but its weights could not be written: "
        "the config kept changing. The rollout controller writes them within a tick; check GET .../rollout"
    )


def _operator_change(
    action: RolloutAction, rollout: Rollout, state: RolloutState, now: float
) -> tuple[RolloutDecision, RolloutState]:
    phase = state.phase
    if action is RolloutAction.PAUSE:
        _require(phase is Phase.RUNNING, action, phase)
        return RolloutDecision.PAUSE, state.but(phase=Phase.PAUSED)
    if action is RolloutAction.RESUME:
        if phase is Phase.PAUSED:  # the step's share is written again, whatever was edited meanwhile
            resumed = state.but(phase=Phase.RUNNING, next_decision_at=now + rollout.interval_s, weights_applied=False)
            return RolloutDecision.RESUME, resumed
        _require(phase in (Phase.ROLLED_BACK, Phase.ABORTED), action, phase)
        return RolloutDecision.RESUME, start_state(rollout, now, previous=state)  # from the first step again
    if action is RolloutAction.ADVANCE:
        _require(phase in MOVING, action, phase)
        decision = _advance_or_promote(rollout, state)
        return decision, _after(decision, rollout, state, now)
    _require(phase in MOVING, action, phase)
    return RolloutDecision.ABORT, state.but(phase=Phase.ABORTED, weights_applied=False)


def _require(allowed: bool, action: RolloutAction, phase: Phase) -> None:
    if not allowed:
        raise RolloutConflict(f"cannot {action.value} a rollout that is {phase.value.replace('_', ' ')}")


def _advance_or_promote(rollout: Rollout, state: RolloutState) -> RolloutDecision:
    """Advancing into the plan's last step is the promotion: the canary wins."""
    return RolloutDecision.PROMOTE if state.step + 1 >= len(rollout.steps) - 1 else RolloutDecision.ADVANCE


def _after(decision: RolloutDecision, rollout: Rollout, state: RolloutState, now: float) -> RolloutState:
    """The state a decision leads to; the next decision is one interval away whatever it was."""
    later = state.but(next_decision_at=now + rollout.interval_s)
    if decision is RolloutDecision.ADVANCE:
        return later.but(step=state.step + 1, weights_applied=False, baseline="")
    if decision is RolloutDecision.PROMOTE:
        return later.but(phase=Phase.PROMOTED, step=len(rollout.steps) - 1, weights_applied=False)
    if decision is RolloutDecision.ROLLBACK:
        return later.but(phase=Phase.ROLLED_BACK, weights_applied=False)
    if decision is RolloutDecision.PAUSE:
        return later.but(phase=Phase.PAUSED)
    return later  # HOLD


def _phase_text(rollout: Rollout, state: RolloutState) -> str:
    percent = percent_of(rollout, state)
    if state.phase is Phase.PROMOTED:
        return f"{rollout.canary} promoted"
    if state.phase in (Phase.ROLLED_BACK, Phase.ABORTED):
        return f"{rollout.canary} {state.phase.value.replace('_', ' ')}, 0% of traffic"
    return f"{rollout.canary} at {percent:g}% (step {state.step + 1} of {len(rollout.steps)})"


def _gate_text(result: GateResult) -> str:
    interval = (
        f"[{result.ci_low:.4g}, {result.ci_high:.4g}]"
        if result.ci_low is not None and result.ci_high is not None
        else "no estimate"
    )
    if result.sequential and result.ci_low is not None:
        interval = f"always-valid {interval}"
    text = f"{result.metric} {result.bound} {result.limit:g}: {interval}"
    return f"{text} ({result.detail})" if result.detail else text
