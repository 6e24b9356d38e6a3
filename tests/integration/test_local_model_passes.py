"""One model call per batch: a local model's answers are exactly its estimator's, computed in one pass."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import (
    ExtraTreesClassifier,
    HistGradientBoostingClassifier,
    RandomForestClassifier,
    VotingClassifier,
)
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler
from sklearn.svm import SVC

from router.variants.local import LocalModel
from variants.churn import churn_probability, make_dataset

Features = npt.NDArray[np.float64]
Builder = Callable[[Features, npt.NDArray[Any]], Any]

TRAIN, LABELS = make_dataset(600, seed=1)
ROWS = make_dataset(300, seed=2)[0]


def three_classes(X: Features) -> npt.NDArray[np.int64]:
    """Few, some or many support calls: a multiclass target the features explain in part."""
    return np.digitize(X[:, 2] + np.random.default_rng(0).normal(0.0, 0.8, len(X)), [1.0, 2.5]).astype(np.int64)


def boosted(**params: Any) -> HistGradientBoostingClassifier:
    return HistGradientBoostingClassifier(max_iter=30, max_leaf_nodes=8, random_state=0, **params)


def scaled(final: Any) -> Pipeline:
    return Pipeline([("scale", StandardScaler()), ("skipped", "passthrough"), ("final", final)])


def voting(kind: str) -> VotingClassifier:
    return VotingClassifier([("linear", scaled(LogisticRegression())), ("boosted", boosted())], voting=kind)


def named(labels: npt.NDArray[np.int64]) -> npt.NDArray[np.str_]:
    return np.array(["low", "mid", "high"])[labels]


# SVC's `probability` is deprecated in scikit-learn 1.9; models fitted with it are still served.
OLD_SVC = pytest.mark.filterwarnings("ignore:The `probability` parameter was deprecated:FutureWarning")

ESTIMATORS: list[Any] = [
    pytest.param(lambda X, y: scaled(LogisticRegression()).fit(X, y), id="scaler_and_logistic_regression"),
    pytest.param(lambda X, y: boosted().fit(X, y), id="hist_gradient_boosting"),
    pytest.param(lambda X, y: boosted().fit(X, three_classes(X)), id="hist_gradient_boosting_three_classes"),
    pytest.param(lambda X, y: RandomForestClassifier(20, random_state=0).fit(X, y), id="random_forest"),
    pytest.param(
        lambda X, y: ExtraTreesClassifier(20, random_state=0).fit(X, named(three_classes(X))),
        id="extra_trees_with_string_labels",
    ),
    pytest.param(lambda X, y: scaled(boosted()).fit(X, y), id="pipeline_ending_in_hist_gradient_boosting"),
    pytest.param(lambda X, y: Pipeline([("inner", scaled(boosted()))]).fit(X, y), id="pipeline_in_a_pipeline"),
    pytest.param(lambda X, y: scaled(Ridge()).fit(X, churn_probability(X)), id="regressor"),
    pytest.param(
        lambda X, y: scaled(SVC(probability=True, random_state=0)).fit(X, y), id="svc_with_probabilities", marks=OLD_SVC
    ),
    pytest.param(
        lambda X, y: scaled(CalibratedClassifierCV(SVC(), ensemble=False)).fit(X, y), id="calibrated_classifier"
    ),
    pytest.param(lambda X, y: voting("soft").fit(X, y), id="soft_voting"),
    pytest.param(lambda X, y: voting("hard").fit(X, y), id="hard_voting"),
]


async def answer(estimator: Any, rows: Features) -> dict[str, Any]:
    return await LocalModel(estimator, Path("in-memory.joblib")).predict({"instances": rows.tolist()})


@pytest.fixture(scope="module", params=ESTIMATORS)
def estimator(request: pytest.FixtureRequest) -> Any:
    """Each model trained once for the tests that use it."""
    build: Builder = request.param
    return build(TRAIN, LABELS)


async def test_predictions_are_exactly_the_estimators_own(estimator: Any) -> None:
    got = await answer(estimator, ROWS)
    assert np.array_equal(np.array(got["predictions"]), estimator.predict(ROWS))


async def test_probabilities_are_exactly_the_estimators_own_or_absent_without_predict_proba(estimator: Any) -> None:
    got = await answer(estimator, ROWS)
    if hasattr(estimator, "predict_proba"):
        assert np.array_equal(np.array(got["probabilities"]), estimator.predict_proba(ROWS))
    else:
        assert "probabilities" not in got


class CountingCalls:
    def __init__(self) -> None:
        self.calls = 0

    def identity(self, X: Features) -> Features:
        self.calls += 1
        return X


async def test_a_pipeline_transforms_the_rows_once_per_model_call() -> None:
    counter = CountingCalls()
    steps = [
        ("count", FunctionTransformer(counter.identity)),
        ("scale", StandardScaler()),
        ("classify", LogisticRegression()),
    ]
    model = LocalModel(Pipeline(steps).fit(TRAIN, LABELS), Path("in-memory.joblib"))
    counter.calls = 0
    await model.predict({"instances": ROWS[:5].tolist()})
    assert counter.calls == 1


class CountingForest(RandomForestClassifier):
    """Counts its probability passes; it inherits `predict`, so that still takes the argmax of them."""

    passes = 0

    def predict_proba(self, X: Features) -> Any:
        type(self).passes += 1
        return super().predict_proba(X)


async def test_a_forest_computes_its_probabilities_once_per_model_call() -> None:
    model = LocalModel(CountingForest(10, random_state=0).fit(TRAIN, LABELS), Path("in-memory.joblib"))
    CountingForest.passes = 0
    await model.predict({"instances": ROWS[:5].tolist()})
    assert CountingForest.passes == 1


class CountingBoosting(HistGradientBoostingClassifier):
    """Counts its passes over the trees, which both `predict` and `predict_proba` make."""

    passes = 0

    def _raw_predict(self, X: Features, n_threads: int | None = None) -> Any:
        type(self).passes += 1
        return super()._raw_predict(X, n_threads)


async def test_a_boosted_model_scores_the_rows_once_per_model_call() -> None:
    model = LocalModel(CountingBoosting(max_iter=10, random_state=0).fit(TRAIN, LABELS), Path("in-memory.joblib"))
    CountingBoosting.passes = 0
    await model.predict({"instances": ROWS[:5].tolist()})
    assert CountingBoosting.passes == 1


class ConstantPredictBoosting(HistGradientBoostingClassifier):
    """Overrides `predict`, so its predictions are no longer those its probabilities imply."""

    def predict(self, X: Features) -> npt.NDArray[np.int64]:
        return np.zeros(len(X), dtype=np.int64)


async def test_a_subclass_that_overrides_predict_is_answered_by_its_own_predict() -> None:
    model = ConstantPredictBoosting(max_iter=10, random_state=0).fit(TRAIN, LABELS)
    assert 1 in model.predict_proba(ROWS).argmax(axis=1)  # else the test could not tell the two apart
    got = await answer(model, ROWS)
    assert got["predictions"] == [0] * len(ROWS)


def near_tie_boosting() -> tuple[HistGradientBoostingClassifier, Features]:
    """A one-tree model moved so that one row's raw score is the smallest double above 0.

    `predict` says 1 there (`raw > 0`) while `predict_proba` rounds to exactly [0.5, 0.5], whose argmax is 0.
    """
    model = HistGradientBoostingClassifier(max_iter=1, random_state=0).fit(TRAIN, LABELS)
    row = ROWS[:1]
    model._baseline_prediction = np.zeros_like(model._baseline_prediction)
    leaf = model.decision_function(row)[0]
    model._baseline_prediction = np.full_like(model._baseline_prediction, np.nextafter(-leaf, np.inf))
    assert model.predict(row).tolist() == [1] and model.predict_proba(row).tolist() == [[0.5, 0.5]]
    return model, row


async def test_at_a_near_tie_a_boosted_model_answers_its_predict_not_the_argmax_of_its_probabilities() -> None:
    model, row = near_tie_boosting()
    got = await answer(model, row)
    assert (got["predictions"], got["probabilities"]) == ([1], [[0.5, 0.5]])


async def test_a_one_pass_path_that_disagrees_with_the_models_own_calls_is_not_used(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As if a scikit-learn release changed what the one-pass path relies on: speed is lost, not answers."""

    def flipped(final: Any, features: Any) -> tuple[Any, Any]:
        probabilities = final.predict_proba(features)
        return final.classes_.take(np.argmin(probabilities, axis=1), axis=0), probabilities

    monkeypatch.setattr("router.variants.local._argmax_outputs", flipped)
    forest = RandomForestClassifier(10, random_state=0).fit(TRAIN, LABELS)
    got = await answer(forest, ROWS)
    assert np.array_equal(np.array(got["predictions"]), forest.predict(ROWS))


async def test_a_one_pass_path_that_raises_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing_private_api(final: Any, features: Any) -> tuple[Any, Any]:
        raise AttributeError("'HistGradientBoostingClassifier' object has no attribute '_raw_predict'")

    monkeypatch.setattr("router.variants.local._hist_gradient_boosting_outputs", missing_private_api)
    model = boosted().fit(TRAIN, LABELS)
    got = await answer(model, ROWS)
    assert np.array_equal(np.array(got["predictions"]), model.predict(ROWS))
