"""A small HTTP/1.1 load generator: closed-loop (like wrk) and constant-rate (open-loop, like wrk2).

``python -m bench.loadgen URL --mode closed|rate [--rate R] [--connections N] [--duration S]``
prints one JSON object. It exists for two reasons: wrk (Debian's, version 4) has no constant-rate
mode, and a machine without wrk (CI) must still be able to run the smoke benchmark.

Constant rate: request i is due at ``start + i / rate`` whether or not earlier ones have
answered; a due request waits for a free connection of the fixed pool, and its latency is
counted from when it was due, not from when it was sent. Queueing in the server therefore
shows up in the percentiles instead of silently lowering the rate (coordinated omission).
Timers wake up to ~1 ms late (epoll's millisecond timeout), which adds the same small lag to
every target; `lag_p99_ms` reports it so a reader can tell a late generator from a slow server.

Only loopback targets are accepted; every run ends by itself after `duration + timeout`.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import ipaddress
import json
import random
import sys
import time
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, cast
from urllib.parse import urlsplit

import uvloop

DEFAULT_BODY: Final = b'{"instances": [[12.0, 70.5, 1.0, 0.1]]}'
#: latencies kept per run; past this, requests are still counted but not timed (bounded memory)
MAX_SAMPLES: Final = 5_000_000


@dataclass(frozen=True, slots=True)
class Target:
    """Where the load goes: a loopback host and port, a path and the JSON body POSTed there."""

    host: str
    port: int
    path: str
    body: bytes = DEFAULT_BODY
    #: None: every request from a new random unit; N: from one of N units (the same N ids every run)
    units: int | None = None

    @classmethod
    def from_url(cls, url: str, body: bytes = DEFAULT_BODY, units: int | None = None) -> Target:
        parts = urlsplit(url)
        if parts.scheme != "http" or parts.hostname is None or parts.port is None:
            raise ValueError(f"need http://127.0.0.1:PORT/path, got {url!r}")
        if not ipaddress.ip_address(parts.hostname).is_loopback:
            raise ValueError(f"benchmarks only target loopback addresses, got {parts.hostname!r}")
        return cls(parts.hostname, parts.port, parts.path or "/", body, units)

    def next_request(self) -> bytes:
        """The next request: from a new random unit, or one of `units` (as bench/random_user.lua does)."""
        return self.request(random_user() if self.units is None else f"u{random.randrange(self.units):016x}")

    def request(self, user: str) -> bytes:
        """One POST with `user` as X-User-Id, the way the wrk script sends it."""
        return b"".join(
            (
                b"POST ",
                self.path.encode(),
                b" HTTP/1.1\r\nHost: ",
                f"{self.host}:{self.port}".encode(),
                b"\r\nContent-Type: application/json\r\nX-User-Id: ",
                user.encode(),
                b"\r\nContent-Length: ",
                str(len(self.body)).encode(),
                b"\r\n\r\n",
                self.body,
            )
        )


@dataclass(slots=True)
class Result:
    """Counts and latencies of one run (seconds inside, milliseconds in the JSON)."""

    duration_s: float = 0.0
    requests: int = 0
    errors: int = 0
    statuses: collections.Counter[int] = field(default_factory=collections.Counter)
    latencies: array[float] = field(default_factory=lambda: array("d"))
    lags: array[float] = field(default_factory=lambda: array("d"))

    def record(self, status: int, latency_s: float) -> None:
        self.requests += 1
        self.statuses[status] += 1
        if not 200 <= status < 400:
            self.errors += 1
        if len(self.latencies) < MAX_SAMPLES:
            self.latencies.append(latency_s)

    def to_json(self) -> dict[str, Any]:
        ordered = sorted(self.latencies)
        lags = sorted(self.lags)
        return {
            "requests": self.requests,
            "errors": self.errors,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "duration_s": round(self.duration_s, 4),
            "rps": round(self.requests / self.duration_s, 1) if self.duration_s else 0.0,
            "p50_ms": _ms(percentile(ordered, 50)),
            "p90_ms": _ms(percentile(ordered, 90)),
            "p99_ms": _ms(percentile(ordered, 99)),
            "max_ms": _ms(ordered[-1] if ordered else None),
            "lag_p99_ms": _ms(percentile(lags, 99)),
        }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def percentile(ordered: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile of an already sorted sequence (None when empty)."""
    if not ordered:
        return None
    rank = max(1, -(-len(ordered) * p // 100))  # ceil without floats drifting
    return ordered[min(len(ordered), int(rank)) - 1]


class Connection(asyncio.Protocol):
    """One keep-alive connection with at most one request in flight; answers need a Content-Length."""

    def __init__(self, on_answer: Callable[[Connection, int], None], on_lost: Callable[[Connection], None]) -> None:
        self._on_answer = on_answer
        self._on_lost = on_lost
        self._buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.sent_at = 0.0
        self.due_at = 0.0
        self.busy = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is one without subclassing it

    def send(self, payload: bytes, due_at: float) -> None:
        assert self.transport is not None
        self.busy = True
        self.due_at = due_at
        self.sent_at = time.perf_counter()
        self.transport.write(payload)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self._buffer[:end]).lower()
        marker = head.find(b"\r\ncontent-length:")
        if marker < 0 or not head.startswith(b"http/1.1 "):
            self.close()  # chunked or HTTP/1.0 answers are not expected from any target here
            return
        line_end = head.find(b"\r\n", marker + 2)
        length = int(head[marker + 17 : line_end if line_end >= 0 else len(head)])
        if len(self._buffer) < end + 4 + length:
            return
        if len(self._buffer) > end + 4 + length:
            self.close()  # an unrequested extra answer: the framing is broken
            return
        status = int(head[9:12])
        self._buffer.clear()
        self.busy = False
        self._on_answer(self, status)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._on_lost(self)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def random_user() -> str:
    return f"u{random.getrandbits(64):016x}"


class LoadRun:
    """The shared state of one run: the pool, the backlog of due requests and the result."""

    def __init__(self, target: Target, *, connections: int, timeout_s: float) -> None:
        self.target = target
        self.size = connections
        self.timeout_s = timeout_s
        self.result = Result()
        self.idle: list[Connection] = []
        self.pool: set[Connection] = set()
        self.backlog: collections.deque[float] = collections.deque()
        self.closed_loop_until: float | None = None
        self.recording = False
        #: set whenever every connection of the pool is idle (the end of a drain)
        self.settled = asyncio.Event()

    async def open(self) -> None:
        """Open the whole pool first, so no measured request pays for a connect."""
        loop = asyncio.get_running_loop()
        for _ in range(self.size):
            _, conn = await asyncio.wait_for(
                loop.create_connection(
                    lambda: Connection(self._answered, self._lost), self.target.host, self.target.port
                ),
                timeout=self.timeout_s,
            )
            self.pool.add(conn)
            self.idle.append(conn)

    def _answered(self, conn: Connection, status: int) -> None:
        now = time.perf_counter()
        if self.recording:
            self.result.record(status, now - conn.due_at)
        self._next(conn, now)

    def _next(self, conn: Connection, now: float) -> None:
        if self.closed_loop_until is not None:
            if now < self.closed_loop_until:
                conn.send(self.target.next_request(), now)
                return
        elif self.backlog:
            due = self.backlog.popleft()
            if self.recording:
                self.result.lags.append(now - due)
            conn.send(self.target.next_request(), due)
            return
        self.idle.append(conn)
        if len(self.idle) >= len(self.pool):
            self.settled.set()

    def _lost(self, conn: Connection) -> None:
        self.pool.discard(conn)
        if conn in self.idle:
            self.idle.remove(conn)
        if conn.busy and self.recording:
            self.result.errors += 1
            self.result.requests += 1

    async def refill(self) -> None:
        """Replace connections the server closed, so the pool keeps its size."""
        loop = asyncio.get_running_loop()
        while len(self.pool) < self.size:
            _, conn = await asyncio.wait_for(
                loop.create_connection(
                    lambda: Connection(self._answered, self._lost), self.target.host, self.target.port
                ),
                timeout=self.timeout_s,
            )
            self.pool.add(conn)
            self._next(conn, time.perf_counter())

    def expire(self, now: float) -> None:
        """Close connections whose request is older than the timeout; it counts as an error."""
        for conn in list(self.pool):
            if conn.busy and now - conn.sent_at > self.timeout_s:
                conn.close()

    def close(self) -> None:
        for conn in list(self.pool):
            conn.close()


async def closed_loop(target: Target, *, connections: int, duration_s: float, timeout_s: float = 5.0) -> Result:
    """Each connection sends its next request as soon as the previous one is answered (wrk's model)."""
    run = LoadRun(target, connections=connections, timeout_s=timeout_s)
    await run.open()
    started = time.perf_counter()
    run.closed_loop_until = started + duration_s
    run.recording = True
    for conn in list(run.idle):
        run.idle.remove(conn)
        conn.send(target.next_request(), time.perf_counter())
    while (now := time.perf_counter()) < started + duration_s:
        run.expire(now)
        await run.refill()
        await asyncio.sleep(min(0.05, started + duration_s - now))
    run.recording = False
    run.result.duration_s = time.perf_counter() - started
    await _drain(run)
    return run.result


async def constant_rate(
    target: Target, *, rate: float, connections: int, duration_s: float, timeout_s: float = 5.0
) -> Result:
    """Request i is due at start + i/rate; latency counts from then (see the module docstring)."""
    run = LoadRun(target, connections=connections, timeout_s=timeout_s)
    await run.open()
    started = time.perf_counter()
    total = int(rate * duration_s)
    run.recording = True
    sent = 0
    next_check = started
    while sent < total:
        now = time.perf_counter()
        while sent < total and started + sent / rate <= now:
            run.backlog.append(started + sent / rate)
            sent += 1
        while run.backlog and run.idle:
            due = run.backlog.popleft()
            run.result.lags.append(now - due)
            run.idle.pop().send(target.next_request(), due)
        if now >= next_check:
            run.expire(now)
            await run.refill()
            next_check = now + 0.05
        if sent < total:
            await asyncio.sleep(max(0.0, started + sent / rate - time.perf_counter()))
    # the last due requests still get their answers; the duration is the schedule's, not the drain's
    deadline = time.perf_counter() + timeout_s
    while (run.backlog or len(run.idle) < len(run.pool)) and time.perf_counter() < deadline:
        run.expire(time.perf_counter())
        await asyncio.sleep(0.005)
    run.recording = False
    run.result.duration_s = max(duration_s, 1e-9)
    unanswered = len(run.backlog) + sum(conn.busy for conn in run.pool)
    run.result.requests += unanswered
    run.result.errors += unanswered
    run.close()
    return run.result


async def _drain(run: LoadRun, timeout_s: float = 2.0) -> None:
    """Let requests in flight at the end finish (uncounted) so connections close cleanly."""
    if len(run.idle) < len(run.pool):
        run.settled.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(run.settled.wait(), timeout_s)
    run.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__.splitlines()[0])
    parser.add_argument("url", help="http://127.0.0.1:PORT/path (loopback only)")
    parser.add_argument("--mode", choices=["closed", "rate"], default="closed")
    parser.add_argument("--rate", type=float, default=1000.0, help="requests per second (mode rate)")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds measured")
    parser.add_argument("--warmup", type=float, default=0.0, help="seconds of the same load first, not measured")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds before a request counts as failed")
    parser.add_argument("--body", default=DEFAULT_BODY.decode(), help="JSON body to POST")
    parser.add_argument("--units", type=int, default=None, help="draw X-User-Id from N units (default: all new)")
    args = parser.parse_args(argv)
    if args.units is not None and args.units < 1:
        parser.error("--units must be at least 1")
    target = Target.from_url(args.url, args.body.encode(), args.units)

    async def run() -> Result:
        kwargs = {"connections": args.connections, "timeout_s": args.timeout}
        if args.mode == "closed":
            if args.warmup > 0:
                await closed_loop(target, duration_s=args.warmup, **kwargs)
            return await closed_loop(target, duration_s=args.duration, **kwargs)
        if args.warmup > 0:
            await constant_rate(target, rate=args.rate, duration_s=args.warmup, **kwargs)
        return await constant_rate(target, rate=args.rate, duration_s=args.duration, **kwargs)

    # uvloop's clock ticks in milliseconds, too coarse for the pacing of the constant-rate mode,
    # but its I/O is cheaper, which is what a closed loop needs from the generator.
    result = uvloop.run(run()) if args.mode == "closed" else asyncio.run(run())
    json.dump(result.to_json(), sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
