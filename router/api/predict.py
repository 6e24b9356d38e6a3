"""POST /v1/experiments/{name}/predict: assign the caller's unit a variant and serve the call with it."""

from __future__ import annotations

import time
import uuid
from typing import Final

from starlette.requests import Request
from starlette.responses import Response

from router.api.responses import error_response
from router.api.units import unit_id_of
from router.assignment.assign import Assignment, Reason, assign
from router.errors import PredictionError, RouterError, UpstreamError
from router.live_config import ActiveExperiment
from router.metrics import NO_VARIANT, REJECTED, Metrics, UpstreamErrorKind
from router.proxy import forwardable_headers
from router.services import Services
from router.variants.base import PredictCall, VariantResponse

MAX_REQUEST_ID_LENGTH: Final = 128


def request_id_of(supplied: str | None) -> str:
    """The caller's `X-Request-Id` when it is a sane token, else a new one (ids end up in logs)."""
    if supplied and len(supplied) <= MAX_REQUEST_ID_LENGTH and supplied.isascii() and supplied.isprintable():
        return supplied
    return uuid.uuid4().hex


async def predict(request: Request) -> Response:
    """Thin on purpose: parse, assign, call the variant (falling back to control), record, answer."""
    started = time.perf_counter()
    services: Services = request.app.state.services
    active = services.live.get(request.path_params["name"])  # unknown experiments are not counted: no label
    request_id = request_id_of(request.headers.get("x-request-id"))
    headers = {
        "X-Experiment": active.experiment.name,
        "X-Config-Version": str(active.version),
        "X-Request-Id": request_id,
    }
    variant, reason = NO_VARIANT, REJECTED
    unit: str | None = None
    assignment: Assignment | None = None
    served: Assignment | None = None
    response: Response
    try:
        forwarded = [(k, v) for k, v in forwardable_headers(request.headers.items()) if k.lower() != "x-request-id"]
        forwarded.append(("x-request-id", request_id))
        call = PredictCall(body=await request.body(), headers=forwarded, request_id=request_id)
        unit = unit_id_of(active.experiment.unit, headers=request.headers, query=request.query_params, call=call)
        sticky = await services.sticky.lookup(active.experiment, unit)  # None when not sticky or Redis is away
        assignment = assign(active.experiment, unit, override=request.headers.get("x-variant") or None, sticky=sticky)
        variant, reason = assignment.variant, assignment.reason
        headers["X-Variant"], headers["X-Assignment"] = variant, reason
        answer, served = await call_with_fallback(active, assignment, call, services.metrics)
    except RouterError as exc:
        response = error_response(exc, headers=headers)
    else:
        variant, reason = served.variant, served.reason
        headers["X-Variant"], headers["X-Assignment"] = variant, reason
        response = Response(answer.body, status_code=answer.status, headers=headers, media_type=answer.content_type)
    services.metrics.request(
        active.experiment.name, variant, reason, response.status_code, time.perf_counter() - started
    )
    # Queued, never awaited: the exposure and the request, error and latency counts of the report.
    services.events.record_call(
        active.experiment,
        active.version,
        unit,
        assignment,
        served,
        status=response.status_code,
        elapsed_s=time.perf_counter() - started,
    )
    return response


async def call_with_fallback(
    active: ActiveExperiment, assignment: Assignment, call: PredictCall, metrics: Metrics
) -> tuple[VariantResponse, Assignment]:
    """Serve the call with the assigned variant; if it fails and the experiment allows, with control.

    Failures are timeouts, unreachable upstreams, 5xx answers and local models that raise;
    a caller's bad input (4xx) is never retried on control.
    """
    experiment = active.experiment
    failure: RouterError | None = None
    try:
        answer = await call_variant(active, assignment.variant, call, metrics)
    except (UpstreamError, PredictionError) as exc:
        failure = exc
    else:
        if not answer.failed:
            return answer, assignment
    if experiment.fallback != "control" or assignment.variant == experiment.control:
        if failure is not None:
            raise failure
        return answer, assignment
    metrics.fallback(experiment.name, assignment.variant)
    served = Assignment(variant=experiment.control, reason=Reason.FALLBACK, bucket=assignment.bucket)
    return await call_variant(active, experiment.control, call, metrics), served


async def call_variant(active: ActiveExperiment, variant: str, call: PredictCall, metrics: Metrics) -> VariantResponse:
    """One attempt at one variant, timed, with its failure counted by kind."""
    started = time.perf_counter()
    error: UpstreamErrorKind | None = None
    try:
        answer = await active.backends[variant].predict(call)
        if answer.failed:
            error = UpstreamErrorKind.STATUS
        return answer
    except UpstreamError as exc:
        error = UpstreamErrorKind(exc.kind)
        raise
    except PredictionError:
        error = UpstreamErrorKind.MODEL
        raise
    finally:
        metrics.upstream_call(active.experiment.name, variant, time.perf_counter() - started, error)
