"""What logging exposures and call counts costs on the prediction path: calls/s with logging on and off, one run.

    python bench/logging_overhead.py            # about 30 s
    python bench/logging_overhead.py --smoke    # a few seconds

The whole predict path runs in-process (the app behind httpx's ASGI transport, an in-process model
server behind the proxy, a private redis-server on 127.0.0.1). Rounds alternate logging on and
off ('off' swaps `EventWriter.record_call` for a no-op), so drift hits both equally. Every call
comes from a new unit, the worst case: each one is an exposure event, not only a count. The event
writer's background task shares the event loop, so its batching and Redis round trips are part
of the 'on' figure; the backlog left at the end of an 'on' round is drained before the next round,
outside the timing. Printed: the median calls/s of each mode, their ratio, the cost per call, and
the writer's totals (all events written, none dropped).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.inprocess import gateway, one_round, private_redis


def _no_logging(*args: Any, **kwargs: Any) -> None:
    """The 'off' side: the call records nothing."""


async def predict_path(
    redis_url: str, data_dir: Path, *, rounds: int, seconds: float, concurrency: int
) -> tuple[dict[str, list[float]], dict[str, int]]:
    results: dict[str, list[float]] = {"on": [], "off": []}
    async with gateway(redis_url, data_dir) as (services, client):
        events = services.events
        units = itertools.count()
        await one_round(client, units, seconds=min(seconds, 1.0), concurrency=concurrency)  # warm-up
        for _ in range(rounds):
            for mode in ("on", "off"):
                if mode == "off":
                    events.record_call = _no_logging  # type: ignore[method-assign]
                results[mode].append(await one_round(client, units, seconds=seconds, concurrency=concurrency))
                vars(events).pop("record_call", None)
                if not await events.drain(30.0):
                    raise SystemExit(f"the event writer did not drain: {events.pending} pending")
        totals = {
            "exposures": sum(events.exposures.values()),
            "written": events.written,
            "dropped": events.dropped,
            "pending": events.pending,
        }
    return results, totals


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a few seconds in all, for CI")
    parser.add_argument("--rounds", type=int, default=8, help="rounds per mode (default %(default)s)")
    parser.add_argument("--seconds", type=float, default=1.5, help="seconds per round (default %(default)s)")
    parser.add_argument("--concurrency", type=int, default=16, help="calls in flight (default %(default)s)")
    args = parser.parse_args()
    if args.smoke:
        args.rounds, args.seconds = 2, 0.75

    with private_redis() as (redis_url, data_dir):
        results, totals = asyncio.run(
            predict_path(redis_url, data_dir, rounds=args.rounds, seconds=args.seconds, concurrency=args.concurrency)
        )
    on, off = statistics.median(results["on"]), statistics.median(results["off"])
    print(f"predict path, {args.rounds} rounds of {args.seconds:g} s per mode, {args.concurrency} calls in flight:")
    print(f"  logging off:  {off:8.0f} calls/s  (rounds: {', '.join(f'{r:.0f}' for r in results['off'])})")
    print(f"  logging on:   {on:8.0f} calls/s  (rounds: {', '.join(f'{r:.0f}' for r in results['on'])})")
    print(f"  ratio on/off: {on / off:8.3f}   cost per call: {(1 / on - 1 / off) * 1e6:+.1f} us")
    print(
        f"  events: {totals['written']} written ({totals['exposures']} first exposures), "
        f"{totals['dropped']} dropped, {totals['pending']} pending"
    )
    return 0 if totals["dropped"] == 0 and totals["pending"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
