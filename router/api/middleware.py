"""Plain ASGI middleware."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from router.api.predict import experiment_in_path
from router.api.responses import error_response
from router.errors import PayloadTooLarge


class BodyLimitMiddleware:
    """Refuse request bodies over `max_bytes` with 413, whether or not `Content-Length` is sent.

    A declared length over the limit is refused before reading; a streamed body is counted as
    it arrives and the endpoint reading it gets `PayloadTooLarge`, rendered by the error handler.
    """

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                if value.isdigit() and int(value) > self.max_bytes:
                    await error_response(self._too_large())(scope, receive, send)
                    return
                break
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise self._too_large()
            return message

        await self.app(scope, counting_receive, send)

    def _too_large(self) -> PayloadTooLarge:
        return PayloadTooLarge(f"request body over the limit of {self.max_bytes} bytes (ABROUTER_MAX_BODY_BYTES)")


class PredictFastPath:
    """Send `POST /v1/experiments/{name}/predict` straight to its endpoint; everything else goes on through Starlette.

    Listed first, it runs right inside Starlette's outermost error middleware (a bug still gives a
    logged 500) and before the body limit, the exception middleware and the router, none of which
    the predict endpoint needs: it enforces the body limit and renders its errors itself. A request
    under a `root_path` (a mounted app) takes the ordinary route, which serves the same endpoint.
    """

    def __init__(self, app: ASGIApp, *, endpoint: ASGIApp) -> None:
        self.app = app
        self.endpoint = endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and not scope.get("root_path"):
            name = experiment_in_path(scope["path"])
            if name is not None:
                scope["path_params"] = {"name": name}
                await self.endpoint(scope, receive, send)
                return
        await self.app(scope, receive, send)
