"""Walks the app's route table, so an endpoint added later is checked without anyone remembering to.

Every route is either on the short public list below or refuses a call without a valid admin token.
(test_health.py checks that every route is described in the OpenAPI document.)
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
from starlette.applications import Starlette
from starlette.routing import Route
from starlette.testclient import TestClient

from router.app import create_app
from router.settings import Settings
from tests.e2e.conftest import experiment, store_experiments

#: the only routes callable without a token: the prediction plane and operations
PUBLIC: frozenset[tuple[str, str]] = frozenset(
    {
        ("POST", "/v1/experiments/{name}/predict"),
        ("POST", "/v1/experiments/{name}/outcomes"),
        ("GET", "/healthz"),
        ("GET", "/readyz"),
        ("GET", "/metrics"),
        ("GET", "/openapi.json"),
    }
)
TOKEN = "tok-admin"


def operations(app: Starlette) -> list[tuple[str, str]]:
    """(method, path) of every route; HEAD comes with GET."""
    found = []
    for route in app.routes:
        assert isinstance(route, Route), f"{route!r} is not a plain Route: teach this test to walk it"
        found += [(method, route.path) for method in sorted(route.methods or ()) if method != "HEAD"]
    return found


def app_without_connections() -> Starlette:
    """The app as assembled; no lifespan runs, so nothing connects (auth answers before any store is used)."""
    return create_app(Settings(redis_url="redis://127.0.0.1:1", admin_token=TOKEN))


ROUTES = operations(app_without_connections())
PROTECTED = [op for op in ROUTES if op not in PUBLIC]


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "churn", path)


@pytest.fixture(scope="module")
def unconnected() -> Iterator[TestClient]:
    with TestClient(app_without_connections(), raise_server_exceptions=False) as client:
        yield client


@pytest.fixture
def connected(redis_url: str, tmp_path: Path) -> Iterator[TestClient]:
    store_experiments(redis_url, [experiment("churn")])
    app = create_app(Settings(redis_url=redis_url, admin_token=TOKEN, data_dir=tmp_path))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def test_the_route_table_has_control_plane_routes_to_check() -> None:
    assert len(PROTECTED) >= 9


def test_every_public_exception_is_a_route_of_the_app() -> None:
    assert set(ROUTES) >= PUBLIC, sorted(PUBLIC - set(ROUTES))


@pytest.mark.parametrize(("method", "path"), [pytest.param(*op, id=" ".join(op)) for op in PROTECTED])
@pytest.mark.parametrize(
    "authorization",
    [
        pytest.param(None, id="no-header"),
        pytest.param("Bearer wrong-token", id="wrong-token"),
        pytest.param(f"Basic {TOKEN}", id="not-bearer"),
    ],
)
def test_every_control_plane_route_answers_401_without_a_valid_token(
    unconnected: TestClient, method: str, path: str, authorization: str | None
) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    response = unconnected.request(method, concrete(path), headers=headers, json={})
    assert response.status_code == 401, response.text
    assert response.json()["error"]["code"] == "unauthorized"
    assert response.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize(("method", "path"), [pytest.param(*op, id=" ".join(op)) for op in PROTECTED])
def test_every_control_plane_route_lets_a_valid_token_through(connected: TestClient, method: str, path: str) -> None:
    response = connected.request(method, concrete(path), headers={"Authorization": f"Bearer {TOKEN}"}, json={})
    assert response.status_code != 401, response.text


@pytest.mark.parametrize(("method", "path"), [pytest.param(*op, id=" ".join(op)) for op in sorted(PUBLIC)])
def test_the_public_routes_need_no_token(connected: TestClient, method: str, path: str) -> None:
    response = connected.request(method, concrete(path), json={"unit": "u1", "metric": "m", "value": 1})
    assert response.status_code != 401, response.text


async def test_an_app_without_a_configured_token_refuses_every_admin_call(redis_url: str) -> None:
    app = create_app(Settings(redis_url=redis_url))
    async with httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://gateway.test") as client:
        response = await client.get("/v1/experiments", headers={"Authorization": "Bearer "})
    assert response.status_code == 401
    assert "no admin token is configured" in response.json()["error"]["message"]
