"""`UpstreamClient` on aiohttp: the one module where aiohttp exceptions are translated."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Final

import aiohttp

from router.errors import UpstreamTimeout, UpstreamUnavailable
from router.proxy.base import UpstreamResponse

#: headers aiohttp would add of its own; the upstream must see the caller's only (an Accept-Encoding
#: we did not ask for would make the upstream compress bodies we then have to decode)
AUTO_HEADERS: Final = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")

#: seconds a resolved upstream host name is reused; upstreams are configured, not user-supplied
DNS_CACHE_S: Final = 10


class AiohttpUpstreamClient:
    """One shared `aiohttp.ClientSession` over HTTP/1.1; must be created inside the running event loop."""

    def __init__(self, *, max_connections: int = 512, keepalive_s: float = 30.0) -> None:
        connector = aiohttp.TCPConnector(
            limit=max_connections, limit_per_host=0, keepalive_timeout=keepalive_s, ttl_dns_cache=DNS_CACHE_S
        )
        # No cookie jar and no redirects: a gateway forwards, it does not browse. Bodies are
        # decoded like httpx does (Content-Encoding is not passed back, so the body must not be either).
        self._session = aiohttp.ClientSession(
            connector=connector,
            skip_auto_headers=AUTO_HEADERS,
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=True,
            trust_env=False,
            raise_for_status=False,
        )
        self._timeouts: dict[float, aiohttp.ClientTimeout] = {}

    async def post(
        self, url: str, *, body: bytes, headers: Iterable[tuple[str, str]], timeout_s: float
    ) -> UpstreamResponse:
        """Send one call; the whole exchange (connect, send, read) must finish within `timeout_s`."""
        started = time.perf_counter()
        timeout = self._timeouts.get(timeout_s)
        if timeout is None:  # one per distinct variant timeout, so a handful at most
            timeout = self._timeouts.setdefault(timeout_s, aiohttp.ClientTimeout(total=timeout_s))
        try:
            async with self._session.post(
                url,
                data=body,
                headers=[(name, _as_sent(value)) for name, value in headers],
                timeout=timeout,
                allow_redirects=False,
            ) as response:
                answer = await response.read()
                status, content_type = response.status, response.headers.get("Content-Type")
        # aiohttp's own timeout errors are TimeoutError and ClientError at once: timeouts first
        except TimeoutError:
            raise UpstreamTimeout(f"{url} did not answer within {timeout_s:g} s") from None
        except aiohttp.ClientError as exc:  # refused, reset, closed, or a URL it cannot use (InvalidURL)
            raise UpstreamUnavailable(f"{url}: {type(exc).__name__}: {exc or 'connection failed'}") from None
        return UpstreamResponse(
            status=status, body=answer, content_type=content_type, elapsed_s=time.perf_counter() - started
        )

    async def aclose(self) -> None:
        await self._session.close()


def _as_sent(value: str) -> str:
    """The text whose UTF-8 encoding (what aiohttp sends) is the caller's bytes, which ASGI decoded as latin-1."""
    if value.isascii():
        return value
    try:
        return value.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return value  # not UTF-8: aiohttp cannot send these exact bytes; the upstream gets them re-encoded
