"""What every upstream client takes and gives, and which request headers may travel upstream."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Protocol

# RFC 9110 section 7.6.1 hop-by-hop headers, plus those the client library must compute itself.
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
    """What a remote model server answered, passed back to the caller unchanged.

    The body is decoded from any `Content-Encoding` the upstream applied, since the encoding
    header itself is not passed back.
    """

    status: int
    body: bytes
    content_type: str | None
    elapsed_s: float


class UpstreamClient(Protocol):
    """POSTs prediction calls to remote variants over one connection pool shared by all of them.

    Implementations send exactly the headers they are given (plus `Host` and `Content-Length`,
    none of the library's defaults), follow no redirects, keep no cookies, and raise only
    `UpstreamTimeout` (no answer within `timeout_s`) and `UpstreamUnavailable` (refused, reset or
    closed connection, unusable URL).
    """

    async def post(
        self, url: str, *, body: bytes, headers: Iterable[tuple[str, str]], timeout_s: float
    ) -> UpstreamResponse:
        """Send one call; the whole exchange (connect, send, read) must finish within `timeout_s`."""
        ...

    async def aclose(self) -> None:
        """Close the pool's connections; the client is not used afterwards."""
        ...
