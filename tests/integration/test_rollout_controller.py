"""The progressive rollout against a real Redis: steps, holds, rollbacks, pauses, promotion, leases, operators.

Statistics are written the way the gateway writes them (the event script of `StatsStore`), so the
controller reads exactly what it would read in production; its clock is the test's.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Iterator
from typing import Any

import pytest
import redis.asyncio
from prometheus_client import CollectorRegistry

from router.config.edits import ConfigPatch
from router.config.schema import Experiment, MetricKind
from router.errors import NoRollout, RolloutConflict
from router.live_config import LiveConfig
from router.metrics import Metrics
from router.proxy import open_upstream_client
from router.rollout.controller import (
    CONTROLLER,
    RolloutAction,
    RolloutController,
    operate,
    weights_at,
)
from router.rollout.state import Phase, RolloutState, RolloutStore
from router.store.configs import ConfigStore
from router.store.keys import Keys
from router.store.stats import StatsStore, calls_event, exposure_event, outcome_event
from router.variants.registry import ModelCache

NAME = "churn"
INTERVAL_S = 60.0


def experiment(**rollout: Any) -> Experiment:
    plan = {"canary": "candidate", "steps": [1, 5, 25, 100], "interval_s": INTERVAL_S, "min_units": 200}
    plan.update(rollout)
    return Experiment.model_validate(
        {
            "name": NAME,
            "control": "current",
            "variants": [
                {"name": "current", "weight": 100, "url": "http://127.0.0.1:9/current"},
                {"name": "candidate", "weight": 0, "url": "http://127.0.0.1:9/candidate"},
            ],
            "metrics": [{"name": "converted", "kind": "binomial"}],
            "rollout": plan,
        }
    )


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float = INTERVAL_S + 1) -> None:
        self.now += seconds


class Traffic:
    """Writes per-variant statistics through the event script, as the gateway's writer does."""

    def __init__(self, stats: StatsStore) -> None:
        self._stats = stats
        self._seq = itertools.count(1)
        self._units = itertools.count()

    async def send(
        self, variant: str, *, units: int, requests: int, errors: int, converted: int = 0, latency_bucket: int = 3
    ) -> None:
        seq = self._seq
        names = [f"u{next(self._units)}" for _ in range(units)]
        events = [
            exposure_event(
                NAME,
                next(seq),
                unit=u,
                variant=variant,
                version=1,
                reason="hashed",
                at_ms=0,
                status=200,
                latency_ms=1.0,
            )
            for u in names
        ]
        events.append(
            calls_event(
                NAME,
                next(seq),
                variant=variant,
                requests=requests,
                errors=errors,
                latency_counts={latency_bucket: requests},
            )
        )
        events += [
            outcome_event(NAME, next(seq), unit=u, metric="converted", kind=MetricKind.BINOMIAL, value=1, at_ms=0)
            for u in names[:converted]
        ]
        await self._stats.apply(NAME, "test-writer", events)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def parts(redis_client: redis.asyncio.Redis, clock: Clock) -> Iterator[dict[str, Any]]:
    keys = Keys()
    configs = ConfigStore(redis_client, keys=keys)
    stats = StatsStore(redis_client, keys=keys, stream_maxlen=10_000)
    rollouts = RolloutStore(redis_client, keys=keys)
    metrics = Metrics(CollectorRegistry())
    yield {"configs": configs, "stats": stats, "rollouts": rollouts, "metrics": metrics, "traffic": Traffic(stats)}


def controller(
    parts: dict[str, Any], clock: Clock, owner: str = "test", live: LiveConfig | None = None
) -> RolloutController:
    """A controller on the test's store; without `live` only drive() works (tick() reads the live config)."""
    return RolloutController(
        live=live,  # type: ignore[arg-type]
        configs=parts["configs"],
        rollouts=parts["rollouts"],
        stats=parts["stats"],
        metrics=parts["metrics"],
        clock=clock,
        owner=owner,
    )


async def started(parts: dict[str, Any], clock: Clock, **rollout: Any) -> RolloutController:
    """The experiment stored with `rollout` settings, and a controller that has started its rollout."""
    await parts["configs"].put(experiment(**rollout), actor="alice", expected_version=None)
    driver = controller(parts, clock)
    await driver.drive(NAME)
    return driver


