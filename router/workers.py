"""Several worker processes on one port, each accepting from a listening socket of its own (SO_REUSEPORT).

uvicorn's supervisor binds one socket and every worker accepts from it. The worker that wakes
first accepts every connection waiting (uvloop accepts until the queue is empty), so a burst of
keep-alive connections (a load balancer's pool, the benchmark's 32) can all land on one worker
and stay there while the others idle: the benchmark saw one of two workers serve every call in
one round of three (docs/performance.md, item 20). With a socket per worker, the kernel spreads
new connections over the workers by a hash of their addresses.

The supervision stays uvicorn's (`Multiprocess`: health checks, restarts, signals, graceful
shutdown); only the sockets it hands the workers differ. `WorkerSockets` pickles to a call that
binds a new socket, so each worker process, a restarted one too, unpickles a socket of its own.
The parent binds the port first with the same options and never listens: that claims the port
(a port in use fails at start, `--port 0` gets one port for all) and takes no connections.
"""

from __future__ import annotations

import logging
import socket
import sys
from typing import Any

import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import Multiprocess

log = logging.getLogger("uvicorn.error")


def reuse_port_supported() -> bool:
    """Whether this platform lets several sockets listen on one port (Linux, the BSDs, macOS)."""
    return hasattr(socket, "SO_REUSEPORT")


def bind_reuse_port(host: str, port: int) -> socket.socket:
    """A TCP socket bound to (host, port) that other such sockets of this user may bind too; not listening yet."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


class WorkerSockets(list[socket.socket]):
    """The `sockets` uvicorn's supervisor passes each worker; empty here, one new socket on the port in a worker."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__()
        self.host = host
        self.port = port

    def __reduce__(self) -> tuple[Any, tuple[str, int]]:
        # A worker is a spawned process: its arguments are pickled, and this runs there on unpickling.
        return _sockets_of_this_worker, (self.host, self.port)


def _sockets_of_this_worker(host: str, port: int) -> list[socket.socket]:
    return [bind_reuse_port(host, port)]


def run_workers(config: uvicorn.Config) -> None:
    """`uvicorn.run` for `config.workers` > 1 (an app given as an import string), with a socket per worker."""
    try:
        claim = bind_reuse_port(config.host, config.port)
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", config.host, config.port, exc)
        sys.exit(STARTUP_FAILURE)
    with claim:
        port = claim.getsockname()[1]
        log.info(
            "Uvicorn running on http://%s:%d with %d workers, each on its own socket (SO_REUSEPORT)",
            config.host,
            port,
            config.workers,
        )
        Multiprocess(config, sockets=WorkerSockets(config.host, port)).run()
