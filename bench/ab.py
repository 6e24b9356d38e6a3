"""Interleaved A/B of gateway variants under the benchmark's load: ``python -m bench.ab on off`` (docs/performance.md).

A whole `bench.run` moves by 10 to 40% between runs on a shared VM, which hides changes of a few
microseconds per call. This measures only gateways, the same way as bench.run's proxy rows (its
Redis, nginx upstream, wrk load and CPU layout), but alternates the variants round after round,
each on a freshly started gateway, and reports the median of the rounds: drift hits every variant
alike. The figure to read is the server's CPU per request, which moves less than req/s.

A variant is ``on`` or ``off`` (logging and metrics), optionally followed by ``:`` and the
gateway's extra environment as ``NAME=value`` pairs separated by commas; the pair ``workers=N``
sets the gateway's worker processes instead. For example::

    python -m bench.ab --rounds 3 on off 'on:ABROUTER_UPSTREAM_CLIENT=aiohttp'
    python -m bench.ab on 'on:PYTHONPATH=/tmp/patch'   # a sitecustomize.py there patches a function
    python -m bench.ab --route local --both-cpus on on:workers=2   # bench.run's scaling rows

``--route local`` loads the micro-batched local model instead of the proxy, and ``--both-cpus``
lets the gateway and the load generator use both CPUs, as bench.run's scaling rows do.

Every server listens on 127.0.0.1 only and every load run is bounded in time.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import median
from typing import Final

from bench.run import PREDICT, PREDICT_LOCAL, Bench, Plan, Row, ensure_tools
from router.settings import Settings

#: The path each `--route` loads.
ROUTES: Final = {"proxy": PREDICT, "local": PREDICT_LOCAL}


@dataclass(frozen=True, slots=True)
class Variant:
    """One gateway configuration: logging and metrics on or off, plus extra environment."""

    label: str
    switches_on: bool
    env: dict[str, str]
    workers: int = 1


def parse_variant(text: str) -> Variant:
    """`on`, `off`, or either followed by `:NAME=value,...` (`workers=N` among them); ValueError names what is wrong."""
    switch, _, extra = text.partition(":")
    if switch not in ("on", "off"):
        raise ValueError(f"{text!r}: a variant starts with 'on' or 'off'")
    env: dict[str, str] = {}
    workers = 1
    for pair in filter(None, extra.split(",")):
        name, equals, value = pair.partition("=")
        if not equals or not name:
            raise ValueError(f"{text!r}: {pair!r} is not NAME=value")
        if name == "workers":
            if not value.isdigit() or int(value) < 1:
                raise ValueError(f"{text!r}: workers must be a whole number of at least 1, not {value!r}")
            workers = int(value)
        else:
            env[name] = value
    return Variant(text, switch == "on", env, workers)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("variants", nargs="+", help="on | off, optionally followed by :NAME=value,...")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every variant (default %(default)s)")
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds per run (default %(default)s)")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds first (default %(default)s)")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument(
        "--route", choices=ROUTES, default="proxy", help="the proxied route or the micro-batched local model"
    )
    parser.add_argument("--both-cpus", action="store_true", help="gateway and load on both CPUs, not one each")
    parser.add_argument("--smoke", action="store_true", help="one round of one second each, for CI")
    parser.add_argument("--no-install", action="store_true", help="never install wrk or nginx")
    parser.add_argument("--models-dir", type=Path, default=None, help="where the example models are trained")
    args = parser.parse_args(argv)
    try:
        args.variants = [parse_variant(text) for text in args.variants]
    except ValueError as exc:
        parser.error(str(exc))
    if args.rounds < 1 or args.seconds <= 0:
        parser.error("--rounds must be at least 1 and --seconds positive")
    if args.smoke:
        args.rounds, args.seconds, args.warmup = 1, 1.0, 0.0
    return args


def measure_round(
    bench: Bench, variant: Variant, number: int, *, route: str = "proxy", both_cpus: bool = False
) -> Row | None:
    """One warmed-up run of a freshly started gateway; None when it failed (noted in `bench.failures`)."""
    # "abrouter" in the name: Bench.measure reads Redis's CPU for gateways only. The name also names
    # the gateway's data directory and log, so no path separators from the variant's environment.
    name = f"abrouter {variant.label.replace('/', '_')} #{number}"
    gateway = bench.abrouter(
        name, client=bench.plan.default_client, switches_on=variant.switches_on, workers=variant.workers
    )
    gateway.env.update(variant.env)
    try:
        with bench.serving(gateway, pinned=not both_cpus):
            return bench.measure(gateway.name, gateway, ROUTES[route], pinned=not both_cpus)
    except RuntimeError as exc:  # it would not start (a bad setting in its environment): the others still run
        bench.failures.append(f"{gateway.name}: {exc}")
        print(f"  {gateway.name}: FAILED: {exc}", file=sys.stderr)
        return None


def summary(variants: Sequence[Variant], rows: dict[str, list[Row]]) -> str:
    """Median req/s, server and Redis CPU per request of each variant, and each one's CPU against the first."""
    lines = [
        "| variant | rounds | req/s | server CPU us/req | Redis CPU us/req | CPU vs first |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    baseline: float | None = None
    for variant in variants:
        measured = rows[variant.label]
        if not measured:
            lines.append(f"| {variant.label} | 0 | - | - | - | - |")
            continue
        cpu = median(row.cpu_us_per_request or 0.0 for row in measured)
        redis = median(row.redis_us_per_request or 0.0 for row in measured)
        rps = median(row.load["rps"] for row in measured)
        baseline = cpu if baseline is None else baseline
        versus = f"{cpu / baseline:.3f}x" if baseline else "-"
        lines.append(f"| {variant.label} | {len(measured)} | {rps:,.0f} | {cpu:.1f} | {redis:.1f} | {versus} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    have_wrk, have_nginx, notes = ensure_tools(install=not args.no_install)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    pinned = (os.cpu_count() or 1) > 1
    default_client = Settings.model_fields["upstream_client"].default
    plan = Plan(
        duration_s=args.seconds,
        warmup_s=args.warmup,
        rate=1000.0,
        rate_duration_s=args.seconds,
        connections=args.connections,
        server_cpu=0 if pinned else None,
        load_cpu=1 if pinned else None,
        all_cpus="0,1" if pinned else None,
        clients=(default_client,),
        default_client=default_client,
        use_wrk=have_wrk,
        use_nginx=have_nginx,
    )
    if plan.load_cpu is not None:
        os.sched_setaffinity(0, {plan.load_cpu})  # this orchestrator stays off the server's CPU
    rows: dict[str, list[Row]] = {variant.label: [] for variant in args.variants}
    with tempfile.TemporaryDirectory(prefix="abrouter-ab-") as tmp, contextlib.ExitStack() as stack:
        workdir = Path(tmp) / "run"
        workdir.mkdir()
        bench = Bench(plan, workdir, stack, args.models_dir or Path(tmp) / "models")
        for number in range(1, args.rounds + 1):
            print(f"round {number}/{args.rounds}", file=sys.stderr)
            for variant in args.variants:
                row = measure_round(bench, variant, number, route=args.route, both_cpus=args.both_cpus)
                if row is not None and not row.load["errors"]:
                    rows[variant.label].append(row)
        print()
        print(summary(args.variants, rows))
        for failure in bench.failures:
            print(f"failed: {failure}", file=sys.stderr)
        return 1 if bench.failures else 0


if __name__ == "__main__":
    sys.exit(main())
