"""The seam to remote model servers: one shared, pooled async HTTP client per process.

`UpstreamClient` is the interface; four implementations sit behind it, chosen by
`ABROUTER_UPSTREAM_CLIENT` (docs/performance.md has the measurements behind the default).
Each translates its library's exceptions in its own module: a timeout becomes `UpstreamTimeout`,
a refused, reset or broken connection `UpstreamUnavailable`. Tests pass an httpx `transport=`
(for instance `httpx.ASGITransport(app=fake_model)`); end-to-end tests use real servers on loopback.
"""

from __future__ import annotations

import httpx

from router.errors import RouterError
from router.proxy.base import (
    HOP_BY_HOP,
    UpstreamClient,
    UpstreamResponse,
    decodable_accept_encoding,
)
from router.settings import UpstreamClientKind

__all__ = [
    "HOP_BY_HOP",
    "UpstreamClient",
    "UpstreamResponse",
    "decodable_accept_encoding",
    "open_upstream_client",
]


def open_upstream_client(
    kind: UpstreamClientKind,
    *,
    max_connections: int,
    keepalive_s: float,
    transport: httpx.AsyncBaseTransport | None = None,
) -> UpstreamClient:
    """The client of the chosen library; call it inside the running event loop (aiohttp insists).

    An httpx `transport` (the in-process test seam) always means the httpx client, whatever `kind`.
    """
    # Imported here so that only the chosen library is loaded.
    if kind == "httpx" or transport is not None:
        from router.proxy.httpx_client import HttpxUpstreamClient

        return HttpxUpstreamClient(transport=transport, max_connections=max_connections, keepalive_s=keepalive_s)
    if kind == "httpx2":
        from router.proxy.httpx_client import HttpxUpstreamClient

        try:
            import httpx2
        except ModuleNotFoundError:
            raise RouterError("ABROUTER_UPSTREAM_CLIENT=httpx2 needs the httpx2 package: pip install httpx2") from None
        return HttpxUpstreamClient(library=httpx2, max_connections=max_connections, keepalive_s=keepalive_s)
    if kind == "httptools":
        from router.proxy.httptools_client import HttptoolsUpstreamClient

        return HttptoolsUpstreamClient(max_connections=max_connections, keepalive_s=keepalive_s)
    from router.proxy.aiohttp_client import AiohttpUpstreamClient

    return AiohttpUpstreamClient(max_connections=max_connections, keepalive_s=keepalive_s)
