"""The predict route's lean ASGI endpoint behaves like the rest of the app where they meet."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.testclient import TestClient

from tests.e2e.conftest import GatewayFactory, experiment


def test_a_get_on_the_predict_path_is_a_405_json_error(gateway: GatewayFactory) -> None:
    client = gateway([experiment()])
    response = client.get("/v1/experiments/exp/predict")
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"
    assert response.headers["allow"] == "POST"  # RFC 9110: a 405 names the methods that would do


def test_a_405_on_a_path_shared_by_several_routes_names_every_method_of_them(gateway: GatewayFactory) -> None:
    """Each admin method is a route of its own on the one path: all of them are allowed, not the first's."""
    client = gateway([experiment()])
    response = client.post("/v1/experiments/exp")
    assert response.status_code == 405
    assert response.headers["allow"] == "DELETE, GET, HEAD, PATCH, PUT"


def test_a_path_with_an_empty_experiment_name_is_no_route(gateway: GatewayFactory) -> None:
    client = gateway([experiment()])
    response = client.post("/v1/experiments//predict", json={}, headers={"X-User-Id": "u1"})
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_the_gateway_mounted_under_a_prefix_serves_predict_calls_through_its_routes(gateway: GatewayFactory) -> None:
    inner = gateway([experiment()])
    outer = Starlette(routes=[Mount("/ab", app=inner.app)])
    with TestClient(outer) as client:
        response = client.post("/ab/v1/experiments/exp/predict", json={}, headers={"X-User-Id": "u1"})
    assert response.status_code == 200
    assert (response.headers["x-experiment"], response.headers["x-assignment"]) == ("exp", "hashed")


def test_every_call_without_a_request_id_gets_a_new_one(gateway: GatewayFactory) -> None:
    client = gateway([experiment()])
    ids = {
        client.post("/v1/experiments/exp/predict", json={}, headers={"X-User-Id": "u1"}).headers["x-request-id"]
        for _ in range(50)
    }
    assert len(ids) == 50
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
