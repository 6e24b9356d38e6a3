"""The gateway in-process (Starlette's TestClient) over a real Redis, with fake or real upstreams."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import httpx
import pytest
import redis.asyncio as redis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from router.app import create_app
from router.config.schema import Experiment
from router.settings import Settings
from router.store.configs import ConfigStore
from router.store.keys import Keys

UPSTREAM = "http://upstream.test"


def echo_upstream(*, status: int = 200, delay_s: float = 0.0, name: str = "upstream") -> Starlette:
    """A model server that answers with what it received, so tests can see what the proxy sent."""

    async def echo(request: Request) -> Response:
        if delay_s:
            await asyncio.sleep(delay_s)
        body = await request.body()
        return JSONResponse(
            {"served_by": name, "path": request.url.path, "headers": dict(request.headers), "body": body.decode()},
            status_code=status,
        )

    async def teapot(request: Request) -> Response:
        return Response("short and stout", status_code=418, media_type="text/plain; charset=utf-8")

    return Starlette(routes=[Route("/teapot", teapot, methods=["POST"]), Route("/{path:path}", echo, methods=["POST"])])


def experiment(name: str = "exp", **fields: Any) -> Experiment:
    """An experiment with two remote variants on the fake upstream, control `a`; fields override."""
    base: dict[str, Any] = {
        "name": name,
        "control": "a",
        "variants": [
            {"name": "a", "weight": 50, "url": f"{UPSTREAM}/a"},
            {"name": "b", "weight": 50, "url": f"{UPSTREAM}/b"},
        ],
    }
    return Experiment.model_validate({**base, **fields})


async def store_experiments_async(redis_url: str, experiments: Sequence[Experiment], *, prefix: str = "abr:") -> None:
    """Write experiments straight into the store, as `abrouter apply` would."""
    client = redis.Redis.from_url(redis_url)
    try:
        store = ConfigStore(client, keys=Keys(prefix))
        for item in experiments:
            await store.create_if_absent(item, actor="test")
    finally:
        await client.aclose()


def store_experiments(redis_url: str, experiments: Sequence[Experiment], *, prefix: str = "abr:") -> None:
    asyncio.run(store_experiments_async(redis_url, experiments, prefix=prefix))


GatewayFactory = Callable[..., TestClient]


@pytest.fixture
def gateway(redis_url: str, tmp_path: Path) -> Iterator[GatewayFactory]:
    """Start the gateway in-process with the given experiments; upstream calls go to `upstream`.

    Its data dir (spill files) is the test's own, so no test replays another's leftover events.
    """
    clients: list[TestClient] = []

    def start(
        experiments: Sequence[Experiment],
        *,
        upstream: Starlette | Literal["network"] | None = None,
        settings: Mapping[str, Any] | None = None,
        redis_url: str = redis_url,
    ) -> TestClient:
        store_experiments(redis_url, experiments)
        # "network": real connections (to reach dead ports); otherwise an in-process ASGI upstream
        transport = None if upstream == "network" else httpx.ASGITransport(app=upstream or echo_upstream())
        values = {"data_dir": tmp_path / "gateway", **(settings or {})}
        app = create_app(Settings(redis_url=redis_url, **values), transport=transport)
        client = TestClient(app, raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
        return client

    yield start
    for client in clients:
        client.__exit__(None, None, None)


def write_config(path: Path, experiments: Sequence[Experiment]) -> Path:
    """A config file holding `experiments`, as a user would write it."""
    path.write_text(json.dumps({"experiments": [e.model_dump(mode="json") for e in experiments]}))
    return path
