"""GET /v1/experiments/{name}/rollout and POST .../rollout/{pause|resume|advance|abort} (SPEC section 7).

The controller (`router.rollout.controller`) moves rollouts by itself; these endpoints show where
one stands with every decision and its inputs, and let an operator step in. An action is a
compare-and-set on the rollout's state, so it cannot cross a decision the controller is making.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any, Final

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from router.api.auth import actor_of, admin_only
from router.api.responses import JSONResponse
from router.errors import InvalidPayload, NoRollout
from router.rollout.controller import RolloutAction, current, operate, percent_of
from router.rollout.state import RolloutState
from router.services import Services

#: decisions shown by GET .../rollout, newest first (all are kept in Redis, up to MAX_DECISIONS)
SHOWN_DECISIONS: Final = 100


def _iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).isoformat().replace("+00:00", "Z")


async def rollout_json(services: Services, name: str) -> dict[str, Any]:
    """Where the rollout of `name` stands: its plan, phase, step, share, next decision, lease and decisions."""
    stored = await services.store.get(name)
    rollout = stored.experiment.rollout
    if rollout is None:
        raise NoRollout(f"experiment {name!r} has no rollout in its config (see docs/rollout.md)")
    # None as well for another plan's state: this one starts over at the controller's next pass
    state: RolloutState | None = current(await services.rollouts.read(name), rollout)
    lease = await services.rollouts.lease(name)
    return {
        "experiment": name,
        "config_version": stored.version,
        "canary": rollout.canary,
        "steps": rollout.steps,
        "rollout": rollout.model_dump(mode="json"),
        "phase": state.phase.value if state is not None else "pending",
        "step": state.step if state is not None else None,
        "percent": percent_of(rollout, state) if state is not None else None,
        "weights_applied": state.weights_applied if state is not None else None,
        "next_decision_at": _iso(state.next_decision_at) if state is not None else None,
        "lease": {"holder": lease[0], "expires_in_s": lease[1]} if lease is not None else None,
        "decisions": await services.rollouts.decisions(name, limit=SHOWN_DECISIONS),
    }


@admin_only
async def get_rollout(request: Request) -> Response:
    services: Services = request.app.state.services
    return JSONResponse(await rollout_json(services, request.path_params["name"]))


@admin_only
async def act_on_rollout(request: Request) -> Response:
    """Pause, resume, advance or abort; answers the rollout as GET shows it after the action."""
    services: Services = request.app.state.services
    name, raw = request.path_params["name"], request.path_params["action"]
    try:
        action = RolloutAction(raw)
    except ValueError:
        choices = ", ".join(a.value for a in RolloutAction)
        raise InvalidPayload(f"unknown rollout action {raw!r}; one of: {choices}") from None
    stored = await services.store.get(name)
    await operate(
        action,
        stored,
        configs=services.store,
        rollouts=services.rollouts,
        metrics=services.metrics,
        actor=actor_of(request),
        now=time.time(),
    )
    return JSONResponse(await rollout_json(services, name))


ROUTES: Final = [
    Route("/v1/experiments/{name}/rollout", get_rollout, methods=["GET"]),
    Route("/v1/experiments/{name}/rollout/{action}", act_on_rollout, methods=["POST"]),
]
