"""The seam to remote model servers: one shared, pooled async HTTP client.

httpx exceptions never leave this module: a timeout becomes `UpstreamTimeout`, a refused,
reset or broken connection `UpstreamUnavailable`. Tests pass `transport=` (for instance
`httpx.ASGITransport(app=fake_model)`); end-to-end tests use real servers on loopback.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

import httpx

from router.errors import UpstreamTimeout, UpstreamUnavailable

# RFC 9110 section 7.6.1 hop-by-hop headers, plus those httpx must compute itself.
HOP_BY_HOP: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)


def forwardable_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Request headers that may travel to the upstream: no hop-by-hop ones, nor those named by `Connection`."""
    pairs = list(headers)
    named_by_connection = {
        token.strip().lower() for name, value in pairs if name.lower() == "connection" for token in value.split(",")
    }
    return [(name, value) for name, value in pairs if name.lower() not in HOP_BY_HOP | named_by_connection]


@dataclass(frozen=True, slots=True)
class UpstreamResponse:
    """What a remote model server answered, passed back to the caller unchanged."""

    status: int
    body: bytes
    content_type: str | None
    elapsed_s: float


class UpstreamClient:
    """POSTs prediction calls to remote variants over one connection pool shared by all of them."""

    def __init__(
        self,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        max_connections: int = 512,
        keepalive_s: float = 30.0,
    ) -> None:
        limits = httpx.Limits(
            max_connections=max_connections,
            max_keepalive_connections=max_connections,
            keepalive_expiry=keepalive_s,
        )
        # Redirects are not followed and cookies not kept: a gateway forwards, it does not browse.
        self._client = httpx.AsyncClient(transport=transport, limits=limits, follow_redirects=False, trust_env=False)
        # httpx adds Accept, Accept-Encoding, Connection and User-Agent of its own; the upstream
        # must see the caller's headers only (and an Accept-Encoding we did not ask for would
        # make us decompress bodies that are passed through).
        for name in list(self._client.headers):
            del self._client.headers[name]

    async def post(
        self, url: str, *, body: bytes, headers: Iterable[tuple[str, str]], timeout_s: float
    ) -> UpstreamResponse:
        """Send one call; the whole exchange (connect, send, read) must finish within `timeout_s`."""
        started = time.perf_counter()
        try:
            async with asyncio.timeout(timeout_s):
                response = await self._client.post(
                    url, content=body, headers=list(headers), timeout=httpx.Timeout(timeout_s)
                )
        except (TimeoutError, httpx.TimeoutException):
            raise UpstreamTimeout(f"{url} did not answer within {timeout_s:g} s") from None
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise UpstreamUnavailable(f"{url}: {type(exc).__name__}: {exc or 'connection failed'}") from None
        return UpstreamResponse(
            status=response.status_code,
            body=response.content,
            content_type=response.headers.get("content-type"),
            elapsed_s=time.perf_counter() - started,
        )

    async def aclose(self) -> None:
        await self._client.aclose()
