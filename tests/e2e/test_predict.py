"""POST /v1/experiments/{name}/predict through the whole app, with a real Redis and ASGI upstreams."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from router.store.embedded import free_port
from tests.e2e.conftest import UPSTREAM, GatewayFactory, echo_upstream, experiment

ASSIGNMENT_HEADERS = ("x-experiment", "x-variant", "x-assignment", "x-config-version", "x-request-id")
ROW = [12.0, 70.5, 1.0, 0.1]


def local_experiment(models: dict[str, Path], name: str = "local", **fields: object) -> object:
    return experiment(
        name,
        variants=[
            {"name": "a", "weight": 50, "model": str(models["churn_current"])},
            {"name": "b", "weight": 50, "model": str(models["churn_candidate"])},
        ],
        **fields,
    )


def test_a_remote_variant_answers_with_the_upstream_body_and_the_assignment_headers(gateway: GatewayFactory) -> None:
    client = gateway([experiment()])
    response = client.post("/v1/experiments/exp/predict", json={"instances": [ROW]}, headers={"X-User-Id": "u1"})
    assert response.status_code == 200
    assert all(h in response.headers for h in ASSIGNMENT_HEADERS)
    assert response.headers["x-experiment"] == "exp"
    assert response.headers["x-assignment"] == "hashed"
    assert response.headers["x-config-version"] == "1"
    assert response.json()["path"] == f"/{response.headers['x-variant']}"
    assert response.json()["body"] == '{"instances":[[12.0,70.5,1.0,0.1]]}'


def test_a_local_variant_answers_predictions_and_probabilities(
    gateway: GatewayFactory, trained_models: dict[str, Path]
) -> None:
    client = gateway([local_experiment(trained_models)])
    response = client.post("/v1/experiments/local/predict", json={"instances": [ROW, ROW]}, headers={"X-User-Id": "u1"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["predictions"]) == 2
    assert body["probabilities"][0] == pytest.approx([1 - body["probabilities"][0][1], body["probabilities"][0][1]])
    assert response.headers["content-type"] == "application/json"
    assert all(h in response.headers for h in ASSIGNMENT_HEADERS)


def test_the_same_unit_is_served_the_same_variant_every_time(gateway: GatewayFactory) -> None:
    client = gateway([experiment()])
    variants = {
        client.post("/v1/experiments/exp/predict", json={}, headers={"X-User-Id": "same"}).headers["x-variant"]
        for _ in range(20)
    }
    assert len(variants) == 1


def test_hop_by_hop_host_and_length_headers_are_not_forwarded_but_the_others_are(gateway: GatewayFactory) -> None:
    client = gateway([experiment()])
    response = client.post(
        "/v1/experiments/exp/predict",
        content=b'{"x": 1}',
        headers={
            "X-User-Id": "u1",
            "Authorization": "Bearer model-token",
            "Connection": "keep-alive, X-Drop-Me",
            "X-Drop-Me": "1",
            "Keep-Alive": "timeout=5",
            "TE": "trailers",
            "Content-Type": "application/json",
        },
    )
    seen = response.json()["headers"]
    assert seen["authorization"] == "Bearer model-token"
    assert seen["x-user-id"] == "u1"
    assert seen["content-type"] == "application/json"
    assert seen["host"] == "upstream.test"  # httpx's own, for the upstream's URL
    assert seen["x-request-id"] == response.headers["x-request-id"]
    assert not {"x-drop-me", "keep-alive", "te", "connection"} & set(seen)
    assert seen["content-length"] == "8"  # recomputed by the client for the body it sends


def test_the_upstream_status_body_and_content_type_come_back_unchanged(gateway: GatewayFactory) -> None:
    client = gateway(
        [
            experiment(
                variants=[
                    {"name": "a", "weight": 1, "url": f"{UPSTREAM}/teapot"},
                    {"name": "b", "weight": 0, "url": f"{UPSTREAM}/b"},
                ]
            )
        ]
    )
    response = client.post("/v1/experiments/exp/predict", content=b"{}", headers={"X-User-Id": "u1"})
    assert response.status_code == 418
    assert response.text == "short and stout"
    assert response.headers["content-type"] == "text/plain; charset=utf-8"


def test_a_callers_request_id_is_echoed_and_a_missing_one_is_made(gateway: GatewayFactory) -> None:
    client = gateway([experiment()])
    given = client.post("/v1/experiments/exp/predict", json={}, headers={"X-User-Id": "u", "X-Request-Id": "req-42"})
    made = client.post("/v1/experiments/exp/predict", json={}, headers={"X-User-Id": "u"})
    assert given.headers["x-request-id"] == "req-42"
    assert len(made.headers["x-request-id"]) == 32


def test_an_unknown_experiment_is_a_404_json_error(gateway: GatewayFactory) -> None:
    client = gateway([experiment()])
    response = client.post("/v1/experiments/nope/predict", json={}, headers={"X-User-Id": "u1"})
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "unknown_experiment"


@pytest.mark.parametrize("chunked", [pytest.param(False, id="content-length"), pytest.param(True, id="chunked")])
def test_a_body_over_the_limit_is_a_413(gateway: GatewayFactory, chunked: bool) -> None:
    client = gateway([experiment()], settings={"max_body_bytes": 1000})
    body = b"x" * 1001
    content = iter([body[:500], body[500:]]) if chunked else body
    response = client.post("/v1/experiments/exp/predict", content=content, headers={"X-User-Id": "u1"})
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b'{"instances": [[1, 2]]}', id="too-few-features"),
        pytest.param(b'{"instances": [[1, 2, 3, 4], [1, 2, 3]]}', id="ragged-rows"),
        pytest.param(b'{"instances": [["a", 2, 3, 4]]}', id="a-string"),
        pytest.param(b'{"instances": []}', id="no-rows"),
        pytest.param(b'{"rows": [[1, 2, 3, 4]]}', id="no-instances-key"),
        pytest.param(b"[1, 2, 3, 4]", id="not-an-object"),
        pytest.param(b"{not json", id="not-json"),
    ],
)
def test_a_local_variant_answers_422_to_a_malformed_body(
    gateway: GatewayFactory, trained_models: dict[str, Path], body: bytes
) -> None:
    client = gateway([local_experiment(trained_models)])
    response = client.post("/v1/experiments/local/predict", content=body, headers={"X-User-Id": "u1"})
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "invalid_payload"
    assert response.headers["x-variant"] in ("a", "b")


def test_a_call_without_a_unit_is_served_by_control_as_no_unit(gateway: GatewayFactory) -> None:
    client = gateway([experiment()])
    response = client.post("/v1/experiments/exp/predict", json={})
    assert (response.status_code, response.headers["x-variant"], response.headers["x-assignment"]) == (
        200,
        "a",
        "no_unit",
    )


def test_a_call_without_a_unit_is_a_400_when_the_experiment_rejects_them(gateway: GatewayFactory) -> None:
    client = gateway([experiment(on_missing_unit="reject")])
    response = client.post("/v1/experiments/exp/predict", json={})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "missing_unit"


@pytest.mark.parametrize(
    ("unit", "request_kwargs"),
    [
        pytest.param("cookie:uid", {"headers": {"Cookie": "theme=dark; uid=u7"}}, id="cookie"),
        pytest.param("query:user", {"params": {"user": "u7"}}, id="query"),
        pytest.param("json:user.id", {"json": {"user": {"id": "u7"}}}, id="json-path"),
        pytest.param("header:X-Account", {"headers": {"X-Account": "u7"}}, id="header"),
    ],
)
def test_the_unit_id_is_read_from_where_the_experiment_says(
    gateway: GatewayFactory, unit: str, request_kwargs: dict[str, object]
) -> None:
    client = gateway([experiment(unit=unit, force={"u7": "b"})])
    response = client.post("/v1/experiments/exp/predict", **request_kwargs)  # type: ignore[arg-type]
    assert (response.headers["x-variant"], response.headers["x-assignment"]) == ("b", "forced")


def test_the_override_header_picks_the_variant_only_when_allowed(gateway: GatewayFactory) -> None:
    client = gateway([experiment("allowed", allow_override_header=True), experiment("denied")])
    allowed = client.post("/v1/experiments/allowed/predict", json={}, headers={"X-User-Id": "u", "X-Variant": "b"})
    denied = client.post("/v1/experiments/denied/predict", json={}, headers={"X-User-Id": "u", "X-Variant": "b"})
    assert (allowed.headers["x-variant"], allowed.headers["x-assignment"]) == ("b", "override")
    assert denied.headers["x-assignment"] == "hashed"


def _failing_b(status: int = 503, delay_s: float = 0.0) -> Starlette:
    """An upstream whose /a answers and whose /b fails (after `delay_s`)."""
    healthy = echo_upstream()

    async def route(request: Request) -> Response:
        if request.url.path == "/b":
            if delay_s:
                import asyncio

                await asyncio.sleep(delay_s)
            return JSONResponse({"detail": "b is broken"}, status_code=status)
        response: Response = await healthy.router.routes[-1].endpoint(request)  # type: ignore[attr-defined]
        return response

    return Starlette(routes=[Route("/{path:path}", route, methods=["POST"])])


def test_a_5xx_from_a_non_control_variant_falls_back_to_control(gateway: GatewayFactory) -> None:
    client = gateway([experiment(force={"u": "b"})], upstream=_failing_b(503))
    response = client.post("/v1/experiments/exp/predict", json={}, headers={"X-User-Id": "u"})
    assert response.status_code == 200
    assert (response.headers["x-variant"], response.headers["x-assignment"]) == ("a", "fallback")
    assert response.json()["path"] == "/a"


def test_without_fallback_a_5xx_is_passed_back_as_it_is(gateway: GatewayFactory) -> None:
    client = gateway([experiment(force={"u": "b"}, fallback="none")], upstream=_failing_b(503))
    response = client.post("/v1/experiments/exp/predict", json={}, headers={"X-User-Id": "u"})
    assert response.status_code == 503
    assert response.json() == {"detail": "b is broken"}
    assert response.headers["x-variant"] == "b"


def test_a_slow_upstream_is_a_504_when_there_is_no_fallback(gateway: GatewayFactory) -> None:
    slow = experiment(
        fallback="none",
        force={"u": "b"},
        variants=[
            {"name": "a", "weight": 1, "url": f"{UPSTREAM}/a"},
            {"name": "b", "weight": 1, "url": f"{UPSTREAM}/b", "timeout_s": 0.2},
        ],
    )
    client = gateway([slow], upstream=_failing_b(200, delay_s=2.0))
    started = time.monotonic()
    response = client.post("/v1/experiments/exp/predict", json={}, headers={"X-User-Id": "u"})
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "upstream_timeout"
    assert time.monotonic() - started < 1.5


def test_an_unreachable_upstream_is_a_502_when_there_is_no_fallback(gateway: GatewayFactory) -> None:
    dead = f"http://127.0.0.1:{free_port()}/predict"
    unreachable = experiment(
        fallback="none",
        force={"u": "b"},
        variants=[{"name": "a", "weight": 1, "url": dead}, {"name": "b", "weight": 1, "url": dead}],
    )
    client = gateway([unreachable], upstream="network")
    response = client.post("/v1/experiments/exp/predict", json={}, headers={"X-User-Id": "u"})
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_unavailable"
    assert response.headers["x-variant"] == "b"


def test_a_failing_control_is_not_retried_and_answers_its_error(gateway: GatewayFactory) -> None:
    dead = f"http://127.0.0.1:{free_port()}/predict"
    client = gateway(
        [
            experiment(
                force={"u": "a"},
                variants=[{"name": "a", "weight": 1, "url": dead}, {"name": "b", "weight": 1, "url": dead}],
            )
        ],
        upstream="network",
    )
    response = client.post("/v1/experiments/exp/predict", json={}, headers={"X-User-Id": "u"})
    assert response.status_code == 502
    assert (response.headers["x-variant"], response.headers["x-assignment"]) == ("a", "forced")


def test_the_config_version_in_force_is_echoed(gateway: GatewayFactory) -> None:
    client = gateway([experiment()])
    response = client.post("/v1/experiments/exp/predict", json={}, headers={"X-User-Id": "u"})
    assert response.headers["x-config-version"] == "1"


@pytest.mark.parametrize(
    "unit_id",
    [pytest.param("josé", id="latin-letter"), pytest.param("ユーザー42", id="japanese")],
)
def test_a_non_ascii_unit_id_in_a_header_is_hashed_from_its_utf8_bytes(gateway: GatewayFactory, unit_id: str) -> None:
    from router.assignment.hashing import gb_hash
    from router.assignment.ranges import choose_variation, normalized_ranges

    config = experiment()
    client = gateway([config])
    bucket = gb_hash(config.hash_seed, unit_id, 2)
    assert bucket is not None
    expected = config.variant_names[choose_variation(bucket, normalized_ranges(1.0, config.weights))]
    response = client.post(
        "/v1/experiments/exp/predict", content=b"{}", headers=[(b"x-user-id", unit_id.encode("utf-8"))]
    )
    assert response.headers["x-variant"] == expected
