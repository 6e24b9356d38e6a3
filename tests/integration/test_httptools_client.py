"""The httptools upstream client against raw loopback servers: framing, keep-alive, and upstreams that misbehave.

tests/e2e/test_proxy_clients.py holds the contract every client honours; these are the cases a
hand-written client must get right that a library would have got right for it.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest

from router.errors import UpstreamTimeout, UpstreamUnavailable
from router.proxy.httptools_client import HttptoolsUpstreamClient

Answer = Callable[[bytes, int], Awaitable[bytes | None]]  # (request, index on its connection) -> raw answer
HEADERS = [("content-type", "application/json"), ("x-user-id", "u1")]


@asynccontextmanager
async def raw_server(answer: Answer) -> AsyncIterator[tuple[str, list[int]]]:
    """A server on 127.0.0.1 that answers each request with `answer`'s bytes (None: close without a word;
    an answer saying `connection: close` is followed by the close).

    Yields its URL and the number of requests each connection carried.
    """
    per_connection: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        per_connection.append(0)
        index = len(per_connection) - 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    (
                        int(line.split(b":")[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length")
                    ),
                    0,
                )
                request = head + await reader.readexactly(length)
                per_connection[index] += 1
                raw = await answer(request, per_connection[index])
                if raw is None:
                    break
                writer.write(raw)
                await writer.drain()
                if b"\r\nconnection: close\r\n" in raw.lower():
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield f"http://127.0.0.1:{port}/predict", per_connection


def fixed(raw: bytes) -> Answer:
    async def answer(request: bytes, index: int) -> bytes | None:
        return raw

    return answer


async def post(client: HttptoolsUpstreamClient, url: str, timeout_s: float = 2.0) -> tuple[int, bytes, str | None]:
    answer = await client.post(url, body=b'{"x": 1}', headers=HEADERS, timeout_s=timeout_s)
    return answer.status, answer.body, answer.content_type


@pytest.fixture
async def client() -> AsyncIterator[HttptoolsUpstreamClient]:
    upstream = HttptoolsUpstreamClient(max_connections=8, keepalive_s=30)
    yield upstream
    await upstream.aclose()


async def test_the_request_carries_exactly_the_given_headers_plus_host_and_length(
    client: HttptoolsUpstreamClient,
) -> None:
    seen: list[bytes] = []

    async def answer(request: bytes, index: int) -> bytes:
        seen.append(request)
        return b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"

    async with raw_server(answer) as (url, _):
        await post(client, url)
    port = url.split(":")[2].split("/")[0]
    assert seen == [
        f"POST /predict HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\ncontent-type: application/json\r\n"
        f'x-user-id: u1\r\ncontent-length: 8\r\n\r\n{{"x": 1}}'.encode()
    ]


async def test_a_chunked_answer_is_put_back_together(client: HttptoolsUpstreamClient) -> None:
    head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
    raw = head + b'4\r\n{"a"\r\n3\r\n: 1\r\n1\r\n}\r\n0\r\n\r\n'
    async with raw_server(fixed(raw)) as (url, _):
        assert await post(client, url) == (200, b'{"a": 1}', "application/json")


async def test_an_answer_without_a_length_ends_when_the_upstream_closes(client: HttptoolsUpstreamClient) -> None:
    raw = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nconnection: close\r\n\r\nall of it"
    async with raw_server(fixed(raw)) as (url, _):
        assert await post(client, url) == (200, b"all of it", "text/plain")


async def test_connections_are_kept_alive_and_reused(client: HttptoolsUpstreamClient) -> None:
    async with raw_server(fixed(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")) as (url, per_connection):
        for _ in range(5):
            assert (await post(client, url))[0] == 200
    assert per_connection == [5]


async def test_a_pooled_connection_the_upstream_closed_is_replaced_without_failing_the_call(
    client: HttptoolsUpstreamClient,
) -> None:
    async def one_per_connection(request: bytes, index: int) -> bytes | None:
        # answers keep-alive, then drops the connection when it is reused (an idle timeout on its side)
        return b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}" if index == 1 else None

    async with raw_server(one_per_connection) as (url, per_connection):
        assert (await post(client, url))[0] == 200
        assert (await post(client, url))[0] == 200
    assert per_connection == [2, 1]


async def test_a_connection_closed_before_any_answer_on_a_new_connection_is_a_502(
    client: HttptoolsUpstreamClient,
) -> None:
    async def nothing(request: bytes, index: int) -> None:
        return None

    async with raw_server(nothing) as (url, per_connection):
        with pytest.raises(UpstreamUnavailable, match="connection lost"):
            await post(client, url)
    assert per_connection == [1]  # a new connection is not retried: the upstream may have acted on the call


@pytest.mark.parametrize(
    ("encoding", "compress"),
    [
        pytest.param("gzip", lambda b: zlib.compress(b, wbits=31), id="gzip"),
        pytest.param("deflate", zlib.compress, id="deflate"),
    ],
)
async def test_an_encoded_answer_is_decoded(
    client: HttptoolsUpstreamClient, encoding: str, compress: Callable[[bytes], bytes]
) -> None:
    body = compress(b'{"predictions": [1]}' * 20)
    raw = f"HTTP/1.1 200 OK\r\ncontent-encoding: {encoding}\r\ncontent-length: {len(body)}\r\n\r\n".encode() + body
    async with raw_server(fixed(raw)) as (url, _):
        assert (await post(client, url))[1] == b'{"predictions": [1]}' * 20


async def test_an_answer_in_an_encoding_it_cannot_decode_is_a_502(client: HttptoolsUpstreamClient) -> None:
    raw = b"HTTP/1.1 200 OK\r\ncontent-encoding: br\r\ncontent-length: 3\r\n\r\nabc"
    async with raw_server(fixed(raw)) as (url, _):
        with pytest.raises(UpstreamUnavailable, match="Content-Encoding 'br'"):
            await post(client, url)


async def test_an_answer_that_is_not_http_is_a_502(client: HttptoolsUpstreamClient) -> None:
    async with raw_server(fixed(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")) as (url, _):
        with pytest.raises(UpstreamUnavailable, match="invalid HTTP answer"):
            await post(client, url)


async def test_an_interim_100_continue_is_skipped_for_the_real_answer(client: HttptoolsUpstreamClient) -> None:
    raw = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\n{}"
    async with raw_server(fixed(raw)) as (url, _):
        assert await post(client, url) == (201, b"{}", None)


async def test_an_upstream_that_never_answers_is_a_timeout_and_its_connection_is_not_reused(
    client: HttptoolsUpstreamClient,
) -> None:
    async def late(request: bytes, index: int) -> bytes:
        await asyncio.sleep(0.5 if index == 1 else 0)
        return b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"

    async with raw_server(late) as (url, per_connection):
        with pytest.raises(UpstreamTimeout):
            await post(client, url, timeout_s=0.1)
        assert (await post(client, url))[0] == 200
    assert per_connection == [1, 1]


async def test_a_header_with_a_line_break_is_never_sent(client: HttptoolsUpstreamClient) -> None:
    async with raw_server(fixed(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")) as (url, per_connection):
        with pytest.raises(UpstreamUnavailable, match="line break"):
            await client.post(url, body=b"{}", headers=[("x-a", "1\r\nx-injected: 1")], timeout_s=1)
    assert per_connection == []


async def test_a_call_waiting_for_a_free_connection_times_out_at_its_own_deadline() -> None:
    async def slow(request: bytes, index: int) -> bytes:
        await asyncio.sleep(0.6)
        return b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"

    one_connection = HttptoolsUpstreamClient(max_connections=1, keepalive_s=30)
    try:
        async with raw_server(slow) as (url, _):
            first = asyncio.create_task(post(one_connection, url, timeout_s=2.0))
            await asyncio.sleep(0.05)  # the first call holds the only connection
            started = asyncio.get_running_loop().time()
            with pytest.raises(UpstreamTimeout):
                await post(one_connection, url, timeout_s=0.2)
            waited = asyncio.get_running_loop().time() - started
            assert 0.15 < waited < 0.5
            assert (await first)[0] == 200
    finally:
        await one_connection.aclose()


async def test_the_deadline_covers_connect_send_and_read_together() -> None:
    async def just_in_time(request: bytes, index: int) -> bytes:
        await asyncio.sleep(0.15)
        return b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"

    upstream = HttptoolsUpstreamClient(max_connections=4, keepalive_s=30)
    try:
        async with raw_server(just_in_time) as (url, _):
            assert (await post(upstream, url, timeout_s=1.0))[0] == 200
            with pytest.raises(UpstreamTimeout, match=r"within 0\.1 s"):
                await post(upstream, url, timeout_s=0.1)
    finally:
        await upstream.aclose()
