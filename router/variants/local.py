"""The in-process variant: a scikit-learn estimator loaded once from a joblib file.

Loading unpickles the file, which can run code: model paths come from operators' configs, never
from callers. Concurrent calls are micro-batched (router/variants/batching.py).

Where a model call runs is measured once, at load. A model whose largest batch costs at most
`inline_max_s` of CPU (ABROUTER_LOCAL_INLINE_MAX_MS) runs on the event loop: most of a small
model's call is Python holding the GIL, so a worker thread bought no parallelism and its hand-offs
cost more than the model (docs/performance.md, item 19). A slower model, a call with more rows
than the probe, and a model that cannot be probed run in a worker thread (`anyio.to_thread`), so
they never stall the event loop that serves every other request for long.
"""

from __future__ import annotations

import inspect
import logging
import sys
import time
from collections.abc import Callable
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

log = logging.getLogger("abrouter.variants")

DEFAULT_BATCHING: Final = Batching()
#: A model whose largest batch takes at most this much CPU runs on the event loop (ABROUTER_LOCAL_INLINE_MAX_MS).
DEFAULT_INLINE_MAX_S: Final = 0.002
#: Timed probe calls of a whole batch at load; the fastest decides.
PROBE_CALLS: Final = 3
#: A call on the event loop this many times over the budget (in CPU time) sends the model's calls to a thread.
DEMOTE_FACTOR: Final = 5.0
#: A model whose probe takes this many times the budget in wall time runs in a thread, whatever its CPU time.
WALL_FACTOR: Final = 10.0
#: A call on the event loop this many times over the budget in wall time sends the model's calls to a thread.
DEMOTE_WALL_FACTOR: Final = 25.0

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
    """A fitted estimator from a joblib file, loaded once at start-up.

    With `batching` (the default), concurrent calls are gathered into one model call
    (router/variants/batching.py); with None, every call runs on its own. Calls of up to
    `inline_rows` rows run on the event loop, larger ones in a worker thread (see the module's docstring).
    """

    def __init__(
        self,
        estimator: Any,
        path: Path,
        *,
        batching: Batching | None = DEFAULT_BATCHING,
        inline_max_s: float = DEFAULT_INLINE_MAX_S,
    ) -> None:
        self.path = path
        n_features = getattr(estimator, "n_features_in_", None)
        self.n_features: int | None = int(n_features) if isinstance(n_features, Integral) else None
        self.has_proba: bool = hasattr(estimator, "predict_proba")
        self._estimator = estimator
        # Decided once: the pipeline's transforming steps to run once per call, then the final
        # estimator's own calls, in one pass when it computes its predictions from its probabilities.
        self._transforms, self._final = _pipeline_parts(estimator)
        self._one_pass = _one_pass(self._final) if self.has_proba else None
        if self._one_pass is not None and not self._one_pass_agrees():
            self._one_pass = None
        self._inline_max_s = inline_max_s
        probe_rows = (batching or DEFAULT_BATCHING).max_rows  # the largest batch; unbatched, as large a call
        self.inline_rows = probe_rows if self._probe_within(probe_rows, inline_max_s) else 0
        self._batcher = MicroBatcher(self._call, batching=batching, name=str(path)) if batching is not None else None

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        batching: Batching | None = DEFAULT_BATCHING,
        inline_max_s: float = DEFAULT_INLINE_MAX_S,
    ) -> LocalModel:
        """Load a model file; every failure is a ModelLoadError so a bad file stops start-up, not a request."""
        path = Path(path)
        if path.exists() and not path.is_file():
            # a directory fails to load anyway, but a FIFO or a device would block the load for good
            raise ModelLoadError(f"model file {path} is not a regular file")
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
        return cls(estimator, path, batching=batching, inline_max_s=inline_max_s)

    def __repr__(self) -> str:
        return (
            f"LocalModel({str(self.path)!r}, n_features={self.n_features}, has_proba={self.has_proba}, "
            f"inline_rows={self.inline_rows})"
        )

    async def predict(self, payload: Any) -> dict[str, Any]:
        """Answer one prediction call with plain JSON types, alone or as part of a batch."""
        rows = instances_array(payload, self.n_features)
        if self._batcher is not None:
            predictions, probabilities = await self._batcher.predict(rows)
        else:
            predictions, probabilities = await self._call(rows)
        answer: dict[str, Any] = {"predictions": predictions.tolist()}
        if probabilities is not None:
            answer["probabilities"] = probabilities.tolist()
        return answer

    def _one_pass_agrees(self) -> bool:
        """Whether the one-pass answer equals the two calls' on probe rows: the boosting path uses private
        scikit-learn API, and a release that changes it must cost speed, never a wrong or failed answer."""
        if self.n_features is None:
            return False
        probe = np.linspace(-2.0, 2.0, 4 * self.n_features).reshape(4, self.n_features)
        try:
            (one_predictions, one_probabilities), (predictions, probabilities) = (
                self._outputs(probe, one_pass=True),
                self._outputs(probe, one_pass=False),
            )
        except Exception:  # whatever the model raises on made-up rows: take the two calls, which are its own
            return False
        agrees = (
            one_probabilities is not None
            and probabilities is not None
            and np.array_equal(one_predictions, predictions)
            and np.array_equal(one_probabilities, probabilities)
        )
        if not agrees:
            log.warning("model %s: one-pass outputs differ from predict/predict_proba; using two calls", self.path)
        return agrees

    async def _call(self, rows: Rows) -> Outputs:
        """One model call: on the event loop when the probe found it cheap for this many rows, else in a thread.

        A call on the loop that takes `DEMOTE_FACTOR` times the budget in CPU time (real rows can cost
        more than the probe's made-up ones), or `DEMOTE_WALL_FACTOR` times it in wall time (a model
        that waits), sends this model's later calls to the thread for good. The wall-time bound is
        loose on purpose: on a busy machine the process is also descheduled mid-call, which is no
        fault of the model and would hold up the loop on the thread path just the same.
        """
        if len(rows) > self.inline_rows:
            return await anyio.to_thread.run_sync(self._run, rows)
        cpu_started, wall_started = time.thread_time(), time.perf_counter()
        try:
            return self._run(rows)
        finally:
            took_s = time.thread_time() - cpu_started
            waited_s = time.perf_counter() - wall_started
            if self.inline_rows and (
                took_s > DEMOTE_FACTOR * self._inline_max_s or waited_s > DEMOTE_WALL_FACTOR * self._inline_max_s
            ):
                self.inline_rows = 0
                log.warning(
                    "model %s: a call of %d rows held the event loop for %.1f ms (%.1f ms of CPU; "
                    "ABROUTER_LOCAL_INLINE_MAX_MS is %g): its calls run in a worker thread from now on",
                    self.path,
                    len(rows),
                    waited_s * 1000,
                    took_s * 1000,
                    self._inline_max_s * 1000,
                )

    def _probe_within(self, rows: int, budget_s: float) -> bool:
        """Whether a call of `rows` made-up rows costs at most `budget_s` of CPU (the fastest of up to `PROBE_CALLS`).

        First an untimed call: a model's first call does one-off work (3 of the 3.2 ms of the
        benchmark's logistic regression), which would make a cheap model look slow. Then one row,
        which spares a slow model the big probe. The time is this thread's CPU time: the probe runs
        in a loader thread beside the event loop (at start-up, or on a config change while serving),
        whose GIL and CPU it shares. Wall time still rules out a model that waits rather than
        computes (a sleep, I/O, other threads' work): past `WALL_FACTOR` times the budget it runs in
        a thread whatever its CPU time. False without a budget, for a model of unknown width and for
        one that fails on the probe.
        """
        if budget_s <= 0 or self.n_features is None:
            return False

        def timed(probe: Rows) -> tuple[float, float]:
            cpu_started, wall_started = time.thread_time(), time.perf_counter()
            self._run(probe)
            return time.thread_time() - cpu_started, time.perf_counter() - wall_started

        def over(cpu_s: float, wall_s: float) -> bool:
            return cpu_s > budget_s or wall_s > WALL_FACTOR * budget_s

        def fastest(probe: Rows) -> tuple[float, float]:
            """(CPU, wall) of the fastest of up to `PROBE_CALLS` calls: tried again while over the budget
            by a little (noise), not once plainly slow (over `WALL_FACTOR` times it in wall time)."""
            timings = [timed(probe)]
            while len(timings) < PROBE_CALLS and over(*timings[-1]) and timings[-1][1] <= WALL_FACTOR * budget_s:
                timings.append(timed(probe))
            return min(timings)

        one_row = np.zeros((1, self.n_features))
        try:
            self._run(one_row)  # untimed: one-off work
            probed, (cpu_s, wall_s) = 1, fastest(one_row)
            if not over(cpu_s, wall_s):
                batch = np.linspace(-2.0, 2.0, rows * self.n_features).reshape(rows, self.n_features)
                probed, (cpu_s, wall_s) = rows, fastest(batch)
        except PredictionError:
            return False
        inline = not over(cpu_s, wall_s)
        log.info(
            "model %s: a call of %d row(s) takes %.2f ms of CPU (%.2f ms in all): it runs %s",
            self.path,
            probed,
            cpu_s * 1000,
            wall_s * 1000,
            "on the event loop" if inline else "in a worker thread",
        )
        return inline

    def _run(self, rows: Rows) -> Outputs:
        """The one blocking model call; the micro-batcher hands it many calls' rows at once."""
        try:
            predictions, probabilities = self._outputs(rows, one_pass=self._one_pass is not None)
        # A model may raise anything on input we accept; translate it here, where the model is called.
        except Exception as exc:
            raise PredictionError(f"model {self.path} failed on {len(rows)} rows: {type(exc).__name__}: {exc}") from exc
        if len(predictions) != len(rows) or (probabilities is not None and len(probabilities) != len(rows)):
            raise PredictionError(f"model {self.path} answered {len(predictions)} predictions for {len(rows)} rows")
        return predictions, probabilities

    def _outputs(self, rows: Rows, *, one_pass: bool) -> Outputs:
        """Predictions and probabilities (None without predict_proba): each transforming step once, then the
        final estimator once (`one_pass`, only when `_one_pass` is set) or by its predict and predict_proba."""
        # The rows are checked finite already and the estimator's parameters were checked when it
        # was fitted: skipping both checks saves about a quarter of a pipeline's time per call.
        # Every estimator call still checks its input (100-200 us even for one row), hence one pass.
        with sklearn.config_context(assume_finite=True, skip_parameter_validation=True):
            features = rows
            for step in self._transforms:
                features = step.transform(features)
            probabilities = None
            if one_pass and self._one_pass is not None:
                predictions, probabilities = self._one_pass(self._final, features)
            else:
                predictions = self._final.predict(features)
                if self.has_proba:
                    probabilities = self._final.predict_proba(features)
        return np.asarray(predictions), None if probabilities is None else np.asarray(probabilities, dtype=np.float64)


