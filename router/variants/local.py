"""The in-process variant: a scikit-learn estimator loaded once from a joblib file.

Loading unpickles the file, which can run code: model paths come from operators' configs, never
from callers. Prediction runs in a worker thread (`anyio.to_thread`) so a slow model never stalls
the event loop that serves every other request, and concurrent calls are micro-batched
(router/variants/batching.py).
"""

from __future__ import annotations

from numbers import Integral
from pathlib import Path
from typing import Any, Final

import anyio.to_thread
import joblib
import numpy as np
import orjson
import sklearn
from sklearn.base import BaseEstimator
from sklearn.exceptions import NotFittedError
from sklearn.utils.validation import check_is_fitted

from router.errors import InvalidPayload, ModelLoadError, PredictionError
from router.variants.base import PredictCall, VariantResponse
from router.variants.batching import Batching, MicroBatcher, Outputs, Rows

DEFAULT_BATCHING: Final = Batching()

#: rows per call; bounds the memory and the time one caller can take from a worker thread
MAX_INSTANCES: Final = 10_000

# JSON numbers decode to exactly these types; checking `type(...)` first keeps the common case fast.
_NUMBER_TYPES: Final = frozenset({int, float})


def instances_array(payload: Any, n_features: int | None) -> Rows:
    """Check a `{"instances": [[...], ...]}` body and convert it, so bad input is a 422 and never reaches a model."""
    if not isinstance(payload, dict):
        raise InvalidPayload(f'the body must be a JSON object like {{"instances": [[...]]}}, got {_describe(payload)}')
    if "instances" not in payload:
        raise InvalidPayload('the body has no "instances" key; expected {"instances": [[f1, f2, ...], ...]}')
    instances = payload["instances"]
    if not isinstance(instances, list):
        raise InvalidPayload(f"instances must be a list of rows, got {_describe(instances)}")
    if not instances:
        raise InvalidPayload("instances is empty; send at least one row")
    if len(instances) > MAX_INSTANCES:
        raise InvalidPayload(f"instances has {len(instances)} rows, at most {MAX_INSTANCES} are allowed per call")
    # Without a known feature count the first row sets the width, so ragged rows are still caught.
    width = n_features
    for i, row in enumerate(instances):
        if not isinstance(row, list):
            raise InvalidPayload(f"instances[{i}] must be a list of numbers, got {_describe(row)}")
        if width is None:
            if not row:
                raise InvalidPayload(f"instances[{i}] is empty; a row needs at least one feature")
            width = len(row)
        elif len(row) != width:
            expected = "the model expects" if n_features is not None else "instances[0] has"
            raise InvalidPayload(f"instances[{i}] has {len(row)} features, {expected} {width}")
        if not all(type(value) in _NUMBER_TYPES for value in row):
            _check_numbers(i, row)
    try:
        rows = np.array(instances, dtype=np.float64)
    except OverflowError:
        i, j = next((i, j) for i, row in enumerate(instances) for j, value in enumerate(row) if _overflows(value))
        raise InvalidPayload(f"instances[{i}][{j}] is too large for a 64-bit float") from None
    finite = np.isfinite(rows)
    if not finite.all():
        i, j = (int(k) for k in np.argwhere(~finite)[0])
        raise InvalidPayload(f"instances[{i}][{j}] must be a finite number, got {instances[i][j]!r}")
    return rows


def _check_numbers(i: int, row: list[Any]) -> None:
    """The slow path: accept int and float subclasses, name the first value that is not a number."""
    for j, value in enumerate(row):
        # bool is an int subclass, but true/false in a feature row is a caller's mistake
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidPayload(f"instances[{i}][{j}] must be a number, got {_describe(value)}")


def _overflows(value: Any) -> bool:
    try:
        float(value)
    except OverflowError:
        return True
    return False


