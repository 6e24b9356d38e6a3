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


#: The content codings every upstream client decodes (RFC 9110 section 8.4.1); upstreams are offered no other.
DECODED_CODINGS: Final = frozenset({"gzip", "deflate"})


def decodable_accept_encoding(value: str) -> str:
    """The caller's `Accept-Encoding` with only the codings the gateway decodes, or `identity` when none is left.

    The gateway is the upstream's client: it decodes the answer and passes the body back without
    its `Content-Encoding`. A coding the caller accepts but the gateway does not decode (br, zstd,
    `*`, and x-gzip, which not every client knows) must not be offered, or an upstream that picks
    it turns a good call into a 502. Entries with `q=0` refuse their coding and are dropped too.
    """
    kept = []
    for item in value.split(","):
        coding, _, parameters = item.partition(";")
        if coding.strip().lower() in DECODED_CODINGS and not _refused(parameters):
            kept.append(item.strip())
    return ", ".join(kept) or "identity"


def _refused(parameters: str) -> bool:
    """Whether an Accept-Encoding entry's parameters give it a weight of 0 (`gzip;q=0`: not acceptable)."""
    for parameter in parameters.split(";"):
        name, _, weight = parameter.partition("=")
        if name.strip().lower() == "q":
            try:
                return float(weight) == 0.0
            except ValueError:
                return False
    return False


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