def _pipeline_parts(estimator: Any) -> tuple[tuple[Any, ...], Any]:
    """The transforming steps and the final estimator, as `Pipeline.predict` and `.predict_proba` run them.

    Without routed parameters both are a plain loop of `transform` calls (skipping None and
    "passthrough" steps) and then the final estimator's method; a subclass that overrides them is
    left whole. Nested pipelines are flattened the same way.
    """
    pipeline = _sklearn_class("sklearn.pipeline", "Pipeline")
    transforms: list[Any] = []
    while pipeline is not None and _same_methods(estimator, pipeline, "predict", "predict_proba"):
        steps = [step for _, step in estimator.steps]
        transforms.extend(step for step in steps[:-1] if step is not None and step != "passthrough")
        estimator = steps[-1]
    return tuple(transforms), estimator


OnePass = Callable[[Any, Any], tuple[Any, Any]]


def _one_pass(final: Any) -> OnePass | None:
    """How to get predictions and probabilities from one model pass, or None when it takes two calls.

    Only where scikit-learn's own `predict` computes its answer from what `predict_proba` computes,
    so the answers are exactly those of the two calls; matched by the method itself, so a subclass
    that overrides `predict` is not caught. Classes are looked up in `sys.modules`: an estimator
    whose class's module was never imported cannot exist, and importing them all would slow start-up.
    """
    classes = getattr(final, "classes_", None)
    if not isinstance(classes, np.ndarray) or classes.ndim != 1:
        return None  # not a classifier, or multi-output: predict answers per output
    boosting = _sklearn_class(
        "sklearn.ensemble._hist_gradient_boosting.gradient_boosting", "HistGradientBoostingClassifier"
    )
    if boosting is not None and _same_methods(final, boosting, "predict", "predict_proba"):
        # scikit-learn 1.4's predict was the argmax of predict_proba; 1.5's decides from the raw scores
        return _hist_gradient_boosting_outputs if _SKLEARN_VERSION >= (1, 5) else _argmax_outputs
    voting = _sklearn_class("sklearn.ensemble._voting", "VotingClassifier")
    if voting is not None and _same_methods(final, voting, "predict"):
        return _argmax_outputs if final.voting == "soft" else None
    for module, name in _PREDICTS_ARGMAX_OF_PROBA:
        cls = _sklearn_class(module, name)
        if cls is not None and _same_methods(final, cls, "predict"):
            return _argmax_outputs
    return None