def _describe(value: Any) -> str:
    """Name a decoded JSON value the way the caller wrote it, short enough for an error message."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        text = value if len(value) <= 40 else value[:37] + "..."
        return f"the string {text!r}"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


class LocalModel:
    """A fitted estimator from a joblib file, loaded once at start-up and run off the event loop.

    With `batching` (the default), concurrent calls are gathered into one model call
    (router/variants/batching.py); with None, every call runs on its own in a worker thread.
    """

    def __init__(self, estimator: Any, path: Path, *, batching: Batching | None = DEFAULT_BATCHING) -> None:
        self.path = path
        n_features = getattr(estimator, "n_features_in_", None)
        self.n_features: int | None = int(n_features) if isinstance(n_features, Integral) else None
        self.has_proba: bool = hasattr(estimator, "predict_proba")
        self._estimator = estimator
        self._batcher = MicroBatcher(self._run, batching=batching, name=str(path)) if batching is not None else None

    @classmethod
    def load(cls, path: str | Path, *, batching: Batching | None = DEFAULT_BATCHING) -> LocalModel:
        """Load a model file; every failure is a ModelLoadError so a bad file stops start-up, not a request."""
        path = Path(path)
        try:
            estimator = joblib.load(path)
        except FileNotFoundError:
            raise ModelLoadError(f"model file {path} does not exist") from None
        # Unpickling a foreign or damaged file raises nearly anything (KeyError, EOFError, ImportError, ...):
        # this is the one place that turns all of it into our error.
        except Exception as exc:
            raise ModelLoadError(f"cannot load model file {path}: {type(exc).__name__}: {exc}") from exc
        if not callable(getattr(estimator, "predict", None)):
            kind = type(estimator).__qualname__
            raise ModelLoadError(f"model file {path} holds a {kind}, which has no predict method")
        if isinstance(estimator, BaseEstimator):
            try:
                check_is_fitted(estimator)
            except NotFittedError:
                raise ModelLoadError(
                    f"model file {path} holds an unfitted {type(estimator).__qualname__}; fit it before dumping"
                ) from None
        return cls(estimator, path, batching=batching)

    def __repr__(self) -> str:
        return f"LocalModel({str(self.path)!r}, n_features={self.n_features}, has_proba={self.has_proba})"

    async def predict(self, payload: Any) -> dict[str, Any]:
        """Answer one prediction call with plain JSON types, alone or as part of a batch."""
        rows = instances_array(payload, self.n_features)
        if self._batcher is not None:
            predictions, probabilities = await self._batcher.predict(rows)
        else:
            predictions, probabilities = await anyio.to_thread.run_sync(self._run, rows)
        answer: dict[str, Any] = {"predictions": predictions.tolist()}
        if probabilities is not None:
            answer["probabilities"] = probabilities.tolist()
        return answer

    def _run(self, rows: Rows) -> Outputs:
        """The one blocking model call; the micro-batcher hands it many calls' rows at once."""
        try:
            # The rows are checked finite already and the estimator's parameters were checked when it
            # was fitted: skipping both checks saves about a quarter of a pipeline's time per call.
            with sklearn.config_context(assume_finite=True, skip_parameter_validation=True):
                predictions = np.asarray(self._estimator.predict(rows))
                probabilities = None
                if self.has_proba:
                    probabilities = np.asarray(self._estimator.predict_proba(rows), dtype=np.float64)
        # A model may raise anything on input we accept; translate it here, where the model is called.
        except Exception as exc:
            raise PredictionError(f"model {self.path} failed on {len(rows)} rows: {type(exc).__name__}: {exc}") from exc
        if len(predictions) != len(rows) or (probabilities is not None and len(probabilities) != len(rows)):
            raise PredictionError(f"model {self.path} answered {len(predictions)} predictions for {len(rows)} rows")
        return predictions, probabilities


class LocalVariant:
    """Runs an in-process scikit-learn model on `{"instances": [...]}` bodies."""

    def __init__(self, name: str, *, model: LocalModel) -> None:
        self.name = name
        self.model = model

    async def predict(self, call: PredictCall) -> VariantResponse:
        answer = await self.model.predict(call.json())
        return VariantResponse(status=200, body=orjson.dumps(answer), content_type="application/json")
