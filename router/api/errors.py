"""Exception handlers: every failure leaves the app as the same JSON error shape."""

from __future__ import annotations

import logging

from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Match

from router.api.responses import error_response
from router.errors import RouterError

log = logging.getLogger("abrouter.api")


class _HTTPError(RouterError):
    """A Starlette routing error (404 no route, 405 method) in our error shape."""

    def __init__(self, status_code: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code  # type: ignore[misc]  # per instance: routing errors vary
        self.code = code  # type: ignore[misc]


async def handle_router_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RouterError)
    return error_response(exc)


async def handle_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    error = _HTTPError(exc.status_code, code, f"{request.method} {request.url.path}: {exc.detail}")
    if exc.status_code == 405:
        return error_response(error, headers={"Allow": ", ".join(allowed_methods(request))})
    return error_response(error)


def allowed_methods(request: Request) -> list[str]:
    """Every method some route answers on this path (RFC 9110: a 405 carries `Allow`).

    Each admin method is a route of its own on a shared path, so Starlette's own header would name
    only the first route's methods; this asks every route.
    """
    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches(request.scope)
        if match is not Match.NONE:
            methods.update(getattr(route, "methods", None) or ())
    return sorted(methods)


async def handle_client_disconnect(request: Request, exc: Exception) -> Response:
    """The caller left before its body arrived: nobody reads an answer, and it is no error of the gateway's.

    Mobile clients drop calls all the time; logged as unhandled errors they would fill the logs.
    """
    log.debug("client disconnected during %s %s", request.method, request.url.path)
    return Response(status_code=499)  # never sent: the connection is gone (nginx's code for it, in logs)


async def handle_unexpected(request: Request, exc: Exception) -> Response:
    """The outermost net: a bug gives a logged 500 in our error shape, never a stack trace to the caller."""
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(_HTTPError(500, "internal_error", "internal error; see the gateway log"))


EXCEPTION_HANDLERS = {
    RouterError: handle_router_error,
    HTTPException: handle_http_exception,
    ClientDisconnect: handle_client_disconnect,
    Exception: handle_unexpected,
}