async def act(parts: dict[str, Any], clock: Clock, action: RolloutAction, actor: str = "bob") -> RolloutState:
    """An operator's action on the rollout as it is stored now."""
    return await operate(
        action,
        await parts["configs"].get(NAME),
        configs=parts["configs"],
        rollouts=parts["rollouts"],
        metrics=parts["metrics"],
        actor=actor,
        now=clock(),
    )


async def weights(parts: dict[str, Any]) -> dict[str, float]:
    stored = await parts["configs"].get(NAME)
    return {v.name: v.weight for v in stored.experiment.variants}


async def state(parts: dict[str, Any]) -> RolloutState:
    current = await parts["rollouts"].read(NAME)
    assert current is not None
    return current


async def decisions(parts: dict[str, Any]) -> list[str]:
    return [d["decision"] for d in reversed(await parts["rollouts"].decisions(NAME))]


async def healthy_step(parts: dict[str, Any], units: int = 300) -> None:
    """Both arms with enough units, the same tiny error rate and conversion: every gate passes."""
    for variant in ("current", "candidate"):
        await parts["traffic"].send(variant, units=units, requests=4000, errors=1, converted=units // 10)


def shares(values: dict[str, float]) -> dict[str, float]:
    total = sum(values.values())
    return {name: round(weight / total * 100, 6) for name, weight in values.items()}


async def test_a_healthy_canary_goes_through_every_step_and_is_promoted(parts: dict[str, Any], clock: Clock) -> None:
    gates = [{"metric": "error_rate", "max_increase": 0.01}, {"metric": "converted", "no_worse_than": -0.5}]
    await parts["configs"].put(experiment(gates=gates), actor="alice", expected_version=None)
    driver = controller(parts, clock)

    await driver.drive(NAME)  # starts at the first step and writes its weights
    assert shares(await weights(parts)) == {"current": 99.0, "candidate": 1.0}
    assert (await state(parts)).phase is Phase.RUNNING
    await driver.drive(NAME)  # not due yet: nothing changes
    assert await decisions(parts) == ["advance"]

    seen = []
    for _ in range(2):
        await healthy_step(parts)
        clock.advance()
        await driver.drive(NAME)
        seen.append(shares(await weights(parts))["candidate"])
    assert seen == [5.0, 25.0]
    await healthy_step(parts)
    clock.advance()
    await driver.drive(NAME)  # into the last step (100%): the promotion, all traffic to the canary
    stored = await parts["configs"].get(NAME)
    assert stored.experiment.status == "concluded" and stored.experiment.winner == "candidate"
    assert (await state(parts)).phase is Phase.PROMOTED
    assert await decisions(parts) == ["advance", "advance", "advance", "promote"]
    last = (await parts["rollouts"].decisions(NAME))[0]
    assert last["actor"] == CONTROLLER and last["units"] == {"control": 900, "canary": 900}
    assert [gate["verdict"] for gate in last["gates"]] == ["pass", "pass"]
    history = await parts["configs"].history(NAME)
    assert [entry.updated_by for entry in history] == ["alice", "rollout", "rollout", "rollout", "rollout"]
    assert "rollout: candidate at 5% (step 2 of 4)" in history[2].change
    assert "candidate promoted" in history[-1].change
    assert (
        parts["metrics"].registry.get_sample_value(
            "abrouter_rollout_decisions_total", {"experiment": NAME, "decision": "promote"}
        )
        == 1
    )
    assert parts["metrics"].registry.get_sample_value("abrouter_rollout_step", {"experiment": NAME}) == 100


async def test_a_canary_failing_a_gate_is_rolled_back_to_no_traffic(parts: dict[str, Any], clock: Clock) -> None:
    driver = await started(parts, clock, gates=[{"metric": "error_rate", "max_increase": 0.01}])
    await parts["traffic"].send("current", units=300, requests=5000, errors=5)
    await parts["traffic"].send("candidate", units=300, requests=5000, errors=400)  # 8% against 0.1%
    clock.advance()
    await driver.drive(NAME)
    assert shares(await weights(parts)) == {"current": 100.0, "candidate": 0.0}
    assert (await state(parts)).phase is Phase.ROLLED_BACK
    last = (await parts["rollouts"].decisions(NAME))[0]
    assert last["decision"] == "rollback" and last["percent"] == 0 and last["from_percent"] == 1
    gate = last["gates"][0]
    assert gate["verdict"] == "fail" and gate["ci_low"] > 0.01
    assert "gate failed: error_rate max_increase 0.01" in last["reason"]
    clock.advance()
    await driver.drive(NAME)  # over: no further decision
    assert await decisions(parts) == ["advance", "rollback"]


async def test_too_few_units_hold_the_step_and_never_roll_back(parts: dict[str, Any], clock: Clock) -> None:
    driver = await started(parts, clock, gates=[{"metric": "error_rate", "max_increase": 0.01}])
    await parts["traffic"].send("current", units=300, requests=300, errors=0)
    await parts["traffic"].send("candidate", units=20, requests=20, errors=10)  # terrible, but 20 units
    clock.advance()
    await driver.drive(NAME)
    last = (await parts["rollouts"].decisions(NAME))[0]
    assert last["decision"] == "hold" and last["gates"] is None
    assert "too few units: control 300, canary 20" in last["reason"]
    assert shares(await weights(parts))["candidate"] == 1.0
    assert (await state(parts)).phase is Phase.RUNNING


async def test_an_inconclusive_gate_holds_the_step(parts: dict[str, Any], clock: Clock) -> None:
    driver = await started(parts, clock, gates=[{"metric": "error_rate", "max_increase": 0.001}])
    await parts["traffic"].send("current", units=250, requests=250, errors=0)
    await parts["traffic"].send("candidate", units=250, requests=250, errors=0)  # no errors, but few calls
    clock.advance()
    await driver.drive(NAME)
    last = (await parts["rollouts"].decisions(NAME))[0]
    assert last["decision"] == "hold" and last["gates"][0]["verdict"] == "inconclusive"
    assert shares(await weights(parts))["candidate"] == 1.0


async def test_on_failure_pause_keeps_the_step_until_an_operator_resumes(parts: dict[str, Any], clock: Clock) -> None:
    driver = await started(parts, clock, gates=[{"metric": "latency_p95", "max_ratio": 1.25}], on_failure="pause")
    await parts["traffic"].send("current", units=300, requests=3000, errors=0, latency_bucket=3)  # 1.5-2 ms
    await parts["traffic"].send("candidate", units=300, requests=3000, errors=0, latency_bucket=12)  # 10-12.5 ms
    clock.advance()
    await driver.drive(NAME)
    assert (await state(parts)).phase is Phase.PAUSED
    assert shares(await weights(parts))["candidate"] == 1.0  # paused where it was
    clock.advance()
    await driver.drive(NAME)
    assert await decisions(parts) == ["advance", "pause"]

    resumed = await act(parts, clock, RolloutAction.RESUME, actor="bob")
    assert resumed.phase is Phase.RUNNING and resumed.step == 0
    newest = (await parts["rollouts"].decisions(NAME))[0]
    assert newest["decision"] == "resume" and newest["actor"] == "bob"


async def test_operators_pause_advance_abort_and_restart(parts: dict[str, Any], clock: Clock) -> None:
    driver = await started(parts, clock)

    assert (await act(parts, clock, RolloutAction.PAUSE)).phase is Phase.PAUSED
    with pytest.raises(RolloutConflict, match="cannot pause a rollout that is paused"):
        await act(parts, clock, RolloutAction.PAUSE)
    healthy = await act(parts, clock, RolloutAction.ADVANCE)  # paused rollouts can be moved by hand
    assert healthy.step == 1 and shares(await weights(parts))["candidate"] == 5.0
    clock.advance()
    await healthy_step(parts)
    await driver.drive(NAME)  # paused: the controller does not decide
    assert shares(await weights(parts))["candidate"] == 5.0
    assert (await act(parts, clock, RolloutAction.ABORT)).phase is Phase.ABORTED
    assert shares(await weights(parts)) == {"current": 100.0, "candidate": 0.0}
    with pytest.raises(RolloutConflict):
        await act(parts, clock, RolloutAction.ADVANCE)
    restarted = await act(parts, clock, RolloutAction.RESUME)
    assert restarted.phase is Phase.RUNNING and restarted.step == 0
    assert shares(await weights(parts))["candidate"] == 1.0
    assert await decisions(parts) == ["advance", "pause", "advance", "abort", "resume"]
    actors = [d["actor"] for d in reversed(await parts["rollouts"].decisions(NAME))]
    assert actors == [CONTROLLER, "bob", "bob", "bob", "bob"]


async def test_a_changed_plan_starts_the_rollout_over(parts: dict[str, Any], clock: Clock) -> None:
    driver = await started(parts, clock)
    await healthy_step(parts)
    clock.advance()
    await driver.drive(NAME)
    assert shares(await weights(parts))["candidate"] == 5.0
    stored = await parts["configs"].get(NAME)
    replanned = experiment(steps=[2, 10, 100]).model_dump(mode="json")
    replanned["variants"] = [v.model_dump(mode="json") for v in stored.experiment.variants]
    await parts["configs"].put(Experiment.model_validate(replanned), actor="alice", expected_version=stored.version)
    await driver.drive(NAME)
    assert shares(await weights(parts))["candidate"] == 2.0
    newest = (await parts["rollouts"].decisions(NAME))[0]
    assert "its canary or steps changed" in newest["reason"]


async def test_an_operator_edit_racing_the_controller_loses_cleanly(parts: dict[str, Any], clock: Clock) -> None:
    """The state's compare-and-set: a write based on a stale revision is refused, and nothing is recorded."""
    await parts["configs"].put(experiment(), actor="alice", expected_version=None)
    await controller(parts, clock).drive(NAME)
    seen = await state(parts)
    assert await parts["rollouts"].write(NAME, seen.but(phase=Phase.PAUSED), decision={"decision": "pause"})
    assert await parts["rollouts"].write(NAME, seen.but(step=1), decision={"decision": "advance"}) is None
    assert (await state(parts)).step == 0
    assert await decisions(parts) == ["advance", "pause"]


async def test_an_experiment_without_a_rollout_refuses_operator_actions(parts: dict[str, Any], clock: Clock) -> None:
    plain = experiment().model_dump(mode="json")
    plain["rollout"] = None
    await parts["configs"].put(Experiment.model_validate(plain), actor="alice", expected_version=None)
    with pytest.raises(NoRollout):
        await act(parts, clock, RolloutAction.PAUSE, actor="bob")


async def test_one_lease_holder_at_a_time_and_a_released_lease_is_free_at_once(parts: dict[str, Any]) -> None:
    rollouts: RolloutStore = parts["rollouts"]
    assert await rollouts.hold_lease(NAME, "a", 10)
    assert not await rollouts.hold_lease(NAME, "b", 10)
    assert await rollouts.hold_lease(NAME, "a", 10)  # renewed by its holder
    holder = await rollouts.lease(NAME)
    assert holder is not None and holder[0] == "a" and 9 < holder[1] <= 10
    await rollouts.release_lease(NAME, "b")  # not b's to release
    assert not await rollouts.hold_lease(NAME, "b", 10)
    await rollouts.release_lease(NAME, "a")
    assert await rollouts.hold_lease(NAME, "b", 10)


async def test_an_expired_lease_moves_to_another_process(parts: dict[str, Any]) -> None:
    rollouts: RolloutStore = parts["rollouts"]
    assert await rollouts.hold_lease(NAME, "a", 0.05)
    await asyncio.sleep(0.1)
    assert await rollouts.hold_lease(NAME, "b", 10)


@pytest.mark.parametrize(
    ("before", "percent", "after"),
    [
        pytest.param({"current": 100, "candidate": 0}, 5, {"current": 95.0, "candidate": 5}, id="two-arms"),
        pytest.param({"a": 60, "b": 20, "candidate": 0}, 25, {"a": 56.25, "b": 18.75, "candidate": 25}, id="three"),
        pytest.param(
            {"current": 0, "b": 0, "candidate": 100},
            10,
            {"current": 90.0, "b": 0.0, "candidate": 10},
            id="others-had-none",
        ),
    ],
)
def test_weights_at_give_the_canary_its_share_and_keep_the_others_proportions(
    before: dict[str, float], percent: float, after: dict[str, float]
) -> None:
    control = next(iter(before))
    plain = Experiment.model_validate(
        {
            "name": "w",
            "control": control,
            "variants": [{"name": n, "weight": w, "url": f"http://127.0.0.1:9/{n}"} for n, w in before.items()],
        }
    )
    assert weights_at(plain, "candidate", percent) == pytest.approx(after)


async def test_a_share_changed_by_hand_pauses_the_rollout_instead_of_being_overwritten(
    parts: dict[str, Any], clock: Clock
) -> None:
    driver = await started(parts, clock)
    stored = await parts["configs"].get(NAME)
    edited = ConfigPatch(weights={"current": 100, "candidate": 0}).apply(stored.experiment)
    await parts["configs"].put(edited, actor="oncall", expected_version=stored.version)
    await healthy_step(parts)
    clock.advance()
    await driver.drive(NAME)
    assert (await state(parts)).phase is Phase.PAUSED
    assert shares(await weights(parts))["candidate"] == 0.0  # the edit stands
    newest = (await parts["rollouts"].decisions(NAME))[0]
    assert newest["decision"] == "pause" and "changed to 0% by oncall" in newest["reason"]
    resumed = await act(parts, clock, RolloutAction.RESUME, actor="oncall")
    assert resumed.phase is Phase.RUNNING and resumed.step == 0 and resumed.weights_applied
    assert shares(await weights(parts))["candidate"] == 1.0  # resuming writes the step's share again


async def test_a_paused_or_concluded_experiment_is_neither_moved_nor_advanced(
    parts: dict[str, Any], clock: Clock
) -> None:
    driver = await started(parts, clock)
    stored = await parts["configs"].get(NAME)
    await parts["configs"].put(
        ConfigPatch(status="paused").apply(stored.experiment), actor="oncall", expected_version=stored.version
    )
    await healthy_step(parts)
    clock.advance()
    await driver.drive(NAME)
    assert await decisions(parts) == ["advance"]  # no decision while the experiment is paused
    with pytest.raises(RolloutConflict, match="the experiment is paused"):
        await act(parts, clock, RolloutAction.ADVANCE, actor="bob")


async def test_only_the_lease_holder_ticks_a_rollout_and_an_archived_experiment_stops_nothing(
    parts: dict[str, Any], clock: Clock
) -> None:
    upstream = open_upstream_client("httptools", max_connections=4, keepalive_s=1)
    live = LiveConfig(parts["configs"], client=upstream, models=ModelCache(None))
    try:
        await parts["configs"].put(experiment(), actor="alice", expected_version=None)
        other = experiment().model_dump(mode="json") | {"name": "other"}
        await parts["configs"].put(Experiment.model_validate(other), actor="alice", expected_version=None)
        await live.refresh(strict=True)
        drivers = [controller(parts, clock, owner, live=live) for owner in ("first", "second")]
        for driver in drivers:
            await driver.tick()
        lease = await parts["rollouts"].lease(NAME)
        assert lease is not None and lease[0] == "first"
        assert [d["actor"] for d in await parts["rollouts"].decisions(NAME)] == [CONTROLLER]
        await parts["configs"].archive(NAME, actor="alice")  # the live config still lists it
        for driver in drivers:
            await driver.tick()  # no exception escapes; the other rollout goes on
        assert (await parts["rollouts"].read("other")) is not None
        await drivers[0].close()
        await drivers[1].tick()
        other_lease = await parts["rollouts"].lease("other")
        assert other_lease is not None and other_lease[0] == "second"  # released at close, taken at once
    finally:
        await upstream.aclose()


async def test_error_and_latency_gates_judge_the_calls_of_the_current_step_so_a_resumed_rollout_can_pass(
    parts: dict[str, Any], clock: Clock
) -> None:
    driver = await started(parts, clock, gates=[{"metric": "error_rate", "max_increase": 0.01}])
    await parts["traffic"].send("current", units=300, requests=5000, errors=5)
    await parts["traffic"].send("candidate", units=300, requests=5000, errors=400)  # 8%: rolled back
    clock.advance()
    await driver.drive(NAME)
    assert (await state(parts)).phase is Phase.ROLLED_BACK
    await act(parts, clock, RolloutAction.RESUME, actor="bob")
    await driver.drive(NAME)  # notes the restarted step's baseline
    assert (await state(parts)).baseline
    await parts["traffic"].send("current", units=300, requests=5000, errors=5)
    await parts["traffic"].send("candidate", units=300, requests=5000, errors=5)  # fixed
    clock.advance()
    await driver.drive(NAME)
    assert await decisions(parts) == ["advance", "rollback", "resume", "advance"]
    assert shares(await weights(parts))["candidate"] == 5.0
    gate = (await parts["rollouts"].decisions(NAME))[0]["gates"][0]
    assert (gate["control_n"], gate["canary_n"]) == (5000, 5000)  # this step's calls, not all 10 000
    assert gate["verdict"] == "pass"


@pytest.mark.parametrize(
    ("intervals", "expected"),
    [pytest.param("fixed", "rollback", id="fixed"), pytest.param("sequential", "hold", id="sequential")],
)
async def test_sequential_intervals_hold_on_evidence_that_fixed_intervals_roll_back(
    parts: dict[str, Any], clock: Clock, intervals: str, expected: str
) -> None:
    """1% against 2% errors over 5 000 calls each: beyond `max_increase: 0.004` at one look, not at every look."""
    gates = [{"metric": "error_rate", "max_increase": 0.004}]
    driver = await started(parts, clock, gates=gates, intervals=intervals)
    await parts["traffic"].send("current", units=300, requests=5000, errors=50)
    await parts["traffic"].send("candidate", units=300, requests=5000, errors=100)
    clock.advance()
    await driver.drive(NAME)

    last = (await parts["rollouts"].decisions(NAME))[0]
    gate = last["gates"][0]
    assert last["decision"] == expected
    assert gate["sequential"] is (intervals == "sequential")
    assert (gate["ci_low"] > 0.004) is (intervals == "fixed")
    assert ("always-valid [" in last["reason"]) is (intervals == "sequential")


async def test_a_config_this_release_cannot_read_leaves_the_rollout_to_replicas_that_can(
    parts: dict[str, Any], clock: Clock, redis_client: redis.asyncio.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """During a rolling upgrade: no traceback every tick, and no lease kept from a newer replica."""
    upstream = open_upstream_client("httptools", max_connections=4, keepalive_s=1)
    live = LiveConfig(parts["configs"], client=upstream, models=ModelCache(None))
    try:
        await parts["configs"].put(experiment(), actor="alice", expected_version=None)
        await live.refresh(strict=True)
        newer = experiment().model_dump(mode="json") | {"owner": "team-b"}  # a field of a newer release
        await redis_client.hset(Keys().config(NAME), mapping={"version": "2", "config": json.dumps(newer)})
        driver = controller(parts, clock, "older", live=live)

        with caplog.at_level("WARNING"):
            for _ in range(3):
                await driver.tick()

        assert await parts["rollouts"].lease(NAME) is None
        warnings = [r for r in caplog.records if "left to replicas that can read its config" in r.message]
        assert len(warnings) == 1  # once, not every tick
        assert not [r for r in caplog.records if r.levelname == "ERROR"]
    finally:
        await upstream.aclose()


async def promoted(parts: dict[str, Any], clock: Clock) -> RolloutController:
    """A rollout taken through every step to its promotion (the experiment concluded, the canary the winner)."""
    driver = await started(parts, clock, gates=[{"metric": "error_rate", "max_increase": 0.01}])
    for _ in range(3):
        await healthy_step(parts)
        clock.advance()
        await driver.drive(NAME)
    assert (await state(parts)).phase is Phase.PROMOTED
    return driver


def running_again(concluded: Experiment) -> Experiment:
    """The concluded experiment set running again, as an operator does to roll out a new model."""
    return Experiment.model_validate({**concluded.model_dump(mode="json"), "status": "running", "winner": None})


async def test_an_experiment_set_running_again_after_its_promotion_rolls_out_again_from_the_first_step(
    parts: dict[str, Any], clock: Clock
) -> None:
    """A new model behind the same variant name gets a rollout of its own, not the old promotion."""
    driver = await promoted(parts, clock)
    concluded = await parts["configs"].get(NAME)
    await parts["configs"].put(running_again(concluded.experiment), actor="alice", expected_version=concluded.version)

    await driver.drive(NAME)  # starts again and writes the first step's weights

    assert (await state(parts)).phase is Phase.RUNNING and (await state(parts)).step == 0
    assert shares(await weights(parts))["candidate"] == 1.0
    last = (await parts["rollouts"].decisions(NAME))[0]
    assert last["reason"] == "rollout started again: the experiment runs again after its promotion"


async def test_a_promotion_whose_state_write_failed_is_not_laid_over_a_later_edit(
    parts: dict[str, Any], clock: Clock, redis_client: redis.asyncio.Redis
) -> None:
    """The promotion's config went through but its state kept `weights_applied` 0 (a Redis blip); then an
    operator set the experiment running with a new model: the old promotion must not conclude it."""
    driver = await promoted(parts, clock)
    await redis_client.hset(Keys().rollout(NAME), "weights_applied", "0")  # the blip
    concluded = await parts["configs"].get(NAME)
    running = running_again(concluded.experiment)
    edited = await parts["configs"].put(running, actor="alice", expected_version=concluded.version)

    await driver.drive(NAME)

    now = await parts["configs"].get(NAME)
    assert (now.version, now.experiment.status) == (edited.version, "running")  # not concluded again
    assert (await state(parts)).weights_applied
