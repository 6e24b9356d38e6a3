"""Adaptive micro-batching of local models: real models, real worker threads, concurrent calls on one event loop."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from router.errors import ModelOverloaded, PredictionError
from router.variants.batching import Batching
from router.variants.local import LocalModel
from variants.churn import MODELS, make_dataset

#: long enough for a thread to notice, short enough that a stuck test fails fast
WAIT_S = 10.0


class GatedModel:
    """Records the rows of every model call; while `gate` is closed, calls block, so others queue behind them."""

    def __init__(self, *, poison: float | None = None) -> None:
        self.calls: list[list[float]] = []  # the first feature of each row, per model call
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.poison = poison

    def predict(self, X: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        self.calls.append(X[:, 0].tolist())
        self.entered.set()
        assert self.gate.wait(WAIT_S), "the test never opened the gate"
        if self.poison is not None and (X[:, 0] == self.poison).any():
            raise ValueError(f"cannot score {self.poison}")
        return X[:, 0] * 2


def gated(model: GatedModel, **batching: int) -> LocalModel:
    return LocalModel(model, Path("gated.joblib"), batching=Batching(**batching))


def payload(*firsts: float) -> dict[str, Any]:
    """Rows whose first feature identifies them, so a test can see which call's rows went where."""
    return {"instances": [[first, 0.0] for first in firsts]}


async def hold(model: GatedModel, local: LocalModel) -> asyncio.Task[dict[str, Any]]:
    """Start a call and keep the model busy with it until `model.gate` is set."""
    model.gate.clear()
    model.entered.clear()
    task = asyncio.create_task(local.predict(payload(-1.0)))
    assert await asyncio.to_thread(model.entered.wait, WAIT_S)
    return task


@pytest.mark.parametrize("name", [pytest.param(name, id=name) for name in MODELS])
async def test_concurrent_calls_of_different_sizes_get_the_answers_they_would_get_alone(
    trained_models: dict[str, Path], name: str
) -> None:
    batched = LocalModel.load(trained_models[name], batching=Batching(max_rows=64))
    alone = LocalModel.load(trained_models[name], batching=None)
    features = make_dataset(60, seed=11)[0].tolist()
    payloads = [{"instances": features[i : i + 1 + i % 5]} for i in range(0, 50, 3)]  # 1 to 5 rows each
    answers = await asyncio.gather(*(batched.predict(p) for p in payloads))
    expected = [await alone.predict(p) for p in payloads]
    for got, want in zip(answers, expected, strict=True):
        assert got["predictions"] == want["predictions"]
        assert np.allclose(got["probabilities"], want["probabilities"], rtol=1e-12, atol=1e-15)


async def test_calls_that_arrive_while_the_model_is_busy_run_together_as_one_batch() -> None:
    model = GatedModel()
    local = gated(model)
    busy = await hold(model, local)
    waiting = [asyncio.create_task(local.predict(payload(float(i), float(i)))) for i in range(1, 4)]
    await asyncio.sleep(0)  # let them queue
    model.gate.set()
    answers = await asyncio.gather(busy, *waiting)
    assert model.calls == [[-1.0], [1.0, 1.0, 2.0, 2.0, 3.0, 3.0]]
    assert [a["predictions"] for a in answers] == [[-2.0], [2.0, 2.0], [4.0, 4.0], [6.0, 6.0]]


async def test_a_call_to_an_idle_model_runs_at_once_and_alone() -> None:
    model = GatedModel()
    local = gated(model)
    answer = await asyncio.wait_for(local.predict(payload(5.0)), WAIT_S)
    assert (model.calls, answer["predictions"]) == ([[5.0]], [10.0])


async def test_a_batch_holds_at_most_max_rows_and_the_rest_runs_next() -> None:
    model = GatedModel()
    local = gated(model, max_rows=4)
    busy = await hold(model, local)
    waiting = [asyncio.create_task(local.predict(payload(float(i), float(i)))) for i in range(1, 4)]
    await asyncio.sleep(0)
    model.gate.set()
    await asyncio.gather(busy, *waiting)
    assert model.calls == [[-1.0], [1.0, 1.0, 2.0, 2.0], [3.0, 3.0]]


