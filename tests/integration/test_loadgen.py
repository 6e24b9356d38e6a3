"""The benchmark's Python load generator against a deliberately slow loopback server.

The constant-rate mode must not hide queueing (coordinated omission): a server slower than the
rate still receives every scheduled request, and the latency counts the wait.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from bench.loadgen import Target, closed_loop, constant_rate

SERVICE_S = 0.02  # the server answers one request per 20 ms: 50 req/s at most


@pytest.fixture
async def slow_server() -> AsyncIterator[Target]:
    """An HTTP/1.1 server on 127.0.0.1 that takes SERVICE_S per request, one request at a time."""
    lock = asyncio.Lock()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                )
                await reader.readexactly(length)
                async with lock:
                    await asyncio.sleep(SERVICE_S)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield Target("127.0.0.1", port, "/predict")


async def test_a_constant_rate_run_sends_every_scheduled_request_and_counts_the_queueing(
    slow_server: Target,
) -> None:
    result = await constant_rate(slow_server, rate=100, connections=4, duration_s=0.5, timeout_s=5)
    assert (result.requests, result.errors) == (50, 0)
    ordered = sorted(result.latencies)
    # 50 requests due within 0.5 s, served at 50/s: the last waits about half a second
    assert ordered[-1] > 0.3
    assert ordered[0] < 0.1


async def test_a_closed_loop_run_sends_only_as_fast_as_the_server_answers(slow_server: Target) -> None:
    result = await closed_loop(slow_server, connections=1, duration_s=0.5, timeout_s=5)
    assert 10 <= result.requests <= 30
    assert result.errors == 0
    assert max(result.latencies) < 0.2


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("http://10.0.0.1:80/predict", id="private-address"),
        pytest.param("http://example.com:80/predict", id="host-name"),
        pytest.param("https://127.0.0.1:443/predict", id="https"),
    ],
)
def test_the_generator_refuses_anything_but_a_loopback_http_url(url: str) -> None:
    with pytest.raises(ValueError):
        Target.from_url(url)