_SKLEARN_VERSION: Final = tuple(int(part) for part in sklearn.__version__.split(".")[:2])

# Classes whose `predict` is `classes_[argmax(self.predict_proba(X), axis=1)]` (checked in scikit-learn
# 1.4 and 1.9). Not DecisionTreeClassifier (predicts from unnormalised counts), not GaussianNB or
# LogisticRegression (from scores, which can tie differently), not SVC (Platt scaling can disagree).
_PREDICTS_ARGMAX_OF_PROBA: Final = (
    ("sklearn.ensemble._forest", "ForestClassifier"),  # RandomForestClassifier, ExtraTreesClassifier
    ("sklearn.ensemble._bagging", "BaggingClassifier"),
    ("sklearn.calibration", "CalibratedClassifierCV"),
    ("sklearn.semi_supervised._label_propagation", "BaseLabelPropagation"),
)


def _sklearn_class(module: str, name: str) -> Any:
    return getattr(sys.modules.get(module), name, None)


def _same_methods(estimator: Any, cls: type, *names: str) -> bool:
    """Whether the estimator's class runs `cls`'s own code for these methods (inherited, not overridden).

    Compared as stored on the classes: `Pipeline.predict` read through `getattr` is a new wrapper
    at each access (scikit-learn's `available_if`), so `is` on it is never true.
    """
    return all(
        inspect.getattr_static(type(estimator), name, None) is inspect.getattr_static(cls, name) for name in names
    )


