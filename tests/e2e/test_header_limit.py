"""Real `abrouter serve`: a request line and headers over ABROUTER_MAX_HEADER_BYTES get 431 and a closed connection.

httptools buffers headers whatever their size; without the bound an endless header from an
unauthenticated caller would grow the gateway's memory without end.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import pytest

from tests.fixtures.redis import RedisServer
from tests.fixtures.servers import ServerProcess, gateway

LIMIT = 8192


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer) -> Iterator[ServerProcess]:
    process = gateway(
        tmp_path_factory.mktemp("header-limit"),
        redis_url=redis_server.url,
        env={"ABROUTER_MAX_HEADER_BYTES": str(LIMIT)},
    ).start()
    yield process
    assert process.stop() == 0


def exchange(port: int, request: bytes) -> tuple[int, bytes, bool]:
    """Send `request` in one write; the status, the body, and whether the server closed the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        client.sendall(request)
        received = b""
        while b"\r\n\r\n" not in received:
            received += client.recv(65536)
        head, _, body = received.partition(b"\r\n\r\n")
        length = int(
            next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
        )
        while len(body) < length:
            body += client.recv(65536)
        client.settimeout(2)
        try:
            closed = client.recv(1) == b""
        except TimeoutError:
            closed = False
        except ConnectionResetError:
            closed = True
    return int(head.split()[1]), body, closed


def test_an_endless_header_gets_431_and_the_connection_closed(server: ServerProcess) -> None:
    status, body, closed = exchange(server.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Junk: " + b"a" * 200_000)

    assert (status, closed) == (431, True)
    error = json.loads(body)["error"]
    assert error["code"] == "headers_too_large"
    assert error["details"] == [{"limit_bytes": LIMIT}]


def test_headers_within_the_limit_are_served(server: ServerProcess) -> None:
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * (LIMIT - 200) + b"\r\n\r\n"
    status, _, closed = exchange(server.port, request)
    assert (status, closed) == (200, False)


def test_a_large_body_sent_with_its_headers_is_no_header_overflow(server: ServerProcess) -> None:
    body = b"{" + b" " * 500_000 + b"}"
    request = (
        b"POST /v1/experiments/nothing/outcomes HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    status, _, _ = exchange(server.port, request)
    assert status == 404  # the experiment, not the headers


def test_the_limit_applies_to_each_request_of_a_keep_alive_connection(server: ServerProcess) -> None:
    """The count starts again with every request: ten requests of 4 KiB headers on one connection pass."""
    one = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * (LIMIT // 2) + b"\r\n\r\n"
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as client:
        for _ in range(10):
            client.sendall(one)
            received = b""
            while not received.endswith(b"}"):
                received += client.recv(65536)
            assert received.startswith(b"HTTP/1.1 200 ")


def read_until_closed(client: socket.socket, within_s: float = 10.0) -> bytes:
    client.settimeout(within_s)
    received = b""
    try:
        while chunk := client.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    return received


def test_endless_trailers_of_a_chunked_body_close_the_connection(server: ServerProcess) -> None:
    """Trailers are buffered like headers; no answer is due yet, so the connection is cut."""
    request = (
        b"POST /v1/experiments/nothing/outcomes HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
        b"transfer-encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\nX-Trailer: " + b"a" * 200_000
    )
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as client:
        client.sendall(request)
        received = read_until_closed(client)
    assert not received.startswith(b"HTTP/1.1 431")  # no 431 as the answer to a request being read


def test_oversized_headers_behind_a_pipelined_request_are_never_its_answer(server: ServerProcess) -> None:
    first = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    second = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Junk: " + b"a" * (LIMIT * 3)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as client:
        client.sendall(first + second)
        received = read_until_closed(client)
    assert not received.startswith(b"HTTP/1.1 431")
    assert received == b"" or received.startswith(b"HTTP/1.1 200 ")