async def test_a_call_past_the_queue_limit_is_refused_at_once_and_the_queued_ones_are_served() -> None:
    model = GatedModel()
    local = gated(model, max_queue=2)
    busy = await hold(model, local)
    queued = [asyncio.create_task(local.predict(payload(float(i)))) for i in (1, 2)]
    await asyncio.sleep(0)
    with pytest.raises(ModelOverloaded, match="2 calls waiting"):
        await local.predict(payload(3.0))
    model.gate.set()
    answers = await asyncio.gather(busy, *queued)
    assert [a["predictions"] for a in answers] == [[-2.0], [2.0], [4.0]]


async def test_the_call_that_wakes_an_idle_model_does_not_count_against_the_queue_limit() -> None:
    """All three arrive before the worker task first runs: the first is about to run, the second queues."""
    model = GatedModel()
    local = gated(model, max_queue=1)
    answers = await asyncio.gather(*(local.predict(payload(float(i))) for i in (1, 2, 3)), return_exceptions=True)
    assert [a["predictions"] if isinstance(a, dict) else type(a) for a in answers] == [[2.0], [4.0], ModelOverloaded]


async def test_a_call_the_model_fails_on_fails_alone_and_its_batch_mates_are_answered() -> None:
    model = GatedModel(poison=13.0)
    local = gated(model)
    busy = await hold(model, local)
    good_before = asyncio.create_task(local.predict(payload(1.0)))
    poisoned = asyncio.create_task(local.predict(payload(2.0, 13.0)))
    good_after = asyncio.create_task(local.predict(payload(3.0)))
    await asyncio.sleep(0)
    model.gate.set()
    results = await asyncio.gather(busy, good_before, poisoned, good_after, return_exceptions=True)
    assert [r["predictions"] for r in (results[0], results[1], results[3])] == [[-2.0], [2.0], [6.0]]  # type: ignore[index]
    assert isinstance(results[2], PredictionError)
    assert "cannot score 13.0" in results[2].message
    assert model.calls[1] == [1.0, 2.0, 13.0, 3.0]  # the batch was tried before the calls were retried alone


async def test_a_caller_that_gives_up_while_waiting_is_left_out_of_the_batch() -> None:
    model = GatedModel()
    local = gated(model)
    busy = await hold(model, local)
    abandoned = asyncio.create_task(local.predict(payload(1.0)))
    kept = asyncio.create_task(local.predict(payload(2.0)))
    await asyncio.sleep(0)
    abandoned.cancel()
    model.gate.set()
    answers = await asyncio.gather(busy, kept)
    assert [a["predictions"] for a in answers] == [[-2.0], [4.0]]
    assert model.calls == [[-1.0], [2.0]]


async def test_without_batching_concurrent_calls_each_run_on_their_own() -> None:
    model = GatedModel()
    local = LocalModel(model, Path("gated.joblib"), batching=None)
    await asyncio.gather(*(local.predict(payload(float(i))) for i in range(3)))
    assert sorted(model.calls) == [[0.0], [1.0], [2.0]]


class RecordingModel:
    """Cheap, of known width (so it runs on the event loop), and records the first feature of each call's rows."""

    n_features_in_ = 2

    def __init__(self) -> None:
        self.calls: list[list[float]] = []

    def predict(self, X: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        self.calls.append(X[:, 0].tolist())
        return X[:, 0] * 2


async def test_on_the_event_loop_the_calls_of_one_loop_round_run_as_one_batch() -> None:
    model = RecordingModel()
    local = LocalModel(model, Path("recording.joblib"), batching=Batching(max_rows=4))
    assert local.inline_rows == 4
    model.calls.clear()  # the probe's calls at load
    answers = await asyncio.gather(*(local.predict(payload(float(i))) for i in range(6)))
    assert [a["predictions"] for a in answers] == [[2.0 * i] for i in range(6)]
    assert model.calls == [[0.0, 1.0, 2.0, 3.0], [4.0, 5.0]]  # at most max_rows rows each


async def test_on_the_event_loop_the_batcher_lets_the_loop_run_between_two_batches() -> None:
    model = RecordingModel()
    local = LocalModel(model, Path("recording.joblib"), batching=Batching(max_rows=2))
    model.calls.clear()
    batches_done_when_others_ran: list[int] = []

    async def another_task() -> None:
        while True:
            batches_done_when_others_ran.append(len(model.calls))
            await asyncio.sleep(0)

    other = asyncio.create_task(another_task())
    try:
        await asyncio.gather(*(local.predict(payload(float(i))) for i in range(6)))
    finally:
        other.cancel()
    assert len(model.calls) == 3
    assert {1, 2} <= set(batches_done_when_others_ran)  # it ran after the first batch and after the second