def _argmax_outputs(final: Any, features: Any) -> tuple[Any, Any]:
    probabilities = final.predict_proba(features)
    return final.classes_.take(np.argmax(probabilities, axis=1), axis=0), probabilities


def _hist_gradient_boosting_outputs(final: Any, features: Any) -> tuple[Any, Any]:
    """`HistGradientBoostingClassifier.predict` and `.predict_proba` (scikit-learn 1.5 on) from one `_raw_predict`.

    Its `predict` decides from the raw scores (`> 0` for two classes), and the argmax of the
    probabilities can differ at near-ties (expit rounds positive scores below 2**-52 to 0.5): so both
    are computed from the raw scores as scikit-learn does, through its private `_raw_predict` and `_loss`.
    """
    raw = final._raw_predict(features)
    encoded = (raw.ravel() > 0).astype(int) if raw.shape[1] == 1 else np.argmax(raw, axis=1)
    return final.classes_[encoded], final._loss.predict_proba(raw)


class LocalVariant:
    """Runs an in-process scikit-learn model on `{"instances": [...]}` bodies."""

    def __init__(self, name: str, *, model: LocalModel) -> None:
        self.name = name
        self.model = model

    async def predict(self, call: PredictCall) -> VariantResponse:
        answer = await self.model.predict(call.json())
        return VariantResponse(status=200, body=orjson.dumps(answer), content_type="application/json")
