"""`UpstreamClient` as a small HTTP/1.1 client on asyncio protocols, parsing answers with httptools.

A gateway only ever sends one kind of request (a POST with a body it already holds) and reads
status, content type and body back; the general clients spend most of their time on what it
does not need (docs/performance.md: about 230 us of CPU per call for aiohttp, 40 us here). The
parser is httptools (llhttp, the parser uvicorn serves with), so framing (Content-Length,
chunked, close-delimited) is not hand-written. This module is where its errors are translated.

What it does: keep-alive connections pooled per origin (LIFO, idle ones closed after
`keepalive_s`), at most `max_connections` calls in flight, the whole exchange bounded by
`timeout_s`, gzip and deflate answers decoded, one retry on a fresh connection when a pooled one
turns out to have been closed by the upstream before it answered a byte. What it does not do:
HTTP/2, proxies, redirects, cookies, brotli or zstd (never offered to the upstream: see
`decodable_accept_encoding`; an upstream that sends one anyway gets a 502).
"""

from __future__ import annotations

import asyncio
import ssl
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, cast
from urllib.parse import urlsplit

import httptools

from router.errors import UpstreamTimeout, UpstreamUnavailable
from router.proxy.base import UpstreamResponse

#: Content-Encoding -> zlib window bits that decode it
DECODERS: Final = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


class _Lost(Exception):
    """The connection closed before a whole answer arrived; `answered` says whether any of it did."""

    def __init__(self, message: str, *, answered: bool) -> None:
        super().__init__(message)
        self.answered = answered


@dataclass(frozen=True, slots=True)
class Origin:
    """Where one upstream URL sends its requests, and the fixed start of each request to it."""

    scheme: str
    host: str
    port: int
    head: bytes  # request line and Host header

    @classmethod
    def parse(cls, url: str) -> Origin:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host = parts.hostname if parts.port is None else f"{parts.hostname}:{parts.port}"
        if ":" in parts.hostname:  # an IPv6 literal keeps its brackets in the Host header
            host = f"[{parts.hostname}]" + (f":{parts.port}" if parts.port is not None else "")
        head = f"POST {target} HTTP/1.1\r\nhost: {host}\r\n".encode("ascii")
        return cls(parts.scheme, parts.hostname, port, head)


