"""Every `UpstreamClient` implementation honours the same proxy contract, against real loopback upstreams.

aiohttp has no in-process transport like `httpx.ASGITransport`, so all three kinds talk to a
real uvicorn (or a raw socket server that misbehaves) on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import socket
import struct
import threading
import time
from collections.abc import Iterator
from typing import Final, get_args

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.testclient import TestClient

from router.settings import UpstreamClientKind
from router.store.embedded import free_port
from tests.e2e.conftest import GatewayFactory, echo_upstream, experiment
from tests.fixtures.servers import uvicorn_in_thread

KINDS: Final = [pytest.param(kind, id=kind) for kind in get_args(UpstreamClientKind)]
GZIPPED_TEXT: Final = b'{"predictions": [1]}' * 50


def loopback_app() -> Starlette:
    """The e2e echo upstream, plus a slow route, one that answers gzip-encoded and one br-encoded when offered."""

    async def slow(request: Request) -> Response:
        await asyncio.sleep(2.0)
        return Response(b"{}", media_type="application/json")

    async def gzipped(request: Request) -> Response:
        return Response(
            gzip.compress(GZIPPED_TEXT), media_type="application/json", headers={"Content-Encoding": "gzip"}
        )

    async def brotli_when_offered(request: Request) -> Response:
        offered = request.headers.get("accept-encoding")
        if offered is not None and "br" in offered:
            return Response(b"\x8b\x02\x80not-really-brotli", headers={"Content-Encoding": "br"})
        return JSONResponse({"accept-encoding": offered})

    return Starlette(
        routes=[
            Route("/slow", slow, methods=["POST"]),
            Route("/gzip", gzipped, methods=["POST"]),
            Route("/brotli", brotli_when_offered, methods=["POST"]),
            Mount("/", echo_upstream(name="loopback")),
        ]
    )


@pytest.fixture(scope="module")
def upstream_url() -> Iterator[str]:
    """A real uvicorn on a free loopback port, in a thread, for the whole module."""
    port = free_port()
    config = uvicorn.Config(loopback_app(), host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    with uvicorn_in_thread(config, name="loopback-upstream"):
        yield f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def closing_url() -> Iterator[str]:
    """A server that reads the request and closes the connection without a word (reset by peer)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.1)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(1.0)
                with contextlib.suppress(OSError):
                    conn.recv(65536)
                # linger 0: close with RST, as a crashed model server would
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    thread = threading.Thread(target=serve, name="closing-upstream", daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    thread.join(5)
    listener.close()


def start(gateway: GatewayFactory, kind: str, url_a: str, url_b: str | None = None, **fields: object) -> TestClient:
    """A gateway on the `kind` client whose experiment forces unit `u` to variant `b` (url_b, else url_a)."""
    variants = [
        {"name": "a", "weight": 1, "url": url_a},
        {"name": "b", "weight": 1, "url": url_b or url_a, "timeout_s": 0.3},
    ]
    exp = experiment(**{"force": {"u": "b"}, "fallback": "none", "variants": variants, **fields})
    client = gateway([exp], upstream="network", settings={"upstream_client": kind})
    # The caller sends only the headers each test names: what the upstream sees is then exact.
    for name in list(client.headers):
        del client.headers[name]
    return client


@pytest.mark.parametrize("kind", KINDS)
def test_the_upstream_sees_the_callers_end_to_end_headers_and_none_of_the_clients_own(
    gateway: GatewayFactory, upstream_url: str, kind: str
) -> None:
    client = start(gateway, kind, f"{upstream_url}/a")
    response = client.post(
        "/v1/experiments/exp/predict",
        content=b'{"x": 1}',
        headers={
            "X-User-Id": "u",
            "Authorization": "Bearer model-token",
            "Connection": "keep-alive, X-Drop-Me",
            "X-Drop-Me": "1",
            "TE": "trailers",
            "Content-Type": "application/json",
        },
    )
    seen = response.json()["headers"]
    assert set(seen) == {"host", "content-length", "x-user-id", "authorization", "content-type", "x-request-id"}
    assert seen["authorization"] == "Bearer model-token"
    assert seen["content-type"] == "application/json"
    assert seen["content-length"] == "8"
    assert response.json()["body"] == '{"x": 1}'


@pytest.mark.parametrize("kind", KINDS)
def test_a_callers_accept_and_user_agent_headers_are_forwarded_as_they_are(
    gateway: GatewayFactory, upstream_url: str, kind: str
) -> None:
    client = start(gateway, kind, f"{upstream_url}/a")
    response = client.post(
        "/v1/experiments/exp/predict",
        content=b"{}",
        headers={"X-User-Id": "u", "User-Agent": "shop/1.0", "Accept": "application/json"},
    )
    seen = response.json()["headers"]
    assert (seen["user-agent"], seen["accept"]) == ("shop/1.0", "application/json")
    assert "accept-encoding" not in seen


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("accepted", "offered"),
    [("gzip, deflate, br, zstd", "gzip, deflate"), ("br;q=1.0, gzip;q=0.5", "gzip;q=0.5"), ("br, *", "identity")],
)
def test_the_upstream_is_offered_only_the_codings_the_gateway_decodes(
    gateway: GatewayFactory, upstream_url: str, kind: str, accepted: str, offered: str
) -> None:
    # /brotli answers br-encoded whenever br is offered: passing the caller's header on made that a 502.
    client = start(gateway, kind, f"{upstream_url}/a", f"{upstream_url}/brotli")
    response = client.post(
        "/v1/experiments/exp/predict", content=b"{}", headers={"X-User-Id": "u", "Accept-Encoding": accepted}
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"accept-encoding": offered}


