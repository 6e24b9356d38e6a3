"""The in-process variant against real joblib files: loading, payload validation, prediction off the loop."""

from __future__ import annotations

import asyncio
import math
import os
import re
import threading
import time
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import numpy.typing as npt
import orjson
import pytest
from sklearn.linear_model import LogisticRegression, RidgeClassifier

from router.errors import InvalidPayload, ModelLoadError, PredictionError
from router.variants.batching import Batching
from router.variants.local import DEFAULT_BATCHING, MAX_INSTANCES, LocalModel, instances_array
from variants.churn import MODELS, N_FEATURES, make_dataset

# Estimators written for these tests live at module level: joblib pickles a class by its import path.


class ThreadReportingModel:
    """Predicts the id of the thread it runs in, so a test can see where the model call happened."""

    def predict(self, X: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
        return np.full(len(X), threading.get_ident(), dtype=np.int64)


class SizedThreadReportingModel(ThreadReportingModel):
    """A model of known width, so the gateway can probe what a call costs; it costs next to nothing."""

    n_features_in_ = 1


def burn_cpu(seconds: float) -> None:
    """Compute (not wait) for `seconds` of this thread's CPU time, as a costly model call does."""
    busy_until = time.thread_time() + seconds
    while time.thread_time() < busy_until:
        pass


class SlowOnMarkedRowsModel(SizedThreadReportingModel):
    """Cheap on the probe's rows, 50 ms of CPU on a row whose feature is 999 (real rows can cost more)."""

    def predict(self, X: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
        if (X[:, 0] == 999).any():
            burn_cpu(0.05)
        return super().predict(X)


class SleepsOnMarkedRowsModel(SizedThreadReportingModel):
    """Cheap on the probe's rows; on a row whose feature is 999 it waits 80 ms (I/O, a lock), using no CPU."""

    def predict(self, X: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
        if (X[:, 0] == 999).any():
            time.sleep(0.08)
        return super().predict(X)


class SlowOnOneCallModel(SizedThreadReportingModel):
    """`seconds` of CPU on its call number `slow_call` only (1: one-off work on the first call; 3: the
    probe's first whole batch, a noisy call); records each call's row count."""

    def __init__(self, slow_call: int, seconds: float) -> None:
        self.slow_call = slow_call
        self.seconds = seconds
        self.calls: list[int] = []

    def predict(self, X: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
        self.calls.append(len(X))
        if len(self.calls) == self.slow_call:
            burn_cpu(self.seconds)
        return super().predict(X)


class SlowOnEveryCallModel(SlowOnOneCallModel):
    """10 ms of CPU on every call whatever the rows."""

    def __init__(self) -> None:
        super().__init__(slow_call=0, seconds=0.01)

    def predict(self, X: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
        burn_cpu(self.seconds)
        return super().predict(X)


class SlowModel:
    """Far over the inline budget, and of known width, so the probe at load finds it too slow for the loop."""

    n_features_in_ = 1

    def predict(self, X: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
        time.sleep(0.3)
        return np.zeros(len(X), dtype=np.int64)


class FailingModel:
    n_features_in_ = N_FEATURES

    def predict(self, X: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
        raise RuntimeError("the model exploded")


class ShortAnswerModel:
    def predict(self, X: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
        return np.zeros(len(X) - 1, dtype=np.int64)


def dump(estimator: object, directory: Path, name: str = "model") -> Path:
    path = directory / f"{name}.joblib"
    joblib.dump(estimator, path)
    return path


def rows(n: int = 20, seed: int = 7) -> list[list[float]]:
    """Fresh subscribers the models never saw."""
    instances: list[list[float]] = make_dataset(n, seed=seed)[0].tolist()
    return instances


MODEL_NAMES = [pytest.param(name, id=name) for name in MODELS]


@pytest.fixture(params=MODEL_NAMES)
def trained_model(request: pytest.FixtureRequest, trained_models: dict[str, Path]) -> LocalModel:
    return LocalModel.load(trained_models[request.param])


# --- loading -------------------------------------------------------------------------------------------------------


def test_a_trained_model_knows_its_feature_count(trained_model: LocalModel) -> None:
    assert trained_model.n_features == N_FEATURES


def test_a_trained_classifier_offers_probabilities(trained_model: LocalModel) -> None:
    assert trained_model.has_proba


def test_a_model_keeps_the_path_it_was_loaded_from(trained_models: dict[str, Path]) -> None:
    path = trained_models["churn_current"]
    assert LocalModel.load(str(path)).path == path


def test_a_missing_file_raises_model_load_error_naming_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.joblib"
    with pytest.raises(ModelLoadError, match=rf"{re.escape(str(missing))} does not exist"):
        LocalModel.load(missing)


def test_a_fifo_is_refused_at_once_rather_than_blocking_the_load(tmp_path: Path) -> None:
    """Opening a FIFO for reading waits for a writer: the load (and the admin call behind it) would hang."""
    fifo = tmp_path / "model.joblib"
    os.mkfifo(fifo)
    outcome: list[BaseException | None] = []

    def load() -> None:
        try:
            LocalModel.load(fifo)
            outcome.append(None)
        except ModelLoadError as exc:
            outcome.append(exc)

    loader = threading.Thread(target=load, daemon=True)  # left blocked, not joined, if the load hangs
    loader.start()
    loader.join(timeout=5)

    assert not loader.is_alive(), "loading a FIFO blocked"
    assert outcome and isinstance(outcome[0], ModelLoadError)
    assert str(outcome[0]) == f"model file {fifo} is not a regular file"


def test_a_file_that_is_not_a_joblib_raises_model_load_error_naming_the_file(broken_model_file: Path) -> None:
    with pytest.raises(ModelLoadError, match=re.escape(str(broken_model_file))):
        LocalModel.load(broken_model_file)


def test_an_object_without_predict_raises_model_load_error_naming_the_file(tmp_path: Path) -> None:
    path = dump({"weights": [0.1, 0.2]}, tmp_path)
    with pytest.raises(ModelLoadError, match=rf"{re.escape(str(path))}.*dict, which has no predict method"):
        LocalModel.load(path)


def test_an_unfitted_estimator_raises_model_load_error_naming_the_file(tmp_path: Path) -> None:
    path = dump(LogisticRegression(), tmp_path)
    with pytest.raises(ModelLoadError, match=rf"{re.escape(str(path))}.*unfitted LogisticRegression"):
        LocalModel.load(path)


def test_a_model_without_n_features_in_has_an_unknown_feature_count(tmp_path: Path) -> None:
    assert LocalModel.load(dump(ThreadReportingModel(), tmp_path)).n_features is None


# --- predicting ----------------------------------------------------------------------------------------------------


async def test_predictions_are_zero_or_one(trained_model: LocalModel) -> None:
    answer = await trained_model.predict({"instances": rows()})
    assert set(answer["predictions"]) <= {0, 1}


async def test_probability_rows_sum_to_one(trained_model: LocalModel) -> None:
    answer = await trained_model.predict({"instances": rows()})
    assert all(math.isclose(sum(row), 1.0) for row in answer["probabilities"])


async def test_there_is_one_prediction_and_one_probability_row_per_instance(trained_model: LocalModel) -> None:
    answer = await trained_model.predict({"instances": rows(13)})
    assert (len(answer["predictions"]), len(answer["probabilities"])) == (13, 13)


async def test_the_answer_holds_plain_python_types(trained_model: LocalModel) -> None:
    answer = await trained_model.predict({"instances": rows(3)})
    assert orjson.loads(orjson.dumps(answer)) == answer
    assert {type(p) for p in answer["predictions"]} == {int}


async def test_predictions_agree_with_the_estimator_called_directly(trained_models: dict[str, Path]) -> None:
    path = trained_models["churn_candidate"]
    instances = rows(50)
    answer = await LocalModel.load(path).predict({"instances": instances})
    assert answer["predictions"] == joblib.load(path).predict(np.array(instances)).tolist()


async def test_integer_features_are_accepted(trained_models: dict[str, Path]) -> None:
    answer = await LocalModel.load(trained_models["churn_current"]).predict({"instances": [[12, 70, 1, 0]]})
    assert len(answer["predictions"]) == 1


async def test_a_classifier_without_predict_proba_answers_predictions_only(tmp_path: Path) -> None:
    model = LocalModel.load(dump(RidgeClassifier().fit(*make_dataset(200)), tmp_path))
    answer = await model.predict({"instances": rows(2)})
    assert set(answer) == {"predictions"}


async def test_a_model_of_unknown_width_cannot_be_probed_and_runs_in_a_worker_thread(tmp_path: Path) -> None:
    model = LocalModel.load(dump(ThreadReportingModel(), tmp_path))
    assert model.inline_rows == 0
    answer = await model.predict({"instances": [[1.0]]})
    assert answer["predictions"] != [threading.get_ident()]


@pytest.mark.parametrize("batching", [Batching(max_rows=16), None], ids=["batched", "alone"])
async def test_a_model_cheap_at_its_largest_batch_runs_on_the_event_loop_up_to_that_many_rows(
    tmp_path: Path, batching: Batching | None
) -> None:
    model = LocalModel.load(dump(SizedThreadReportingModel(), tmp_path), batching=batching)
    largest = batching.max_rows if batching is not None else DEFAULT_BATCHING.max_rows
    assert model.inline_rows == largest
    loop_thread = threading.get_ident()
    answer = await model.predict({"instances": [[1.0]] * largest})
    assert answer["predictions"] == [loop_thread] * largest
    if batching is None:  # a batched call of more rows than a batch cannot be (it is refused in the batcher's tests)
        bigger = await model.predict({"instances": [[1.0]] * (largest + 1)})
        assert loop_thread not in bigger["predictions"]


async def test_a_call_on_the_event_loop_far_over_the_budget_sends_the_models_later_calls_to_a_thread(
    tmp_path: Path,
) -> None:
    model = LocalModel.load(dump(SlowOnMarkedRowsModel(), tmp_path), batching=None)
    loop_thread = threading.get_ident()
    assert model.inline_rows > 0
    slow = await model.predict({"instances": [[999.0]]})  # 50 ms of CPU: 25 times the 2 ms budget
    assert slow["predictions"] == [loop_thread]  # answered, on the loop, before the model was moved
    assert model.inline_rows == 0
    later = await model.predict({"instances": [[1.0]]})
    assert later["predictions"] != [loop_thread]


@pytest.mark.parametrize("model", [SlowOnMarkedRowsModel, SleepsOnMarkedRowsModel], ids=["computes", "waits"])
async def test_either_kind_of_slow_call_on_the_event_loop_moves_the_model_to_a_thread(
    tmp_path: Path, model: type[SizedThreadReportingModel]
) -> None:
    local = LocalModel.load(dump(model(), tmp_path), batching=None)
    assert local.inline_rows > 0
    await local.predict({"instances": [[999.0]]})
    assert local.inline_rows == 0


def test_one_slow_probe_call_is_tried_again_rather_than_deciding() -> None:
    estimator = SlowOnOneCallModel(slow_call=3, seconds=0.005)
    assert LocalModel(estimator, Path("noisy.joblib")).inline_rows > 0
    assert estimator.calls == [1, 1, 256, 256]  # untimed, one row, the slow batch call, one more within budget


def test_a_models_slow_first_call_does_not_count_against_it() -> None:
    assert LocalModel(SlowOnOneCallModel(slow_call=1, seconds=0.01), Path("first.joblib")).inline_rows > 0


def test_a_model_slow_on_one_row_is_not_probed_with_a_whole_batch() -> None:
    estimator = SlowOnEveryCallModel()
    model = LocalModel(estimator, Path("slow.joblib"))
    assert model.inline_rows == 0
    assert set(estimator.calls) == {1}  # an untimed call, then one row (tried again: it is only 5x over): no batch


async def test_with_no_inline_budget_every_call_runs_in_a_worker_thread(tmp_path: Path) -> None:
    model = LocalModel.load(dump(SizedThreadReportingModel(), tmp_path), inline_max_s=0)
    assert model.inline_rows == 0
    answer = await model.predict({"instances": [[1.0]]})
    assert answer["predictions"] != [threading.get_ident()]


async def test_a_model_that_fails_on_the_probe_runs_in_a_worker_thread_and_still_reports_its_failures(
    tmp_path: Path,
) -> None:
    model = LocalModel.load(dump(FailingModel(), tmp_path))
    assert model.inline_rows == 0
    with pytest.raises(PredictionError, match="the model exploded"):
        await model.predict({"instances": rows(1)})


async def test_the_event_loop_keeps_running_while_a_model_predicts(tmp_path: Path) -> None:
    model = LocalModel.load(dump(SlowModel(), tmp_path))
    assert model.inline_rows == 0  # probed at load: far over the budget
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticker = asyncio.create_task(tick())
    try:
        await model.predict({"instances": [[1.0]]})
    finally:
        ticker.cancel()
    # 0.3 s of model time leaves room for ~30 ticks; a blocked loop would allow none
    assert ticks >= 5


async def test_an_exception_from_the_model_raises_prediction_error_naming_the_file(tmp_path: Path) -> None:
    path = dump(FailingModel(), tmp_path, "failing")
    with pytest.raises(PredictionError, match=rf"{re.escape(str(path))}.*RuntimeError: the model exploded"):
        await LocalModel.load(path).predict({"instances": rows(2)})


async def test_a_model_answering_too_few_predictions_raises_prediction_error(tmp_path: Path) -> None:
    with pytest.raises(PredictionError, match="answered 1 predictions for 2 rows"):
        await LocalModel.load(dump(ShortAnswerModel(), tmp_path)).predict({"instances": [[1.0], [2.0]]})


async def test_a_malformed_payload_is_rejected_before_the_model_runs(tmp_path: Path) -> None:
    with pytest.raises(InvalidPayload):
        await LocalModel.load(dump(FailingModel(), tmp_path)).predict({"instances": [[1.0, 2.0]]})


# --- payload validation (the pure function the example model server shares) ----------------------------------------


GOOD_ROW = [12.0, 70.0, 1.0, 0.2]


@pytest.mark.parametrize(
    ("payload", "problem"),
    [
        pytest.param([GOOD_ROW], "must be a JSON object", id="not-a-dict"),
        pytest.param({"rows": [GOOD_ROW]}, 'no "instances" key', id="missing-key"),
        pytest.param({"instances": "12,70,1,0.2"}, "instances must be a list of rows, got the string", id="not-a-list"),
        pytest.param({"instances": []}, "instances is empty", id="empty-list"),
        pytest.param({"instances": GOOD_ROW}, r"instances\[0\] must be a list of numbers, got float", id="flat-row"),
        pytest.param(
            {"instances": [[1.0, 2.0, 3.0]]}, r"instances\[0\] has 3 features, the model expects 4", id="short"
        ),
        pytest.param(
            {"instances": [GOOD_ROW, GOOD_ROW, GOOD_ROW, [1.0, 2.0, 3.0]]},
            r"instances\[3\] has 3 features, the model expects 4",
            id="ragged",
        ),
        pytest.param({"instances": [[*GOOD_ROW, 5.0]]}, "has 5 features, the model expects 4", id="too-many-features"),
        pytest.param(
            {"instances": [[12, "70", 1, 0.2]]},
            r"instances\[0\]\[1\] must be a number, got the string '70'",
            id="string",
        ),
        pytest.param({"instances": [[12, True, 1, 0.2]]}, r"instances\[0\]\[1\] must be a number, got true", id="bool"),
        pytest.param({"instances": [[12, None, 1, 0.2]]}, r"instances\[0\]\[1\] must be a number, got null", id="null"),
        pytest.param(
            {"instances": [[12, [70], 1, 0.2]]}, r"instances\[0\]\[1\] must be a number, got a list", id="nested"
        ),
        pytest.param(
            {"instances": [[12, math.nan, 1, 0.2]]}, r"instances\[0\]\[1\] must be a finite number, got nan", id="nan"
        ),
        pytest.param(
            {"instances": [GOOD_ROW, [12, 70, math.inf, 0.2]]}, r"instances\[1\]\[2\] must be a finite", id="inf"
        ),
        pytest.param({"instances": [[12, 10**400, 1, 0.2]]}, r"instances\[0\]\[1\] is too large", id="huge-integer"),
        pytest.param({"instances": [GOOD_ROW] * (MAX_INSTANCES + 1)}, "at most 10000 are allowed", id="too-many-rows"),
    ],
)
def test_a_malformed_payload_raises_invalid_payload_naming_the_problem(payload: Any, problem: str) -> None:
    with pytest.raises(InvalidPayload, match=problem):
        instances_array(payload, N_FEATURES)


def test_invalid_payload_is_answered_with_422() -> None:
    with pytest.raises(InvalidPayload) as raised:
        instances_array({"instances": []}, N_FEATURES)
    assert raised.value.status_code == 422


def test_valid_instances_become_a_float64_matrix() -> None:
    matrix = instances_array({"instances": [[1, 2.5], [3, 4]]}, 2)
    assert matrix.dtype == np.float64
    assert matrix.tolist() == [[1.0, 2.5], [3.0, 4.0]]


def test_the_maximum_number_of_rows_is_accepted() -> None:
    assert instances_array({"instances": [GOOD_ROW] * MAX_INSTANCES}, N_FEATURES).shape == (MAX_INSTANCES, N_FEATURES)


def test_without_a_known_feature_count_any_width_is_accepted() -> None:
    assert instances_array({"instances": [[1.0, 2.0, 3.0]]}, None).shape == (1, 3)


def test_without_a_known_feature_count_ragged_rows_are_still_rejected() -> None:
    with pytest.raises(InvalidPayload, match=r"instances\[1\] has 1 features, instances\[0\] has 2"):
        instances_array({"instances": [[1.0, 2.0], [3.0]]}, None)


def test_without_a_known_feature_count_an_empty_row_is_rejected() -> None:
    with pytest.raises(InvalidPayload, match=r"instances\[0\] is empty"):
        instances_array({"instances": [[]]}, None)
