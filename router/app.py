"""create_app(): assembly only. Routes, middleware and error handlers; resources live in the lifespan."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import AsyncIterator
from typing import Final

import httpx
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from router.api.admin import ROUTES as ADMIN_ROUTES
from router.api.auth import Authenticator
from router.api.errors import EXCEPTION_HANDLERS
from router.api.health import healthz, readyz
from router.api.metrics import metrics
from router.api.middleware import BodyLimitMiddleware, PredictFastPath
from router.api.openapi import openapi_document
from router.api.outcomes import outcomes
from router.api.predict import PredictEndpoint
from router.api.reports import ROUTES as REPORT_ROUTES
from router.api.responses import JSONResponse
from router.api.rollout import ROUTES as ROLLOUT_ROUTES
from router.metrics import Metrics, multiprocess_dir, worker_lifetime
from router.services import open_services
from router.settings import Settings


async def openapi(request: Request) -> Response:
    return JSONResponse(request.app.state.openapi)


def create_app(
    settings: Settings,
    *,
    registry: CollectorRegistry | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    freeze_after_startup: bool = False,
) -> Starlette:
    """The gateway as an ASGI app; `transport` lets tests put an in-process model server behind the proxy.

    Metrics go to `registry`, by default one of the app's own, so two apps never share counts.
    `freeze_after_startup` is for a process that serves one app for its whole life (see below).
    """
    app_metrics = Metrics(registry if registry is not None else CollectorRegistry())
    predict = PredictEndpoint(max_body_bytes=settings.max_body_bytes)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        with worker_lifetime(multiprocess_dir()):
            async with open_services(settings, transport=transport, metrics=app_metrics) as services:
                app.state.services = services
                if freeze_after_startup:
                    freeze_startup_objects()
                yield

    app = Starlette(
        routes=[
            Route("/v1/experiments/{name}/predict", predict, methods=["POST"]),
            Route("/v1/experiments/{name}/outcomes", outcomes, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/openapi.json", openapi, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            *ADMIN_ROUTES,  # every one behind @admin_only
            *REPORT_ROUTES,  # behind @admin_only too
            *ROLLOUT_ROUTES,  # and these
        ],
        middleware=[
            Middleware(PredictFastPath, endpoint=predict),  # first: predict calls skip the rest (the hot path)
            Middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes),
        ],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
    app.state.openapi = openapi_document()
    app.state.authenticator = Authenticator.from_settings(settings)
    return app


#: Allocations between two passes of the garbage collector over the youngest objects (Python's default: 700).
GC_YOUNG_THRESHOLD: Final = 10_000


def freeze_startup_objects() -> None:
    """Keep the objects that live as long as the process (modules, models, config) out of every later GC pass.

    A full pass of the cyclic garbage collector over them takes about 70 ms on the development
    machine, and such passes come every few seconds under load: each one stalls every call in
    flight, which is the tail of the latency (docs/performance.md). Frozen, they are never scanned.

    The youngest generation is collected every `GC_YOUNG_THRESHOLD` allocations instead of 700:
    a proxied call allocates dozens of objects, nearly all gone by the time a pass runs, and 700
    made the passes cost 5% of the gateway's CPU (docs/performance.md, item 17).
    """
    gc.collect()
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, oldest)


def app_from_environment() -> Starlette:
    """The uvicorn factory used by `abrouter serve`: every worker reads its settings from ABROUTER_*."""
    return create_app(Settings(), freeze_after_startup=True)
