"""Micro-batched local variants through the app: concurrent HTTP calls, and a full queue answered with 503."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import joblib
import numpy as np
import numpy.typing as npt
import pytest
from starlette.testclient import TestClient

from tests.e2e.conftest import GatewayFactory, experiment

ROW = [12.0, 70.5, 1.0, 0.1]


class SleepyModel:
    """Takes half a second per call, so concurrent calls pile up behind it (module level: joblib pickles by path)."""

    n_features_in_ = 4

    def predict(self, X: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
        time.sleep(0.5)
        return np.zeros(len(X), dtype=np.int64)


class WhereModel:
    """Cheap and of known width; predicts 1 when it runs in one of anyio's worker threads, 0 elsewhere."""

    n_features_in_ = 4

    def predict(self, X: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
        in_worker = threading.current_thread().name.startswith("AnyIO worker thread")
        return np.full(len(X), int(in_worker), dtype=np.int64)


def local_experiment(model: Path, name: str) -> object:
    """Both variants on the same model file: one model, one queue, whatever the assignment."""
    return experiment(
        name,
        fallback="none",
        variants=[{"name": "a", "weight": 1, "model": str(model)}, {"name": "b", "weight": 1, "model": str(model)}],
    )


def concurrently(
    client: TestClient, path: str, users: list[str], *, first_alone_s: float = 0.0
) -> list[tuple[int, dict[str, object]]]:
    """POST one row per user from threads; (status, JSON body) per call.

    With `first_alone_s`, the first user's call gets that long on its own before the others start.
    """
    results: list[tuple[int, dict[str, object]]] = []
    lock = threading.Lock()

    def call(user: str) -> None:
        response = client.post(path, json={"instances": [ROW]}, headers={"X-User-Id": user})
        with lock:
            results.append((response.status_code, response.json()))

    threads = [threading.Thread(target=call, args=(user,)) for user in users]
    for i, thread in enumerate(threads):
        thread.start()
        if i == 0 and first_alone_s:
            time.sleep(first_alone_s)
    for thread in threads:
        thread.join(30)
    return results


def test_a_call_finding_the_local_models_queue_full_gets_a_503_json_error(
    gateway: GatewayFactory, tmp_path: Path
) -> None:
    model = tmp_path / "sleepy.joblib"
    joblib.dump(SleepyModel(), model)
    client = gateway([local_experiment(model, "sleepy")], settings={"local_max_queue": 1})
    # u1 keeps the model busy for 0.5 s; of u2 and u3, sent meanwhile, one waits and one is refused.
    results = concurrently(client, "/v1/experiments/sleepy/predict", ["u1", "u2", "u3"], first_alone_s=0.2)
    statuses = sorted(status for status, _ in results)
    assert statuses == [200, 200, 503], results
    refused = next(body for status, body in results if status == 503)
    assert refused["error"]["code"] == "model_overloaded"  # type: ignore[index]


def test_concurrent_calls_to_a_local_experiment_are_each_answered_for_their_own_rows(
    gateway: GatewayFactory, trained_models: dict[str, Path]
) -> None:
    client = gateway(
        [
            experiment(
                "churn-local",
                variants=[
                    {"name": "a", "weight": 1, "model": str(trained_models["churn_current"])},
                    {"name": "b", "weight": 1, "model": str(trained_models["churn_candidate"])},
                ],
            )
        ]
    )
    results = concurrently(client, "/v1/experiments/churn-local/predict", [f"u{i}" for i in range(24)])
    assert [status for status, _ in results] == [200] * 24
    assert all(len(body["predictions"]) == 1 and len(body["probabilities"]) == 1 for _, body in results)  # type: ignore[arg-type]


@pytest.mark.parametrize(("inline_max_ms", "in_worker_thread"), [(None, 0), (0, 1)], ids=["default", "off"])
def test_abrouter_local_inline_max_ms_decides_where_a_cheap_model_runs(
    gateway: GatewayFactory, tmp_path: Path, inline_max_ms: float | None, in_worker_thread: int
) -> None:
    model = tmp_path / "where.joblib"
    joblib.dump(WhereModel(), model)
    settings = {} if inline_max_ms is None else {"local_inline_max_ms": inline_max_ms}
    client = gateway([local_experiment(model, "where")], settings=settings)
    response = client.post("/v1/experiments/where/predict", json={"instances": [ROW]}, headers={"X-User-Id": "u1"})
    assert response.status_code == 200, response.text
    assert response.json()["predictions"] == [in_worker_thread]
