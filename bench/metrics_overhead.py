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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from prometheus_client import CollectorRegistry  # noqa: E402
from starlette.applications import Starlette  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import Response  # noqa: E402
from starlette.routing import Route  # noqa: E402

from router.app import create_app  # noqa: E402
from router.config.schema import Experiment  # noqa: E402
from router.metrics import MULTIPROC_ENV, Metrics, UpstreamErrorKind  # noqa: E402
from router.services import Services  # noqa: E402
from router.settings import Settings  # noqa: E402
from router.store.configs import ConfigStore  # noqa: E402
from router.store.embedded import RedisServer  # noqa: E402
from router.store.keys import Keys  # noqa: E402

BODY = b'{"predictions": [0], "probabilities": [[0.9, 0.1]]}'


class NoMetrics(Metrics):
    """Records nothing on the prediction path: the 'off' side of the comparison."""

    def request(self, experiment: str, variant: str, reason: str, status: int, duration_s: float) -> None:
        pass

    def upstream_call(
        self, experiment: str, variant: str, duration_s: float, error: UpstreamErrorKind | None = None
    ) -> None:
        pass

    def fallback(self, experiment: str, variant: str) -> None:
        pass


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
            # in-process transports may never suspend: yield so the app's background tasks (event
            # writer, config sync) run as they would between socket reads
            await asyncio.sleep(0)

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return done / (time.perf_counter() - started)


async def predict_path(
    redis_url: str, data_dir: Path, *, rounds: int, seconds: float, concurrency: int
) -> dict[str, list[float]]:
    await store_experiment(redis_url)
    settings = Settings(redis_url=redis_url, data_dir=data_dir, redis_timeout_s=2.0)
    app = create_app(settings, transport=httpx.ASGITransport(app=model_server()))
    results: dict[str, list[float]] = {"on": [], "off": []}
    async with app.router.lifespan_context(app):
        services: Services = app.state.services
        metrics_on = services.metrics
        metrics_off = NoMetrics(CollectorRegistry())
        units = itertools.count()
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway") as client:
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

    with tempfile.TemporaryDirectory(prefix="abrouter-bench-") as tmp:
        redis_server = RedisServer(Path(tmp) / "redis").start()
        try:
            results = asyncio.run(
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
