"""uvicorn's httptools protocol with one change: what a connection writes in one event-loop round goes out in one write.

uvicorn writes an answer's head and its body with two `transport.write()` calls, and uvloop makes
a system call for each. On loopback and on virtual machines the dear part of a write is waking
the reader: the kernel delivers the bytes and wakes the peer inside the sender's system call.
Under the benchmark's load that was 16% of the gateway's CPU, and sending each answer with one
write took 7 to 10 us off every prediction call (docs/performance.md, item 15).

`CoalescingTransport` holds the writes of a loop round and hands them to the real transport
together once the round's callbacks have run (`loop.call_soon`), or at once when they pass
`FLUSH_BYTES`, so a large streamed answer still meets the transport's flow control as before.
It flushes before it closes and when the client half-closes (uvloop closes the transport on
that EOF), and drops what is held when the connection is already gone, as the real transport
would.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any, Final

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from router.errors import HeadersTooLarge
from router.settings import Settings

#: Held bytes that are sent at once rather than at the end of the round.
FLUSH_BYTES: Final = 64 * 1024


class DelegatingTransport(asyncio.Transport):
    """A transport that hands every call to the one it wraps: the base of transports that change one thing."""

    def __init__(self, transport: asyncio.Transport) -> None:
        super().__init__()
        self._transport = transport

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._transport.write(data)

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def close(self) -> None:
        self._transport.close()

    def abort(self) -> None:
        self._transport.abort()

    def write_eof(self) -> None:
        self._transport.write_eof()

    def can_write_eof(self) -> bool:
        return self._transport.can_write_eof()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def is_reading(self) -> bool:
        return self._transport.is_reading()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._transport.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._transport.get_protocol()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._transport.get_write_buffer_limits()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._transport.set_write_buffer_limits(high, low)


class CoalescingTransport(DelegatingTransport):
    """A transport whose writes of one loop round reach the wrapped transport as one write."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(transport)
        self._loop = loop
        self._held: list[bytes] = []
        self._held_bytes = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        chunk = bytes(data)  # a memoryview's len() counts items, not bytes
        if not self._held:
            self._loop.call_soon(self.flush)
        self._held.append(chunk)
        self._held_bytes += len(chunk)
        if self._held_bytes >= FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        """Hand what is held to the wrapped transport (a no-op when nothing is, or it is closing)."""
        held, self._held, self._held_bytes = self._held, [], 0
        if held and not self._transport.is_closing():
            self._transport.write(held[0] if len(held) == 1 else b"".join(held))

    def close(self) -> None:
        try:
            self.flush()
        finally:  # closed even if the write failed: a connection must never outlive close()
            self._transport.close()

    def abort(self) -> None:
        self._held, self._held_bytes = [], 0
        self._transport.abort()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def get_write_buffer_size(self) -> int:
        return self._held_bytes + self._transport.get_write_buffer_size()


#: How long a connection refused for its headers stays open to drain what the caller still sends.
REFUSED_LINGER_S: Final = 2.0


@functools.cache
def max_header_bytes() -> int:
    """`ABROUTER_MAX_HEADER_BYTES`, read once per process (uvicorn makes the protocol, not the app)."""
    return Settings().max_header_bytes


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's `HttpToolsProtocol` writing through a `CoalescingTransport` (`abrouter serve` runs on it).

    It also bounds a request's line and headers (`max_header_bytes`): httptools buffers them
    whatever their size, so without a bound one unauthenticated caller sending an endless header
    grows the process's memory without end (uvicorn issue #157). Past the bound: 431, and the
    connection is closed.
    """

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # Flow control (pausing reads) keeps the real transport; the request cycles write through this one.
        self.transport: CoalescingTransport = CoalescingTransport(transport, self.loop)
        # Bytes received since the parser last handed over something bounded elsewhere: a complete
        # request head, or a piece of body (the body limit is the app's). What grows here is a request
        # line, headers, or chunked-body trailers (buffered like headers), none of them bounded otherwise.
        self._unparsed_bytes = 0
        self._refused = False
        self._max_header_bytes = max_header_bytes()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # read and dropped until the connection closes: unread data would reset it (below)
        self._unparsed_bytes += len(data)
        super().data_received(data)
        # Checked after parsing: a chunk that completes the headers may carry a large body too. It is
        # checked per read, so headers that arrive in few large reads can pass up to about twice the bound.
        if self._unparsed_bytes > self._max_header_bytes and not self.transport.is_closing():
            self._refuse_headers()

    def on_headers_complete(self) -> None:
        self._unparsed_bytes = 0
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self._unparsed_bytes = 0
        super().on_body(body)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._unparsed_bytes = 0

    def _refuse_headers(self) -> None:
        limit = self._max_header_bytes
        if self.cycle is not None and not self.cycle.response_complete:
            # A request is being answered (trailers of its body, or a pipelined request behind it):
            # a 431 now would be taken as that request's answer. Cut the connection instead.
            self.logger.warning("request headers or trailers over %d bytes during a request: connection closed", limit)
            self.transport.abort()
            return
        self.logger.warning("request line and headers over %d bytes: refused with 431", limit)
        body = orjson.dumps(
            HeadersTooLarge(
                f"the request line and headers are over {limit} bytes (ABROUTER_MAX_HEADER_BYTES)",
                details=[{"limit_bytes": limit}],
            ).to_json()
        )
        self.transport.write(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body
        )
        # Closing now, with the rest of the headers unread, would send a reset that can destroy the
        # answer before the caller reads it. Instead: end our side, drop what still comes, close soon.
        self._refused = True
        self.transport.write_eof()
        self.loop.call_later(REFUSED_LINGER_S, self.transport.close)

    def eof_received(self) -> None:
        # The client half-closed: uvloop closes the transport when this returns, before the end of
        # the round, so an answer written in this round must reach the socket first.
        self.transport.flush()
        super().eof_received()


#: The import string `uvicorn.run(http=...)` takes, so every worker process loads the class itself.
HTTP_PROTOCOL: Final = f"{__name__}:{CoalescingHttpToolsProtocol.__name__}"
