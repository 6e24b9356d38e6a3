"""`UpstreamClient` on httpx, or on httpx2 (Pydantic's continuation of httpx, the same API).

The one module where their exceptions are translated.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from types import ModuleType
from typing import Any

import httpx

from router.errors import UpstreamTimeout, UpstreamUnavailable
from router.proxy.base import UpstreamResponse


class HttpxUpstreamClient:
    """One shared `AsyncClient` over HTTP/1.1; tests may pass `transport=httpx.ASGITransport(app=...)`.

    `library` is the `httpx` module (default) or `httpx2`, whose API is the same.
    """

    def __init__(
        self,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        max_connections: int = 512,
        keepalive_s: float = 30.0,
        library: ModuleType = httpx,
    ) -> None:
        self._library = library
        limits = library.Limits(
            max_connections=max_connections,
            max_keepalive_connections=max_connections,
            keepalive_expiry=keepalive_s,
        )
        # Redirects are not followed and cookies not kept: a gateway forwards, it does not browse.
        self._client: Any = library.AsyncClient(
            transport=transport, limits=limits, http1=True, http2=False, follow_redirects=False, trust_env=False
        )
        # httpx adds Accept, Accept-Encoding, Connection and User-Agent of its own; the upstream
        # must see the caller's headers only (and an Accept-Encoding we did not ask for would
        # make the upstream compress bodies we then have to decode).
        for name in list(self._client.headers):
            del self._client.headers[name]
        self._timeouts: dict[float, Any] = {}

    async def post(
        self, url: str, *, body: bytes, headers: Iterable[tuple[str, str]], timeout_s: float
    ) -> UpstreamResponse:
        """Send one call; the whole exchange (connect, send, read) must finish within `timeout_s`."""
        started = time.perf_counter()
        timeout = self._timeouts.get(timeout_s)
        if timeout is None:  # one per distinct variant timeout, so a handful at most
            timeout = self._timeouts.setdefault(timeout_s, self._library.Timeout(timeout_s))
        try:
            # httpx's timeouts bound each phase; this bounds the whole exchange
            async with asyncio.timeout(timeout_s):
                # bytes: ASGI gave header values as latin-1 text; the upstream gets the caller's exact bytes
                raw = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers]
                response = await self._client.post(url, content=body, headers=raw, timeout=timeout)
        except (TimeoutError, self._library.TimeoutException):
            raise UpstreamTimeout(f"{url} did not answer within {timeout_s:g} s") from None
        except (self._library.HTTPError, self._library.InvalidURL) as exc:
            raise UpstreamUnavailable(f"{url}: {type(exc).__name__}: {exc or 'connection failed'}") from None
        return UpstreamResponse(
            status=response.status_code,
            body=response.content,
            content_type=response.headers.get("content-type"),
            elapsed_s=time.perf_counter() - started,
        )

    async def aclose(self) -> None:
        await self._client.aclose()
