"""The example remote model server: its contract through TestClient, and once over real HTTP under uvicorn."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import joblib
import numpy as np
import pytest
import uvicorn
from starlette.testclient import TestClient

from router.errors import ModelLoadError
from variants.churn import make_dataset
from variants.model_server import create_model_server

NEW_SUBSCRIBER_LOSING_INTEREST = [2.0, 80.0, 5.0, 0.8]
LOYAL_SUBSCRIBER = [60.0, 50.0, 0.0, 0.0]


def test_the_rule_server_answers_predictions_probabilities_and_its_name() -> None:
    client = TestClient(create_model_server(name="rule"))
    response = client.post("/predict", json={"instances": [LOYAL_SUBSCRIBER, NEW_SUBSCRIBER_LOSING_INTEREST]})
    assert response.status_code == 200
    assert response.json()["model"] == "rule"
    assert response.json()["predictions"] == [0, 1]
    assert [len(row) for row in response.json()["probabilities"]] == [2, 2]


def test_a_model_file_server_answers_what_the_model_predicts(trained_models: dict[str, Path]) -> None:
    path = trained_models["churn_candidate"]
    instances = make_dataset(30, seed=3)[0].tolist()
    response = TestClient(create_model_server(path)).post("/predict", json={"instances": instances})
    assert response.json()["predictions"] == joblib.load(path).predict(np.array(instances)).tolist()


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b'{"instances": [[1, 2, 3]]}', id="wrong-feature-count"),
        pytest.param(b'{"instances": []}', id="empty-instances"),
        pytest.param(b'{"instances": [[1, "2", 3, 4]]}', id="string-feature"),
        pytest.param(b"[[1, 2, 3, 4]]", id="not-an-object"),
        pytest.param(b"{not json", id="not-json"),
    ],
)
def test_a_malformed_body_is_a_422_with_the_error_shape(body: bytes) -> None:
    response = TestClient(create_model_server()).post(
        "/predict", content=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_payload"


def test_the_422_message_names_the_row_and_the_feature_counts() -> None:
    response = TestClient(create_model_server()).post("/predict", json={"instances": [LOYAL_SUBSCRIBER, [1, 2, 3]]})
    assert response.json()["error"]["message"] == "instances[1] has 3 features, the model expects 4"


def test_healthz_answers_ok_with_the_model_name() -> None:
    response = TestClient(create_model_server(name="churn-current")).get("/healthz")
    assert (response.status_code, response.json()) == (200, {"status": "ok", "model": "churn-current"})


def test_delay_s_holds_the_answer_back() -> None:
    client = TestClient(create_model_server(delay_s=0.2))
    started = time.perf_counter()
    client.post("/predict", json={"instances": [LOYAL_SUBSCRIBER]})
    assert time.perf_counter() - started >= 0.2


@pytest.mark.parametrize("status", [pytest.param(500, id="500"), pytest.param(503, id="503")])
def test_fail_status_answers_every_prediction_with_that_status(status: int) -> None:
    response = TestClient(create_model_server(fail_status=status)).post(
        "/predict", json={"instances": [LOYAL_SUBSCRIBER]}
    )
    assert response.status_code == status
    assert response.json()["error"]["code"] == "injected_failure"


def test_fail_status_leaves_healthz_healthy() -> None:
    assert TestClient(create_model_server(fail_status=503)).get("/healthz").status_code == 200


def test_fail_status_must_be_an_error_status() -> None:
    with pytest.raises(ValueError, match="got 200"):
        create_model_server(fail_status=200)


def test_a_missing_model_file_fails_when_the_server_is_built(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"nowhere\.joblib does not exist"):
        create_model_server(tmp_path / "nowhere.joblib")


@pytest.fixture
def served_url() -> Iterator[str]:
    """The rule server under real uvicorn in a thread; binding the socket first means no race for the port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(create_model_server(name="served"), log_level="warning"))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                pytest.fail("uvicorn did not start within 10 s")
            time.sleep(0.01)
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.should_exit = True
            thread.join(timeout=10)


def test_the_server_answers_over_real_http_under_uvicorn(served_url: str) -> None:
    response = httpx.post(f"{served_url}/predict", json={"instances": [NEW_SUBSCRIBER_LOSING_INTEREST]}, timeout=5)
    assert (response.status_code, response.json()["predictions"], response.json()["model"]) == (200, [1], "served")
