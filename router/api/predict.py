"""POST /v1/experiments/{name}/predict: assign the caller's unit a variant and serve the call with it.

The gateway's hot path, so it is a plain ASGI app rather than a Starlette endpoint (docs/performance.md
has the profile behind this): the raw headers are decoded once, the body is forwarded as bytes and
parsed only by a local variant or a `json:` unit, and the answer goes out as two ASGI messages.
`PredictFastPath` (router/api/middleware.py) sends predict calls here ahead of Starlette's routing;
the route table holds the same endpoint, so the rest of Starlette (405s, the OpenAPI walk) sees it too.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Sequence
from typing import Final

import orjson
from starlette.types import Receive, Scope, Send

from router.api.units import unit_id_of
from router.assignment.assign import Assignment, Reason, assign
from router.errors import ModelOverloaded, PayloadTooLarge, PredictionError, RouterError, UpstreamError
from router.live_config import ActiveExperiment
from router.metrics import NO_VARIANT, REJECTED, Metrics, UpstreamErrorKind
from router.proxy import HOP_BY_HOP, decodable_accept_encoding
from router.services import Services
from router.variants.base import PredictCall, VariantResponse

MAX_REQUEST_ID_LENGTH: Final = 128
JSON: Final = "application/json"
PATH_PREFIX: Final = "/v1/experiments/"
PATH_SUFFIX: Final = "/predict"

RawHeaders = Sequence[tuple[bytes, bytes]]


class ClientDisconnected(Exception):
    """The caller went away before its body arrived: there is nobody to answer."""


def experiment_in_path(path: str) -> str | None:
    """The `{name}` of a predict path (one non-empty segment, like Starlette's `{name}`); None for other paths."""
    if path.startswith(PATH_PREFIX) and path.endswith(PATH_SUFFIX):
        name = path[len(PATH_PREFIX) : -len(PATH_SUFFIX)]
        if name and "/" not in name:
            return name
    return None


class RequestIds:
    """New request ids, 32 hex digits like a uuid4's, without a system call each: a random prefix and a counter.

    The 64-bit prefix is drawn per process (again in a forked child), so ids of different
    processes and replicas differ; the counter makes those of one process differ.
    """

    def __init__(self) -> None:
        self._reseed()
        os.register_at_fork(after_in_child=self._reseed)

    def _reseed(self) -> None:
        self._prefix = os.urandom(8).hex()
        self._counter = itertools.count()

    def new(self) -> str:
        return f"{self._prefix}{next(self._counter) & 0xFFFFFFFFFFFFFFFF:016x}"


_request_ids: Final = RequestIds()


def request_id_of(supplied: str | None) -> str:
    """The caller's `X-Request-Id` when it is a sane token, else a new one (ids end up in logs)."""
    if supplied and len(supplied) <= MAX_REQUEST_ID_LENGTH and supplied.isascii() and supplied.isprintable():
        return supplied
    return _request_ids.new()


def read_headers(raw: RawHeaders) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """One pass over the ASGI headers: (name -> first value, the headers to forward upstream).

    Forwarded are the end-to-end headers: not hop-by-hop ones, nor those named by `Connection`,
    nor the caller's `X-Request-Id` (the call's own id is added in its place); `Accept-Encoding`
    keeps only the codings the gateway decodes (`decodable_accept_encoding`).
    """
    first: dict[str, str] = {}
    forwarded: list[tuple[str, str]] = []
    for name_bytes, value_bytes in raw:
        name, value = name_bytes.decode("latin-1"), value_bytes.decode("latin-1")
        if name not in first:
            first[name] = value
        if name in HOP_BY_HOP or name == "x-request-id":
            continue
        if name == "accept-encoding":
            value = decodable_accept_encoding(value)
        forwarded.append((name, value))
    if "connection" in first:
        named = {
            token.strip().lower()
            for name, value in ((n.decode("latin-1"), v.decode("latin-1")) for n, v in raw)
            if name == "connection"
            for token in value.split(",")
        }
        forwarded = [(name, value) for name, value in forwarded if name not in named]
    return first, forwarded


async def read_body(receive: Receive, max_bytes: int) -> bytes:
    """The whole request body; `PayloadTooLarge` as soon as it passes `max_bytes` (a chunked body has no length)."""
    chunks: list[bytes] = []
    size = 0
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > max_bytes:
            raise too_large(max_bytes)
        chunks.append(chunk)
        more = message.get("more_body", False)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def too_large(max_bytes: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"request body over the limit of {max_bytes} bytes (ABROUTER_MAX_BODY_BYTES)")


def declared_too_large(headers: dict[str, str], max_bytes: int) -> bool:
    """Whether `Content-Length` already says the body is over the limit, so it need not be read."""
    length = headers.get("content-length")
    return length is not None and length.isdigit() and int(length) > max_bytes


async def respond(
    send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes, content_type: str | None
) -> None:
    """Send the answer as Starlette's `Response` would: our headers, then length and content type."""
    if status >= 200 and status not in (204, 304):
        headers.append((b"content-length", str(len(body)).encode()))
    if content_type is not None:
        headers.append((b"content-type", content_type.encode("latin-1")))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def respond_error(send: Send, error: RouterError, headers: list[tuple[bytes, bytes]]) -> None:
    await respond(send, error.status_code, headers, orjson.dumps(error.to_json()), JSON)


class PredictEndpoint:
    """The predict route as an ASGI app; it enforces `max_body_bytes` itself, as it skips the body-limit middleware."""

    def __init__(self, *, max_body_bytes: int) -> None:
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Thin on purpose: read, assign, call the variant (falling back to control), record, answer, mirror."""
        started = time.perf_counter()
        services: Services = scope["app"].state.services
        headers, forwarded = read_headers(scope["headers"])
        try:
            if declared_too_large(headers, self.max_body_bytes):
                raise too_large(self.max_body_bytes)  # as the body-limit middleware: before reading, no headers
            active = services.live.get(scope["path_params"]["name"])  # unknown experiments are not counted: no label
        except RouterError as exc:
            await respond_error(send, exc, [])
            return
        experiment = active.experiment
        request_id = request_id_of(headers.get("x-request-id"))
        forwarded.append(("x-request-id", request_id))
        answer_headers = [
            (b"x-experiment", experiment.name.encode()),
            (b"x-config-version", str(active.version).encode()),
            (b"x-request-id", request_id.encode()),
        ]
        variant, reason = NO_VARIANT, REJECTED
        unit: str | None = None
        assignment: Assignment | None = None
        served: Assignment | None = None
        content_type: str | None
        try:
            call = PredictCall(
                body=await read_body(receive, self.max_body_bytes), headers=forwarded, request_id=request_id
            )
            unit = unit_id_of(experiment.unit, headers=headers, query_string=scope["query_string"], call=call)
            sticky = await services.sticky.lookup(experiment, unit)  # None when not sticky or Redis is away
            assignment = assign(experiment, unit, override=headers.get("x-variant") or None, sticky=sticky)
            variant, reason = assignment.variant, assignment.reason
            answer, served = await call_with_fallback(active, assignment, call, services.metrics)
        except ClientDisconnected:
            return
        except RouterError as exc:
            status, body, content_type = exc.status_code, orjson.dumps(exc.to_json()), JSON
        else:
            variant, reason = served.variant, served.reason
            status, body, content_type = answer.status, answer.body, answer.content_type
        if assignment is not None:
            answer_headers += [(b"x-variant", variant.encode()), (b"x-assignment", reason.encode())]
        services.metrics.request(experiment.name, variant, reason, status, time.perf_counter() - started)
        # Queued, never awaited: the exposure and the request, error and latency counts of the report.
        services.events.record_call(
            experiment,
            active.version,
            unit,
            assignment,
            served,
            status=status,
            elapsed_s=time.perf_counter() - started,
        )
        await respond(send, status, answer_headers, body, content_type)
        if experiment.shadow is not None and assignment is not None:
            # Only once the answer is sent, so the mirror can neither delay nor change it.
            services.shadow.mirror(active, call, unit_id=unit, assigned=assignment.variant, served=variant)


async def call_with_fallback(
    active: ActiveExperiment, assignment: Assignment, call: PredictCall, metrics: Metrics
) -> tuple[VariantResponse, Assignment]:
    """Serve the call with the assigned variant; if it fails and the experiment allows, with control.

    Failures are timeouts, unreachable upstreams, 5xx answers and local models that raise or are
    overloaded; a caller's bad input (4xx) is never retried on control.
    """
    experiment = active.experiment
    failure: RouterError | None = None
    try:
        answer = await call_variant(active, assignment.variant, call, metrics)
    except (UpstreamError, PredictionError, ModelOverloaded) as exc:
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
    except (PredictionError, ModelOverloaded):
        error = UpstreamErrorKind.MODEL
        raise
    finally:
        metrics.upstream_call(active.experiment.name, variant, time.perf_counter() - started, error)
