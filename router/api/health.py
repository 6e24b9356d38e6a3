"""Liveness and readiness probes."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from router.api.responses import JSONResponse
from router.services import Services


async def healthz(request: Request) -> Response:
    """Alive: the process answers. Orchestrators restart it when this fails."""
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    """Ready: config loaded and Redis answering; otherwise 503 with the reasons, so traffic goes elsewhere."""
    services: Services = request.app.state.services
    reasons: list[str] = []
    if not services.live.loaded:
        reasons.append("no experiment config loaded yet")
    redis_problem = await services.redis_problem()
    if redis_problem is not None:
        reasons.append(redis_problem)
        if services.live.loaded:
            reasons.append("serving the last config loaded")
    if services.live.stale:
        reasons.append(f"config may be stale: the last check against Redis failed: {services.live.store_error}")
    # a rejected new version is worth reporting, but the replica still serves the previous one: ready
    warnings = [f"experiment {name}: newest {why}" for name, why in sorted(services.live.rejected.items())]
    unready = not services.live.loaded or redis_problem is not None
    body = {
        "status": "not_ready" if unready else "ready",
        "reasons": reasons,
        "warnings": warnings,
        "config_stale": services.live.stale,
        "experiments": {name: services.live.get(name).version for name in services.live.names()},
    }
    return JSONResponse(body, status_code=503 if unready else 200)
