"""What recording metrics costs on the prediction path: calls/s with metrics on and off, in one run.

    python bench/metrics_overhead.py            # about 30 s
    python bench/metrics_overhead.py --smoke    # a few seconds

Two measurements:
1. The whole predict path in-process (the app behind httpx's ASGI transport, an in-process model
   server behind the proxy, a private redis-server on 127.0.0.1): rounds alternate metrics on and
   off (the app's `Metrics` swapped for one that records nothing) so drift hits both equally; the
   median calls/s of each and their ratio are printed.
2. The recording alone (`Metrics.request` + `Metrics.upstream_call`, what one call records), in
   memory as one worker does, and memory-mapped as each of several workers does (in a child
   process started with PROMETHEUS_MULTIPROC_DIR, which prometheus-client reads at import).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prometheus_client import CollectorRegistry

from bench.inprocess import gateway, one_round, private_redis
from router.metrics import MULTIPROC_ENV, Metrics, NullMetrics


async def predict_path(
    redis_url: str, data_dir: Path, *, rounds: int, seconds: float, concurrency: int
) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {"on": [], "off": []}
    async with gateway(redis_url, data_dir) as (services, client):
        metrics_on = services.metrics
        metrics_off = NullMetrics()
        units = itertools.count()
        await one_round(client, units, seconds=min(seconds, 1.0), concurrency=concurrency)  # warm-up
        for _ in range(rounds):
            for mode, metrics in (("on", metrics_on), ("off", metrics_off)):
                services.metrics = metrics
                results[mode].append(await one_round(client, units, seconds=seconds, concurrency=concurrency))
        services.metrics = metrics_on
    return results


def record_cost_ns(iterations: int) -> float:
    """Nanoseconds to record what one successful call records, over label sets like real traffic."""
    metrics = Metrics(CollectorRegistry())
    variants = ("a", "b")
    started = time.perf_counter_ns()
    for i in range(iterations):
        variant = variants[i & 1]
        metrics.upstream_call("bench", variant, 0.004)
        metrics.request("bench", variant, "hashed", 200, 0.005)
    return (time.perf_counter_ns() - started) / iterations


def record_cost_in_child(iterations: int) -> float:
    """`record_cost_ns` in a child process whose metrics are memory-mapped, as with several workers."""
    with tempfile.TemporaryDirectory(prefix="abrouter-bench-prom-") as directory:
        env = {**os.environ, MULTIPROC_ENV: directory}
        out = subprocess.run(
            [sys.executable, __file__, "--record-only", str(iterations)],
            env=env,
            check=True,
            capture_output=True,
            text=True,
            timeout=120,
        )
    return float(json.loads(out.stdout)["ns"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a few seconds in all, for CI")
    parser.add_argument("--rounds", type=int, default=8, help="rounds per mode (default %(default)s)")
    parser.add_argument("--seconds", type=float, default=1.5, help="seconds per round (default %(default)s)")
    parser.add_argument("--concurrency", type=int, default=16, help="calls in flight (default %(default)s)")
    parser.add_argument("--iterations", type=int, default=200_000, help="recordings timed (default %(default)s)")
    parser.add_argument("--record-only", type=int, metavar="N", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.record_only is not None:
        print(json.dumps({"ns": record_cost_ns(args.record_only)}))
        return 0
    if args.smoke:
        args.rounds, args.seconds, args.iterations = 2, 0.75, 30_000

    in_memory = record_cost_ns(args.iterations)
    mmapped = record_cost_in_child(args.iterations)
    print(f"recording one call (request + upstream attempt), {args.iterations} times:")
    print(f"  in memory (one worker):        {in_memory / 1000:7.2f} us")
    print(f"  memory-mapped (N workers):     {mmapped / 1000:7.2f} us", flush=True)

    with private_redis() as (redis_url, data_dir):
        results = asyncio.run(
            predict_path(redis_url, data_dir, rounds=args.rounds, seconds=args.seconds, concurrency=args.concurrency)
        )
    on, off = statistics.median(results["on"]), statistics.median(results["off"])
    print(f"predict path in-process, {args.rounds} rounds x {args.seconds:g} s per mode, {args.concurrency} in flight:")
    print(f"  metrics on:  {on:8.0f} calls/s  (rounds: {', '.join(f'{r:.0f}' for r in results['on'])})")
    print(f"  metrics off: {off:8.0f} calls/s  (rounds: {', '.join(f'{r:.0f}' for r in results['off'])})")
    print(f"  ratio on/off: {on / off:.3f}  (difference per call: {(1 / on - 1 / off) * 1e6:+.1f} us)")
    # the round-to-round spread of a shared machine can exceed the cost; the recording time is exact
    call_us = 1e6 / off
    in_memory_share, mmapped_share = in_memory / 1000 / call_us, mmapped / 1000 / call_us
    print(f"  recording as a share of one call ({call_us:.0f} us): {in_memory_share:.2%} in memory, ", end="")
    print(f"{mmapped_share:.2%} memory-mapped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
