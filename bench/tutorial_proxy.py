"""The baseline: the A/B proxy a user would write from a Starlette + httpx tutorial.

One shared `httpx.AsyncClient` with its defaults, a hash of the user header picks `/a` or `/b`,
the body is forwarded and the answer returned. Nothing is logged or counted. Run it with
``BENCH_UPSTREAM=http://127.0.0.1:PORT uvicorn bench.tutorial_proxy:app``.
"""

from __future__ import annotations

import contextlib
import os
import zlib
from collections.abc import AsyncIterator

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

UPSTREAM = os.environ.get("BENCH_UPSTREAM", "http://127.0.0.1:9001")


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    async with httpx.AsyncClient(base_url=UPSTREAM, timeout=5.0) as client:
        app.state.client = client
        yield


async def predict(request: Request) -> Response:
    client: httpx.AsyncClient = request.app.state.client
    user = request.headers.get("x-user-id", "")
    variant = "a" if zlib.crc32(user.encode()) % 2 == 0 else "b"
    upstream = await client.post(
        f"/{variant}", content=await request.body(), headers={"content-type": "application/json"}
    )
    return Response(
        upstream.content,
        status_code=upstream.status_code,
        media_type=upstream.headers.get("content-type"),
        headers={"x-variant": variant},
    )


app = Starlette(routes=[Route("/v1/experiments/{name}/predict", predict, methods=["POST"])], lifespan=lifespan)
