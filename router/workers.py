"""Several worker processes on one port, each accepting from a listening socket of its own (SO_REUSEPORT).

uvicorn's supervisor binds one socket and every worker accepts from it. The worker that wakes
first accepts every connection waiting (uvloop accepts until the queue is empty), so a burst of
keep-alive connections (a load balancer's pool, the benchmark's 32) can all land on one worker
and stay there while the others idle: the benchmark saw one of two workers serve every call in
one round of three (docs/performance.md, item 20). With a socket per worker, Linux spreads new
connections over the workers by a hash of their addresses.

The supervision stays uvicorn's (`Multiprocess`: health checks, restarts, signals, graceful
shutdown); only the sockets it hands the workers differ. `WorkerSockets` pickles to a call that
binds a new socket, so each worker process, a restarted one too, unpickles a socket of its own.
The parent first checks that nothing listens on the port (a plain bind: another gateway's
SO_REUSEPORT sockets must not quietly share the port with this one), then claims it with a
bound socket of the workers' options that never listens and so never takes a connection.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from typing import Any

import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import Multiprocess

from router.store.embedded import die_with_parent

log = logging.getLogger("uvicorn.error")


def reuse_port_supported() -> bool:
    """Whether SO_REUSEPORT balances connections over the sockets: Linux only (the BSDs and macOS do not)."""
    return sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def bind_reuse_port(host: str, port: int, *, reuse_address: bool = True) -> socket.socket:
    """A TCP socket bound to (host, port) that other such sockets of this user may bind too; not listening yet.

    The parent's claim is bound without SO_REUSEADDR: then another gateway's plain bind (which
    has it) is refused even before this gateway's workers listen, while the workers still join.
    """
    sock = socket.socket(_family(host), socket.SOCK_STREAM)
    try:
        if reuse_address:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def free_port_on(host: str, port: int) -> int:
    """`port` (or a free one for 0) once a plain bind shows that nothing listens there; OSError if something does."""
    with socket.socket(_family(host), socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: TIME_WAIT is no conflict
        probe.bind((host, port))
        bound: int = probe.getsockname()[1]
        return bound


class WorkerSockets(list[socket.socket]):
    """The `sockets` uvicorn's supervisor passes each worker; empty here, one new socket on the port in a worker."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__()
        self.host = host
        self.port = port

    def __reduce__(self) -> tuple[Any, tuple[str, int, int]]:
        # A worker is a spawned process: its arguments are pickled, and this runs there on unpickling.
        return _sockets_of_this_worker, (self.host, self.port, os.getpid())


def _sockets_of_this_worker(host: str, port: int, supervisor: int) -> list[socket.socket]:
    if os.getpid() != supervisor:  # in a worker (a test may unpickle in the same process)
        _stop_with(supervisor)
    try:
        return [bind_reuse_port(host, port)]
    except OSError as exc:
        # Before uvicorn's code runs in the worker: exit as uvicorn does when a worker cannot start,
        # so the supervisor stops instead of restarting it in a loop.
        log.error("worker cannot listen on %s:%d: %s", host, port, exc)
        raise SystemExit(STARTUP_FAILURE) from None


def _stop_with(supervisor: int) -> None:
    """Have Linux SIGTERM this worker when the supervisor dies, even by SIGKILL.

    Otherwise the workers would go on serving, their events kept from a Redis that may be gone
    (the embedded one stops with the supervisor), and hold the port against a restarted gateway.
    SIGTERM is the graceful stop: queued events are written or spilled.
    """
    stop_with_parent = die_with_parent()
    if stop_with_parent is not None:
        stop_with_parent()
    if os.getppid() != supervisor:  # it died before the line above: nothing would signal us any more
        log.error("the gateway's supervisor (pid %d) is gone: this worker does not start", supervisor)
        raise SystemExit(STARTUP_FAILURE)


def run_workers(config: uvicorn.Config) -> None:
    """`uvicorn.run` for `config.workers` > 1 (an app given as an import string), with a socket per worker.

    Exits with uvicorn's STARTUP_FAILURE (3) when the port is taken or a worker could not start.
    """
    try:
        port = free_port_on(config.host, config.port)
        claim = bind_reuse_port(config.host, port, reuse_address=False)
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", config.host, config.port, exc)
        sys.exit(STARTUP_FAILURE)
    with claim:
        host = claim.getsockname()[0]  # the address it resolved to: every worker binds that very one
        shown = f"[{host}]" if ":" in host else host
        log.info(
            "Uvicorn running on http://%s:%d with %d workers, each on its own socket (SO_REUSEPORT)",
            shown,
            port,
            config.workers,
        )
        supervisor = Multiprocess(config, sockets=WorkerSockets(host, port))
        supervisor.run()
    if any(process.exitcode == STARTUP_FAILURE for process in supervisor.processes):
        sys.exit(STARTUP_FAILURE)  # uvicorn's own supervisor exits 0 here: a service manager would not notice
