"""The upstream clients alone: calls/s and CPU per call of each `UpstreamClient`, without the gateway around it.

``python -m bench.clients http://127.0.0.1:PORT/predict [--duration S] [--concurrency N]``, run by
`bench.run` against its nginx upstream in the same process layout (this process pinned to the
server's CPU). It isolates what the library costs from what the rest of the hot path costs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from typing import Any, cast, get_args

import uvloop

from bench.loadgen import DEFAULT_BODY, Target, percentile, random_user
from router.errors import UpstreamError
from router.proxy import open_upstream_client
from router.settings import UpstreamClientKind


async def measure(kind: UpstreamClientKind, url: str, *, duration_s: float, concurrency: int) -> dict[str, Any]:
    """`concurrency` tasks POST back to back for `duration_s` through one client of `kind`."""
    client = open_upstream_client(kind, max_connections=512, keepalive_s=30.0)
    latencies: list[float] = []
    errors = 0

    async def worker(until: float) -> None:
        nonlocal errors
        while time.perf_counter() < until:
            started = time.perf_counter()
            headers = [("content-type", "application/json"), ("x-user-id", random_user())]
            try:
                answer = await client.post(url, body=DEFAULT_BODY, headers=headers, timeout_s=5.0)
            except UpstreamError:
                errors += 1
                continue
            if answer.status != 200:
                errors += 1
            latencies.append(time.perf_counter() - started)

    try:
        await asyncio.gather(*(worker(time.perf_counter() + min(1.0, duration_s)) for _ in range(concurrency)))
        latencies.clear()
        cpu_before, started = time.process_time(), time.perf_counter()
        await asyncio.gather(*(worker(started + duration_s) for _ in range(concurrency)))
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_before
    finally:
        await client.aclose()
    latencies.sort()
    calls = len(latencies)
    return {
        "client": kind,
        "calls": calls,
        "errors": errors,
        "calls_per_s": round(calls / elapsed, 1),
        "cpu_us_per_call": round(cpu / calls * 1e6, 1) if calls else None,
        "p50_ms": round((percentile(latencies, 50) or 0) * 1000, 3),
        "p99_ms": round((percentile(latencies, 99) or 0) * 1000, 3),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.clients", description=__doc__.splitlines()[0])
    parser.add_argument("url", help="http://127.0.0.1:PORT/path (loopback only)")
    parser.add_argument("--clients", default=",".join(get_args(UpstreamClientKind)))
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args(argv)
    Target.from_url(args.url)  # refuses anything but loopback
    for kind in args.clients.split(","):
        if kind not in get_args(UpstreamClientKind):
            parser.error(f"unknown client {kind!r}")
        # the gateway runs on uvloop, so the clients are measured on it too
        result = uvloop.run(
            measure(cast(UpstreamClientKind, kind), args.url, duration_s=args.duration, concurrency=args.concurrency)
        )
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
