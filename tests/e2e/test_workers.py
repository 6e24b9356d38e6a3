"""Real `abrouter serve --workers 2`: each worker accepts from a socket of its own, so connections spread over both.

Which process holds which socket is read from Linux's /proc (the sockets of /proc/net/tcp by
inode, and each process's file descriptors), the way `ss -p` finds them.
"""

from __future__ import annotations

import os
import pickle
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from uvicorn.config import STARTUP_FAILURE

from router.workers import WorkerSockets, bind_reuse_port, free_port_on
from tests.fixtures.servers import ROOT, ServerProcess, gateway

LISTEN, ESTABLISHED = "0A", "01"
CONNECTIONS = 64

pytestmark = pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads Linux's /proc")


def sockets_on(port: int) -> dict[int, str]:
    """Inode -> TCP state of every IPv4 socket whose local port is `port`."""
    found: dict[int, str] = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].rsplit(":", 1)[1], 16) == port:
            found[int(fields[9])] = fields[3]
    return found


def socket_inodes(pid: int) -> set[int]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[len("socket:[") : -1]))
    return inodes


def worker_pids(parent: int) -> list[int]:
    """The uvicorn workers of `parent`: its children started by multiprocessing's spawn (not its resource tracker)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if ppid == parent and b"spawn_main" in command:
            pids.append(int(entry.name))
    return sorted(pids)


def held_by(pids: list[int], port: int, state: str) -> dict[int, int]:
    """How many sockets on `port` in `state` each process holds."""
    on_port = sockets_on(port)
    return {pid: sum(1 for inode in socket_inodes(pid) if on_port.get(inode) == state) for pid in pids}


@pytest.fixture
def two_workers(tmp_path: Path, redis_url: str) -> Iterator[tuple[ServerProcess, list[int]]]:
    server = gateway(tmp_path, redis_url=redis_url, workers=2).start()
    try:
        assert server.process is not None
        deadline = time.monotonic() + 30
        while True:  # healthy means one worker is up; wait for both to listen
            workers = worker_pids(server.process.pid)
            if len(workers) == 2 and all(held_by(workers, server.port, LISTEN).values()):
                break
            assert time.monotonic() < deadline, f"workers {workers} not listening within 30 s"
            time.sleep(0.1)
        yield server, workers
    finally:
        assert server.stop() == 0


def test_each_worker_listens_on_a_socket_of_its_own_and_the_parent_on_none(
    two_workers: tuple[ServerProcess, list[int]],
) -> None:
    server, workers = two_workers
    assert server.process is not None
    listening = {inode for inode, state in sockets_on(server.port).items() if state == LISTEN}
    first, second = (socket_inodes(pid) & listening for pid in workers)
    assert len(first) == len(second) == 1 and first != second  # not one socket shared by both
    assert not socket_inodes(server.process.pid) & listening


def test_a_burst_of_keep_alive_connections_is_spread_over_both_workers(
    two_workers: tuple[ServerProcess, list[int]],
) -> None:
    server, workers = two_workers
    clients = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(CONNECTIONS)]
    try:
        for client in clients:
            client.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        for client in clients:
            assert client.recv(4096).startswith(b"HTTP/1.1 200 ")
        per_worker = held_by(workers, server.port, ESTABLISHED)
    finally:
        for client in clients:
            client.close()
    assert sum(per_worker.values()) == CONNECTIONS
    # A hash spreads 64 connections over two sockets: fewer than 8 on one happens about once in 10^10 runs.
    assert min(per_worker.values()) >= 8, per_worker


def test_workers_stop_gracefully_when_their_supervisor_is_killed(tmp_path: Path, redis_url: str) -> None:
    """Without this they would go on serving with nobody to restart or stop them, and hold the port."""
    server = gateway(tmp_path, redis_url=redis_url, workers=2).start()
    assert server.process is not None
    deadline = time.monotonic() + 30
    while len(workers := worker_pids(server.process.pid)) < 2:
        assert time.monotonic() < deadline, "two workers did not start within 30 s"
        time.sleep(0.1)
    server.process.kill()
    server.process.wait(timeout=10)

    deadline = time.monotonic() + 15
    while alive := [pid for pid in workers if Path(f"/proc/{pid}").exists() and not zombie(pid)]:
        if time.monotonic() > deadline:
            for pid in alive:
                os.kill(pid, signal.SIGKILL)
            pytest.fail(f"workers {alive} still running 15 s after their supervisor was killed")
        time.sleep(0.1)
    with socket.socket() as probe:  # and the port is free for a restarted gateway
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", server.port))


def zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False


def test_a_worker_unpickles_a_new_socket_on_the_claimed_port() -> None:
    claim = bind_reuse_port("127.0.0.1", 0)
    with claim:
        port = claim.getsockname()[1]
        sockets = WorkerSockets("127.0.0.1", port)
        assert sockets == []  # the parent listens on nothing
        first, second = (pickle.loads(pickle.dumps(sockets)) for _ in range(2))  # what two workers do
        try:
            assert [s.getsockname()[1] for s in first + second] == [port, port]
            for sock in first + second:
                sock.listen()  # both listen on the one port: each a socket of its own, sharing it
        finally:
            for sock in first + second:
                sock.close()


@pytest.mark.parametrize("reuse_port", [False, True], ids=["plain", "another-gateway"])
def test_a_port_something_listens_on_is_refused_even_to_a_socket_that_could_share_it(reuse_port: bool) -> None:
    with socket.socket() as taken:
        if reuse_port:  # as another gateway's workers: SO_REUSEPORT would let this one quietly share the port
            taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError):
            free_port_on("127.0.0.1", taken.getsockname()[1])


def test_the_parents_claim_refuses_another_gateway_before_its_own_workers_listen() -> None:
    with bind_reuse_port("127.0.0.1", 0, reuse_address=False) as claim:
        port = claim.getsockname()[1]
        with pytest.raises(OSError):
            free_port_on("127.0.0.1", port)  # what a second gateway checks first
        with bind_reuse_port("127.0.0.1", port) as worker:  # while this gateway's own workers still join
            worker.listen()


def test_a_second_gateway_on_the_same_port_exits_with_uvicorns_startup_failure(
    two_workers: tuple[ServerProcess, list[int]], tmp_path: Path, redis_url: str
) -> None:
    first, _ = two_workers
    second = gateway(tmp_path / "second", redis_url=redis_url, workers=2)
    second.args[second.args.index("--port") + 1] = str(first.port)
    done = subprocess.run(second.args, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == STARTUP_FAILURE, done.stdout[-2000:] + done.stderr[-2000:]
    assert f"cannot listen on 127.0.0.1:{first.port}" in done.stderr


def test_a_worker_that_cannot_bind_exits_as_a_worker_that_cannot_start() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(SystemExit) as exited:
            pickle.loads(pickle.dumps(WorkerSockets("127.0.0.1", taken.getsockname()[1])))
    assert exited.value.code == STARTUP_FAILURE


def test_the_supervisor_exits_with_uvicorns_startup_failure_when_its_workers_cannot_start() -> None:
    script = (
        "import uvicorn; from router.workers import run_workers; "
        "run_workers(uvicorn.Config('tests.fixtures.failing_app:app', host='127.0.0.1', port=0, workers=2, "
        "lifespan='on', log_level='warning'))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == STARTUP_FAILURE, done.stdout[-2000:] + done.stderr[-2000:]
