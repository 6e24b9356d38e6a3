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
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from starlette.applications import Starlette  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import Response  # noqa: E402
from starlette.routing import Route  # noqa: E402

from router.app import create_app  # noqa: E402
from router.config.schema import Experiment  # noqa: E402
from router.services import Services  # noqa: E402
from router.settings import Settings  # noqa: E402
from router.store.configs import ConfigStore  # noqa: E402
from router.store.embedded import RedisServer  # noqa: E402
from router.store.keys import Keys  # noqa: E402

BODY = b'{"predictions": [0], "probabilities": [[0.9, 0.1]]}'


def model_server() -> Starlette:
    """The cheapest possible upstream, so the gateway's own work dominates."""

    async def predict(request: Request) -> Response:
        await request.body()
        return Response(BODY, media_type="application/json")

    return Starlette(routes=[Route("/{variant}", predict, methods=["POST"])])


async def store_experiment(redis_url: str) -> None:
    import redis.asyncio as redis

    client = redis.Redis.from_url(redis_url)
    try:
        experiment = Experiment.model_validate(
            {
                "name": "bench",
                "control": "a",
                "variants": [
                    {"name": "a", "weight": 50, "url": "http://model.bench/a"},
                    {"name": "b", "weight": 50, "url": "http://model.bench/b"},
                ],
                "metrics": [{"name": "converted", "kind": "binomial"}],
            }
        )
        await ConfigStore(client, keys=Keys()).create_if_absent(experiment, actor="bench")
    finally:
        await client.aclose()


async def one_round(
    client: httpx.AsyncClient, units: itertools.count[int], *, seconds: float, concurrency: int
) -> float:
    """Calls per second over `seconds`, `concurrency` calls in flight."""
    done = 0
    deadline = time.perf_counter() + seconds

    async def caller() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            response = await client.post(
                "/v1/experiments/bench/predict",
                content=b'{"instances": [[1.0, 2.0]]}',
                headers={"X-User-Id": f"u{next(units)}"},
            )
            if response.status_code != 200:
                raise SystemExit(f"the gateway answered {response.status_code}: {response.text}")
            done += 1
            # in-process transports may never suspend: yield so the writer's task runs as it would
            # between socket reads
            await asyncio.sleep(0)

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return done / (time.perf_counter() - started)


def _no_logging(*args: Any, **kwargs: Any) -> None:
    """The 'off' side: the call records nothing."""


async def predict_path(
    redis_url: str, data_dir: Path, *, rounds: int, seconds: float, concurrency: int
) -> tuple[dict[str, list[float]], dict[str, int]]:
    await store_experiment(redis_url)
    settings = Settings(redis_url=redis_url, data_dir=data_dir, redis_timeout_s=2.0)
    app = create_app(settings, transport=httpx.ASGITransport(app=model_server()))
    results: dict[str, list[float]] = {"on": [], "off": []}
    async with app.router.lifespan_context(app):
        services: Services = app.state.services
        events = services.events
        units = itertools.count()
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway") as client:
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

    with tempfile.TemporaryDirectory(prefix="abrouter-bench-") as tmp:
        redis_server = RedisServer(Path(tmp) / "redis").start()
        try:
            results, totals = asyncio.run(
                predict_path(
                    redis_server.url,
                    Path(tmp) / "data",
                    rounds=args.rounds,
                    seconds=args.seconds,
                    concurrency=args.concurrency,
                )
            )
        finally:
            redis_server.stop()
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
