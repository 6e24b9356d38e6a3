"""CoalescingTransport on real loopback sockets under uvloop, and `abrouter serve` answering on it.

The transport must send the writes of one loop round as one write, keep their order, flush what
it holds before it closes, send large writes at once, and never fail on a connection already gone.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import uvicorn
import uvloop
from starlette.types import Receive, Scope, Send

from router.http_protocol import FLUSH_BYTES, CoalescingHttpToolsProtocol, CoalescingTransport, DelegatingTransport
from router.store.embedded import free_port
from tests.e2e.conftest import write_config
from tests.e2e.test_serve import canary
from tests.fixtures.servers import ServerProcess, gateway, uvicorn_in_thread


class CountingTransport(DelegatingTransport):
    """A real uvloop transport whose writes are counted on their way through."""

    def __init__(self, transport: asyncio.Transport) -> None:
        super().__init__(transport)
        self.writes: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))
        super().write(data)


Scenario = Callable[[CoalescingTransport, CountingTransport, socket.socket], Awaitable[None]]


def run_on_socket_pair(scenario: Scenario) -> None:
    """`scenario(coalescing, counted, peer)` on uvloop, over a connected pair of loopback TCP sockets."""

    async def main() -> None:
        listener = socket.create_server(("127.0.0.1", 0))
        peer = socket.create_connection(listener.getsockname())
        ours, _ = listener.accept()
        listener.close()
        peer.settimeout(5)
        loop = asyncio.get_running_loop()
        transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, ours)
        counted = CountingTransport(transport)
        try:
            await scenario(CoalescingTransport(counted, loop), counted, peer)
        finally:
            transport.close()
            peer.close()

    uvloop.run(main())


def read_exactly(peer: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = peer.recv(size - len(data))
        assert chunk, f"connection closed after {len(data)} of {size} bytes"
        data += chunk
    return data


async def next_round() -> None:
    await asyncio.sleep(0)
    await asyncio.sleep(0)


def test_the_writes_of_one_round_reach_the_socket_as_one_write_in_order() -> None:
    async def scenario(coalescing: CoalescingTransport, counted: CountingTransport, peer: socket.socket) -> None:
        head = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"
        coalescing.write(head)
        coalescing.write(bytearray(b"ok"))
        assert counted.writes == [] and coalescing.get_write_buffer_size() == len(head) + 2
        await next_round()
        assert counted.writes == [head + b"ok"]
        coalescing.writelines([b"second ", memoryview(b"round")])
        await next_round()
        assert counted.writes[1:] == [b"second round"]
        assert read_exactly(peer, len(head) + 14) == head + b"oksecond round"

    run_on_socket_pair(scenario)


def test_writes_past_the_flush_size_go_out_at_once() -> None:
    big = b"x" * FLUSH_BYTES

    async def scenario(coalescing: CoalescingTransport, counted: CountingTransport, peer: socket.socket) -> None:
        coalescing.write(b"head")
        coalescing.write(big)
        assert counted.writes == [b"head" + big]  # not held until the end of the round
        coalescing.write(b"tail")
        await next_round()
        assert counted.writes[1:] == [b"tail"]
        assert read_exactly(peer, len(big) + 8) == b"head" + big + b"tail"

    run_on_socket_pair(scenario)


def test_close_sends_what_is_held_first_and_abort_drops_it() -> None:
    async def scenario(coalescing: CoalescingTransport, counted: CountingTransport, peer: socket.socket) -> None:
        coalescing.write(b"last words")
        coalescing.close()
        await next_round()
        assert read_exactly(peer, 10) == b"last words"
        assert peer.recv(10) == b""  # then the end of the stream

    run_on_socket_pair(scenario)

    async def aborting(coalescing: CoalescingTransport, counted: CountingTransport, peer: socket.socket) -> None:
        coalescing.write(b"never sent")
        coalescing.abort()
        await next_round()
        assert counted.writes == []

    run_on_socket_pair(aborting)


def test_what_is_held_when_the_connection_is_closed_under_it_is_dropped_without_an_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario(coalescing: CoalescingTransport, counted: CountingTransport, peer: socket.socket) -> None:
        coalescing.write(b"too late")
        counted.close()  # closed by someone else (uvicorn on a lost connection) before the round ends
        await next_round()
        assert counted.writes == []

    with caplog.at_level(logging.DEBUG):
        run_on_socket_pair(scenario)
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING]


def test_the_gateway_answers_pipelined_requests_in_order_over_one_connection(
    tmp_path: Path, redis_url: str, trained_models: dict[str, Path], started: list[ServerProcess]
) -> None:
    # Two requests in one packet: uvicorn queues the second behind the first, and both answers
    # go through the coalescing transport; they must arrive whole and in order.
    config = write_config(tmp_path / "churn.json", [canary("http://127.0.0.1:9", trained_models)])
    server = gateway(tmp_path, redis_url=redis_url, config=config)
    started.append(server.start())
    body = b'{"instances": [[12.0, 70.5, 1.0, 0.1]]}'
    request = (
        b"POST /v1/experiments/churn/predict HTTP/1.1\r\nhost: gateway\r\nx-user-id: qa-local\r\n"
        b"content-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
    )
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as connection:
        connection.sendall(request + b"GET /healthz HTTP/1.1\r\nhost: gateway\r\n\r\n")
        answers = b""
        while answers.count(b"HTTP/1.1 200 OK") < 2 or not answers.rstrip().endswith(b"}"):
            chunk = connection.recv(65536)
            assert chunk, answers
            answers += chunk
    first, second = answers.split(b"HTTP/1.1 200 OK")[1:]
    assert b"x-variant: current" in first and b'"predictions"' in first
    assert b"x-variant" not in second and b"ok" in second


async def answer_then_block(scope: Scope, receive: Receive, send: Send) -> None:
    """Answers, then keeps the event loop busy in the same step: the answer is still held meanwhile."""
    assert scope["type"] == "http"
    await receive()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})
    time.sleep(0.4)  # noqa: ASYNC251 - blocking on purpose: the FIN arrives before the round ends


@pytest.fixture
def blocking_server_port() -> Iterator[int]:
    """uvicorn on uvloop with the coalescing protocol, in a thread, serving `answer_then_block`."""
    port = free_port()
    config = uvicorn.Config(
        answer_then_block,
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http=CoalescingHttpToolsProtocol,
        lifespan="off",
        log_level="warning",
    )
    with uvicorn_in_thread(config, name="coalescing-server"):
        yield port


def test_an_answer_held_when_the_client_half_closes_is_still_sent(blocking_server_port: int) -> None:
    # The client sends its request and shuts its side while the answer is held: uvloop closes the
    # transport on that EOF, so the protocol must flush first (as plain uvicorn would have sent it).
    with socket.create_connection(("127.0.0.1", blocking_server_port), timeout=5) as client:
        client.sendall(b"GET / HTTP/1.1\r\nhost: test\r\n\r\n")
        time.sleep(0.15)
        client.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := client.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200 OK") and answer.endswith(b"\r\n\r\nok"), answer
