"""The whole predict path in one process, for measuring what one piece of it costs (logging, metrics).

The gateway app runs behind httpx's ASGI transport with an in-process model server behind its
proxy and a private redis-server on 127.0.0.1, so the gateway's own work dominates the figures.
Used by bench/logging_overhead.py and bench/metrics_overhead.py, which alternate rounds of one
piece on and off so that drift hits both equally.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from router.app import create_app
from router.config.schema import Experiment
from router.services import Services
from router.settings import Settings
from router.store.configs import ConfigStore
from router.store.embedded import RedisServer
from router.store.keys import Keys

BODY = b'{"predictions": [0], "probabilities": [[0.9, 0.1]]}'
EXPERIMENT: dict[str, Any] = {
    "name": "bench",
    "control": "a",
    "variants": [
        {"name": "a", "weight": 50, "url": "http://model.bench/a"},
        {"name": "b", "weight": 50, "url": "http://model.bench/b"},
    ],
    "metrics": [{"name": "converted", "kind": "binomial"}],
}


def model_server() -> Starlette:
    """The cheapest possible upstream, so the gateway's own work dominates."""

    async def predict(request: Request) -> Response:
        await request.body()
        return Response(BODY, media_type="application/json")

    return Starlette(routes=[Route("/{variant}", predict, methods=["POST"])])


@contextlib.contextmanager
def private_redis() -> Iterator[tuple[str, Path]]:
    """A redis-server of our own on a free loopback port, and a scratch directory; both gone afterwards."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="abrouter-bench-") as tmp:
        redis_server = RedisServer(Path(tmp) / "redis").start()
        try:
            yield redis_server.url, Path(tmp) / "data"
        finally:
            redis_server.stop()


@contextlib.asynccontextmanager
async def gateway(redis_url: str, data_dir: Path) -> AsyncIterator[tuple[Services, httpx.AsyncClient]]:
    """The app with the `bench` experiment stored, started, and a client that calls it in-process."""
    import redis.asyncio as redis

    store_client = redis.Redis.from_url(redis_url)
    try:
        await ConfigStore(store_client, keys=Keys()).create_if_absent(
            Experiment.model_validate(EXPERIMENT), actor="bench"
        )
    finally:
        await store_client.aclose()
    settings = Settings(redis_url=redis_url, data_dir=data_dir, redis_timeout_s=2.0)
    app = create_app(settings, transport=httpx.ASGITransport(app=model_server()))
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://gateway") as client,
    ):
        yield app.state.services, client


async def one_round(
    client: httpx.AsyncClient, units: itertools.count[int], *, seconds: float, concurrency: int
) -> float:
    """Calls per second over `seconds`, `concurrency` calls in flight, each from a new unit (an exposure)."""
    done = 0
    deadline = time.perf_counter() + seconds

    async def caller() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            response = await client.post(
                "/v1/experiments/bench/predict",
                content=b'{"instances": [[1.0, 2.0]]}',
                headers={"X-User-Id": f"u{next(units)}"},
            )
            if response.status_code != 200:
                raise SystemExit(f"the gateway answered {response.status_code}: {response.text}")
            done += 1
            # in-process transports may never suspend: yield so the app's background tasks (event
            # writer, config sync) run as they would between socket reads
            await asyncio.sleep(0)

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return done / (time.perf_counter() - started)