@pytest.mark.parametrize("kind", KINDS)
def test_the_upstream_status_body_and_content_type_come_back_unchanged(
    gateway: GatewayFactory, upstream_url: str, kind: str
) -> None:
    client = start(gateway, kind, f"{upstream_url}/a", f"{upstream_url}/teapot")
    response = client.post("/v1/experiments/exp/predict", content=b"{}", headers={"X-User-Id": "u"})
    assert (response.status_code, response.text) == (418, "short and stout")
    assert response.headers["content-type"] == "text/plain; charset=utf-8"


@pytest.mark.parametrize("kind", KINDS)
def test_a_gzip_encoded_upstream_answer_comes_back_decoded(
    gateway: GatewayFactory, upstream_url: str, kind: str
) -> None:
    client = start(gateway, kind, f"{upstream_url}/a", f"{upstream_url}/gzip")
    response = client.post(
        "/v1/experiments/exp/predict", content=b"{}", headers={"X-User-Id": "u", "Accept-Encoding": "gzip"}
    )
    assert "content-encoding" not in response.headers
    assert response.content == GZIPPED_TEXT


@pytest.mark.parametrize("kind", KINDS)
def test_a_slow_upstream_is_a_504_after_the_variants_timeout(
    gateway: GatewayFactory, upstream_url: str, kind: str
) -> None:
    client = start(gateway, kind, f"{upstream_url}/a", f"{upstream_url}/slow")
    started = time.monotonic()
    response = client.post("/v1/experiments/exp/predict", content=b"{}", headers={"X-User-Id": "u"})
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "upstream_timeout"
    assert time.monotonic() - started < 1.5


@pytest.mark.parametrize("kind", KINDS)
def test_a_refused_connection_is_a_502(gateway: GatewayFactory, upstream_url: str, kind: str) -> None:
    client = start(gateway, kind, f"{upstream_url}/a", f"http://127.0.0.1:{free_port()}/predict")
    response = client.post("/v1/experiments/exp/predict", content=b"{}", headers={"X-User-Id": "u"})
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_unavailable"


@pytest.mark.parametrize("kind", KINDS)
def test_a_connection_closed_without_an_answer_is_a_502(
    gateway: GatewayFactory, upstream_url: str, closing_url: str, kind: str
) -> None:
    client = start(gateway, kind, f"{upstream_url}/a", f"{closing_url}/predict")
    response = client.post("/v1/experiments/exp/predict", content=b"{}", headers={"X-User-Id": "u"})
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_unavailable"


@pytest.mark.parametrize("kind", KINDS)
def test_a_failing_variant_falls_back_to_control_on_every_client(
    gateway: GatewayFactory, upstream_url: str, kind: str
) -> None:
    client = start(gateway, kind, f"{upstream_url}/a", f"http://127.0.0.1:{free_port()}/predict", fallback="control")
    response = client.post("/v1/experiments/exp/predict", content=b"{}", headers={"X-User-Id": "u"})
    assert response.status_code == 200
    assert (response.headers["x-variant"], response.headers["x-assignment"]) == ("a", "fallback")
    assert response.json()["path"] == "/a"


@pytest.mark.parametrize("kind", KINDS)
def test_many_concurrent_calls_share_the_pool_and_all_succeed(
    gateway: GatewayFactory, upstream_url: str, kind: str
) -> None:
    client = start(gateway, kind, f"{upstream_url}/a")

    def call(i: int) -> int:
        return client.post("/v1/experiments/exp/predict", content=b"{}", headers={"X-User-Id": f"u{i}"}).status_code

    threads_results: list[int] = []
    lock = threading.Lock()

    def worker(offset: int) -> None:
        for i in range(offset, offset + 25):
            status = call(i)
            with lock:
                threads_results.append(status)

    workers = [threading.Thread(target=worker, args=(n * 25,)) for n in range(4)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join(30)
    assert threads_results == [200] * 100