class _Connection(asyncio.Protocol):
    """One keep-alive connection; it carries one exchange at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._parser = httptools.HttpResponseParser(self)
        self._answer: asyncio.Future[tuple[int, bytes, str | None, str | None]] | None = None
        self._reset()

    def _reset(self) -> None:
        self._body: list[bytes] = []
        self._content_type: str | None = None
        self._encoding: str | None = None
        self._framed = False  # Content-Length or chunked: the end of the body is known without a close
        self._started = False  # any byte of the answer arrived

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's

    def data_received(self, data: bytes) -> None:
        self._started = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(_Lost(f"invalid HTTP answer: {exc}", answered=True))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        answer = self._answer
        if answer is None or answer.done():
            return
        if self._started and not self._framed and self._status_known():
            # An answer without Content-Length or chunking ends when the upstream closes.
            answer.set_result(self._result())
            return
        why = f"{type(exc).__name__}: {exc}" if exc is not None else "closed by the upstream"
        answer.set_exception(_Lost(f"connection lost before a whole answer ({why})", answered=self._started))

    # -- httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        lowered = name.lower()
        if lowered == b"content-type":
            self._content_type = value.decode("latin-1")
        elif lowered == b"content-encoding":
            self._encoding = value.decode("latin-1").strip().lower()
        elif lowered in (b"content-length", b"transfer-encoding"):
            self._framed = True

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200:  # an interim answer (100 Continue): the real one follows
            self._reset()
            return
        answer = self._answer
        if answer is not None and not answer.done():
            answer.set_result(self._result())
        if not self._parser.should_keep_alive():
            self.close()

    # -- for the client

    async def exchange(self, request: bytes, deadline: float) -> tuple[int, bytes, str | None, str | None]:
        """Send one request and wait for its whole answer: (status, body, content type, content encoding).

        `TimeoutError` at `deadline` (event-loop time). A timer on the answer's future rather than
        `asyncio.timeout()`, which costs several times more and this runs once per proxied call.
        """
        if self.closed or self.transport is None:
            raise _Lost("the connection was closed before the request was sent", answered=False)
        self._reset()
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[tuple[int, bytes, str | None, str | None]] = loop.create_future()
        self._answer = answer
        timer = loop.call_at(deadline, _expire, answer)
        self.transport.write(request)
        try:
            return await answer
        finally:
            timer.cancel()
            self._answer = None

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _status_known(self) -> bool:
        try:
            return self._parser.get_status_code() >= 200
        except httptools.HttpParserError:
            return False

    def _result(self) -> tuple[int, bytes, str | None, str | None]:
        return self._parser.get_status_code(), b"".join(self._body), self._content_type, self._encoding

    def _fail(self, exc: Exception) -> None:
        if self._answer is not None and not self._answer.done():
            self._answer.set_exception(exc)


class HttptoolsUpstreamClient:
    """Pooled HTTP/1.1 keep-alive connections to the upstreams; create it inside the running event loop."""

    def __init__(self, *, max_connections: int = 512, keepalive_s: float = 30.0) -> None:
        self._keepalive_s = keepalive_s
        self._slots = asyncio.Semaphore(max_connections)  # calls in flight, so connections in use
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._origins: dict[str, Origin] = {}
        self._tls: ssl.SSLContext | None = None
        self._closed = False

    async def post(
        self, url: str, *, body: bytes, headers: Iterable[tuple[str, str]], timeout_s: float
    ) -> UpstreamResponse:
        """Send one call; the whole exchange (connect, send, read) must finish within `timeout_s`."""
        started = time.perf_counter()
        origin = self._origin(url)
        request = _request(origin, body, headers, url)
        deadline = asyncio.get_running_loop().time() + timeout_s
        try:
            if self._slots.locked():  # every connection busy: waiting for one counts against the deadline
                async with asyncio.timeout_at(deadline):
                    await self._slots.acquire()
            else:
                await self._slots.acquire()  # returns at once
            try:
                status, answer, content_type, encoding = await self._exchange(origin, request, url, deadline)
            finally:
                self._slots.release()
        except TimeoutError:
            raise UpstreamTimeout(f"{url} did not answer within {timeout_s:g} s") from None
        return UpstreamResponse(
            status=status,
            body=_decoded(answer, encoding, url),
            content_type=content_type,
            elapsed_s=time.perf_counter() - started,
        )

    async def aclose(self) -> None:
        self._closed = True
        for pool in self._idle.values():
            for connection in pool:
                connection.close()
        self._idle.clear()

    async def _exchange(
        self, origin: Origin, request: bytes, url: str, deadline: float
    ) -> tuple[int, bytes, str | None, str | None]:
        for attempt in range(2):
            connection, reused = await self._checkout(origin, url, deadline)
            answered = False
            try:
                answer = await connection.exchange(request, deadline)
                answered = True
            except _Lost as exc:
                # A pooled connection the upstream had already closed: the request never reached it.
                if reused and not exc.answered and attempt == 0:
                    continue
                raise UpstreamUnavailable(f"{url}: {exc}") from None
            finally:
                if not answered:  # lost, timed out or cancelled mid-exchange: its state is unknown
                    connection.close()
            self._checkin(origin, connection)
            return answer
        raise AssertionError("unreachable: the second attempt returns or raises")

    async def _checkout(self, origin: Origin, url: str, deadline: float) -> tuple[_Connection, bool]:
        key = (origin.scheme, origin.host, origin.port)
        pool = self._idle.get(key)
        now = time.monotonic()
        while pool:
            connection = pool.pop()
            if not connection.closed and now - connection.idle_since < self._keepalive_s:
                return connection, True
            connection.close()
        loop = asyncio.get_running_loop()
        tls = self._tls_context() if origin.scheme == "https" else None
        try:
            async with asyncio.timeout_at(deadline):
                _, connection = await loop.create_connection(
                    _Connection, origin.host, origin.port, ssl=tls, server_hostname=origin.host if tls else None
                )
        except OSError as exc:  # refused, unreachable, DNS failure (socket.gaierror), TLS errors
            raise UpstreamUnavailable(f"{url}: {type(exc).__name__}: {exc}") from None
        return connection, False

    def _checkin(self, origin: Origin, connection: _Connection) -> None:
        if connection.closed or self._closed:
            connection.close()
            return
        connection.idle_since = time.monotonic()
        self._idle.setdefault((origin.scheme, origin.host, origin.port), []).append(connection)

    def _origin(self, url: str) -> Origin:
        origin = self._origins.get(url)
        if origin is None:
            try:
                origin = Origin.parse(url)
            except ValueError as exc:
                raise UpstreamUnavailable(f"{url}: {exc}") from None
            if len(self._origins) < 10_000:  # URLs come from configs: a handful, but never unbounded
                self._origins[url] = origin
        return origin

    def _tls_context(self) -> ssl.SSLContext:
        if self._tls is None:
            self._tls = ssl.create_default_context()
        return self._tls


def _expire(answer: asyncio.Future[tuple[int, bytes, str | None, str | None]]) -> None:
    if not answer.done():
        answer.set_exception(TimeoutError())


def _request(origin: Origin, body: bytes, headers: Iterable[tuple[str, str]], url: str) -> bytes:
    """The bytes of one request: exactly the given headers, plus Host and Content-Length."""
    pairs = list(headers)
    lines = "".join(f"{name}: {value}\r\n" for name, value in pairs)
    # ASGI servers never deliver a line break in a header; a stray one must not split the request in two.
    if lines.count("\n") != len(pairs) or lines.count("\r") != len(pairs):
        raise UpstreamUnavailable(f"{url}: a forwarded header holds a line break")
    try:
        encoded = lines.encode("latin-1")
    except UnicodeEncodeError:
        raise UpstreamUnavailable(f"{url}: a forwarded header is not latin-1 text") from None
    return b"".join((origin.head, encoded, b"content-length: %d\r\n\r\n" % len(body), body))


def _decoded(body: bytes, encoding: str | None, url: str) -> bytes:
    """The body without the upstream's Content-Encoding, which is not passed back."""
    if not encoding or encoding == "identity" or not body:
        return body
    bits = DECODERS.get(encoding)
    if bits is None:
        raise UpstreamUnavailable(f"{url}: cannot decode an answer with Content-Encoding {encoding!r}")
    try:
        return zlib.decompress(body, bits)
    except zlib.error as exc:
        raise UpstreamUnavailable(f"{url}: a {encoding} answer that does not decode: {exc}") from None
