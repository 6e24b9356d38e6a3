"""create_app(): assembly only. Routes, middleware and error handlers; resources live in the lifespan."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import httpx
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from router.api.errors import EXCEPTION_HANDLERS
from router.api.health import healthz, readyz
from router.api.middleware import BodyLimitMiddleware
from router.api.openapi import openapi_document
from router.api.predict import predict
from router.api.responses import JSONResponse
from router.services import open_services
from router.settings import Settings


async def openapi(request: Request) -> Response:
    return JSONResponse(request.app.state.openapi)


def create_app(settings: Settings, *, transport: httpx.AsyncBaseTransport | None = None) -> Starlette:
    """The gateway as an ASGI app; `transport` lets tests put an in-process model server behind the proxy."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with open_services(settings, transport=transport) as services:
            app.state.services = services
            yield

    app = Starlette(
        routes=[
            Route("/v1/experiments/{name}/predict", predict, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/openapi.json", openapi, methods=["GET"]),
        ],
        middleware=[Middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
    app.state.openapi = openapi_document()
    return app


def app_from_environment() -> Starlette:
    """The uvicorn factory used by `abrouter serve`: every worker reads its settings from ABROUTER_*."""
    return create_app(Settings())
