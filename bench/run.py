"""The side-by-side benchmark: ``python -m bench.run [--smoke] [--repeat N] [--json FILE]`` (see docs/performance.md).

One run starts an nginx upstream answering fixed JSON, then measures with the same load (wrk,
32 connections, a random X-User-Id per request; server on one CPU, load generator on the other):
the upstream direct, nginx `split_clients`, the tutorial Starlette+httpx proxy, abrouter proxying
on each upstream client library (logging and metrics on), abrouter with them off, abrouter with
a local model (one model call per request, and micro-batched), abrouter with one and two workers
on both CPUs; then constant-rate runs (1 000 req/s) for the latency abrouter adds. It prints one
table, the ratios the performance targets are stated in, and optionally writes JSON.

Without wrk or nginx (and no way to install them) it falls back to bench/loadgen.py and a Python
upstream, so the smoke mode still exercises abrouter; those figures are not comparable.
Every server listens on 127.0.0.1 only and every load run is bounded in time.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import median
from typing import Any, Final, TypeVar, get_args

from bench import load, servers
from bench.loadgen import DEFAULT_BODY
from router.settings import Settings, UpstreamClientKind
from router.store.embedded import RedisServer, free_port

#: the settings that turn logging and metrics off (checked against abrouter's settings, reported when unknown)
SWITCHES: Final = {"events_enabled": "ABROUTER_EVENTS_ENABLED", "metrics_enabled": "ABROUTER_METRICS_ENABLED"}
PREDICT: Final = "/v1/experiments/bench/predict"
PREDICT_LOCAL: Final = "/v1/experiments/bench-local/predict"
CLIENT_MODULES: Final = {"httpx": "httpx", "httpx2": "httpx2", "aiohttp": "aiohttp", "httptools": "httptools"}
LOCAL_PER_REQUEST: Final = "abrouter local model (per request, on)"
LOCAL_BATCHED: Final = "abrouter local model (micro-batched, on)"
#: Units of the "returning units" row: each calls about a dozen times in a run, most of them first in the warm-up.
RETURNING_UNITS: Final = 10_000

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Plan:
    """What to run and for how long."""

    duration_s: float
    warmup_s: float
    rate: float
    rate_duration_s: float
    connections: int
    server_cpu: int | None
    load_cpu: int | None
    #: every CPU this run may use, as a taskset list: for the runs where server and load share them all
    all_cpus: str | None
    clients: tuple[str, ...]
    default_client: str
    use_wrk: bool
    use_nginx: bool
    #: start every gateway at once before measuring (the smoke mode's shortcut; idle servers share the CPU)
    start_all: bool = False


@dataclass(slots=True)
class Row:
    """One measured line of the report."""

    name: str
    mode: str  # "throughput" (closed loop) or "rate" (constant rate)
    load: dict[str, Any]
    server_cpu_s: float
    redis_cpu_s: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def cpu_us_per_request(self) -> float | None:
        requests = self.load["requests"]
        return self.server_cpu_s / requests * 1e6 if requests else None

    @property
    def redis_us_per_request(self) -> float | None:
        requests = self.load["requests"]
        return None if self.redis_cpu_s is None or not requests else self.redis_cpu_s / requests * 1e6


def ensure_tools(*, install: bool) -> tuple[bool, bool, list[str]]:
    """(wrk available, nginx available, notes); installs Debian's packages when allowed and possible."""
    notes: list[str] = []
    missing = [name for name in ("wrk", "nginx") if _which(name) is None]
    if missing and install:
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            notes.append(f"cannot install {' '.join(missing)}: needs root and apt-get")
        else:
            notes.extend(_apt_install(missing))
    have_wrk, have_nginx = _which("wrk") is not None, _which("nginx") is not None
    if not have_wrk:
        notes.append("wrk missing: throughput runs use bench/loadgen.py (figures not comparable)")
    if not have_nginx:
        notes.append("nginx missing: Python upstream, no nginx split_clients row (figures not comparable)")
    return have_wrk, have_nginx, notes


def _which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")


def _apt_install(packages: Sequence[str]) -> list[str]:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    command = ["apt-get", "install", "-y", "-q", "-o", "DPkg::Lock::Timeout=300", *packages]
    print(f"installing {' '.join(packages)} with apt-get ...", file=sys.stderr)
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900, check=False)
    if done.returncode != 0:  # most often: no package lists yet
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=600, check=False)
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900, check=False)
    return [] if done.returncode == 0 else [f"apt-get install {' '.join(packages)} failed: {done.stderr[-300:]}"]


def importable(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def bench_config(path: Path, upstream: str, models_dir: Path) -> Path:
    """Two experiments: remote variants a/b on the upstream, and two local models."""
    current, candidate = models_dir / "churn_current.joblib", models_dir / "churn_candidate.joblib"
    if not (current.exists() and candidate.exists()):
        from variants.train import train_all  # imports scikit-learn: seconds, so only when needed

        current, candidate = train_all(models_dir)
    config = {
        "experiments": [
            {
                "name": "bench",
                "control": "a",
                "variants": [
                    {"name": "a", "weight": 50, "url": f"{upstream}/a", "timeout_s": 5},
                    {"name": "b", "weight": 50, "url": f"{upstream}/b", "timeout_s": 5},
                ],
            },
            {
                "name": "bench-local",
                "control": "current",
                "variants": [
                    {"name": "current", "weight": 50, "model": str(current)},
                    {"name": "candidate", "weight": 50, "model": str(candidate)},
                ],
            },
        ]
    }
    path.write_text(json.dumps(config, indent=2))
    return path


class Bench:
    """One run: its temporary directory, its Redis and upstream, and the rows measured so far."""

    def __init__(self, plan: Plan, workdir: Path, stack: contextlib.ExitStack, models_dir: Path) -> None:
        self.plan = plan
        self.workdir = workdir
        self.stack = stack
        self.rows: list[Row] = []
        self.clients: list[dict[str, Any]] = []
        self.failures: list[str] = []
        self.redis = RedisServer(workdir / "redis")
        self.redis.start()
        stack.callback(self.redis.stop)
        assert self.redis.pid is not None
        servers.pin([self.redis.pid], plan.server_cpu)
        port = free_port()
        if plan.use_nginx:
            conf = servers.nginx_upstream_conf(workdir / "upstream", port)
            self.upstream = servers.nginx("upstream", conf, workdir / "upstream", port=port)
        else:
            self.upstream = servers.python_upstream(workdir, port=port)
        self.start(self.upstream, cpu=plan.load_cpu, path="/predict")
        self.config = bench_config(workdir / "bench.json", self.upstream.url, models_dir)

    def start(self, server: servers.Server, *, cpu: int | str | None, path: str) -> servers.Server:
        server.start(cpu=cpu, ready_path=path, body=DEFAULT_BODY)
        self.stack.callback(server.stop)
        return server

    def measure(
        self,
        name: str,
        server: servers.Server,
        path: str,
        *,
        rate: float | None = None,
        pinned: bool = True,
        units: int | None = None,
    ) -> Row | None:
        """Warm up, then one measured run; CPU is read around the measured run only.

        `units`: the load's X-User-Id drawn from that many units instead of a new one per request.

        Not `pinned`: the load generator runs on any CPU, like the server under test.
        """
        url = f"{server.url}{path}"
        plan = self.plan
        load_cpu = plan.load_cpu if pinned else plan.all_cpus
        try:
            if plan.warmup_s > 0:
                self._load(url, plan.warmup_s, rate, load_cpu, units)
            before, redis_before = server.cpu_seconds(), self._redis_cpu()
            result = self._load(url, plan.duration_s if rate is None else plan.rate_duration_s, rate, load_cpu, units)
            server_cpu, redis_cpu = server.cpu_seconds() - before, self._redis_cpu() - redis_before
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
            self.failures.append(f"{name}: {exc}")
            print(f"  {name}: FAILED: {exc}", file=sys.stderr)
            return None
        row = Row(name, "throughput" if rate is None else "rate", result, server_cpu)
        if server is not self.upstream and "abrouter" in name:
            row.redis_cpu_s = redis_cpu
        if result["errors"]:
            row.notes.append(f"{result['errors']} errors")
            self.failures.append(f"{name}: {result['errors']} of {result['requests']} requests failed")
        self.rows.append(row)
        print(f"  {_line(row)}", file=sys.stderr)
        return row

    def _load(
        self, url: str, duration_s: float, rate: float | None, cpu: int | str | None, units: int | None = None
    ) -> dict[str, Any]:
        """Closed loop (wrk, else the Python generator) without a rate; the constant-rate generator with one."""
        plan = self.plan
        if rate is None and plan.use_wrk:
            return load.wrk_closed(url, connections=plan.connections, duration_s=duration_s, cpu=cpu, units=units)
        return load.python_load(
            url,
            mode="closed" if rate is None else "rate",
            rate=rate,
            connections=plan.connections,
            duration_s=duration_s,
            cpu=cpu,
            units=units,
        )

    def _redis_cpu(self) -> float:
        return servers.cpu_seconds([self.redis.pid]) if self.redis.pid is not None else 0.0

    @contextlib.contextmanager
    def redis_on_load_cpu(self) -> Iterator[None]:
        """Redis on the load generator's CPU for a block (forks it makes meanwhile inherit that CPU)."""
        assert self.redis.pid is not None
        with moved([self.redis.pid], self.plan.load_cpu, back=self.plan.server_cpu):
            yield

    def upstream_on_server_cpu(self) -> contextlib.AbstractContextManager[None]:
        """For the direct runs the upstream is the server under test, so it gets the server's CPU."""
        return moved(servers.process_tree(self.upstream.pid), self.plan.server_cpu, back=self.plan.load_cpu)

    def abrouter(
        self, name: str, *, client: str, switches_on: bool, batching: bool = True, workers: int = 1
    ) -> servers.Server:
        """A gateway, not yet started, on `client` with logging and metrics on or off."""
        env = {"ABROUTER_UPSTREAM_CLIENT": client, "ABROUTER_LOCAL_BATCHING": "true" if batching else "false"}
        env.update({var: "true" if switches_on else "false" for var in SWITCHES.values()})
        return servers.abrouter(
            name, self.workdir, port=free_port(), config=self.config, redis_url=self.redis.url, env=env, workers=workers
        )

    @contextlib.contextmanager
    def serving(self, server: servers.Server, *, pinned: bool = True) -> Iterator[servers.Server]:
        """The server started (unless `start_all` did) for a block of measurements, stopped after it."""
        if server.process is not None:  # started by `start_all`, stopped with the others at the end
            yield server
            return
        self.start(server, cpu=self.plan.server_cpu if pinned else self.plan.all_cpus, path=PREDICT)
        try:
            yield server
        finally:
            server.stop()

    def launch_all(self, every: Sequence[servers.Server]) -> None:
        """Start servers side by side on any CPU (the smoke mode's shortcut); `ready_all` pins them."""
        self.stack.callback(servers.stop_together, every)
        for server in every:
            server.launch(cpu=self.plan.all_cpus)

    def ready_all(self, every: Sequence[servers.Server], *, unpinned: Sequence[servers.Server] = ()) -> None:
        for server in every:
            server.wait_ready(ready_path=PREDICT, body=DEFAULT_BODY)
            if server not in unpinned:
                servers.pin(servers.process_tree(server.pid), self.plan.server_cpu)

    def run(self) -> None:
        plan = self.plan
        default = plan.default_client
        tutorial = servers.tutorial_proxy(self.workdir, port=free_port(), upstream=self.upstream.url)
        gateways = [
            (self.abrouter(f"abrouter proxy ({client}, on)", client=client, switches_on=True), client)
            for client in plan.clients
        ]
        per_request = self.abrouter(LOCAL_PER_REQUEST, client=default, switches_on=True, batching=False)
        off = self.abrouter(f"abrouter proxy ({default}, off)", client=default, switches_on=False)
        # Scaling: one and two workers, each free to use both CPUs, as is the load generator (see docs).
        scaling = [self.abrouter(scaling_row(default, n), client=default, switches_on=True, workers=n) for n in (1, 2)]
        every = [tutorial, *(gateway for gateway, _ in gateways), per_request, off, *scaling]
        if plan.start_all:
            self.launch_all(every)  # they start while nginx is measured: smoke figures mean nothing anyway
        with self.upstream_on_server_cpu():
            self.measure(f"upstream direct ({'nginx' if plan.use_nginx else 'python'})", self.upstream, "/predict")
        if plan.use_nginx:
            port = free_port()
            conf = servers.nginx_split_conf(self.workdir / "split", port, self.upstream.port)
            with self.serving(servers.nginx("nginx split_clients", conf, self.workdir / "split", port=port)) as split:
                self.measure("nginx split_clients", split, PREDICT)
        if plan.start_all:
            self.ready_all(every, unpinned=scaling)
        with self.serving(tutorial):
            self.measure("tutorial Starlette+httpx", tutorial, PREDICT)
        for gateway, client in gateways:
            with self.serving(gateway):
                self.measure(gateway.name, gateway, PREDICT)
                if client == default:
                    # Off right after on: the cost of logging and metrics is a ratio of two runs that
                    # should see the same machine (an idle gateway beside the measured one costs nothing).
                    with self.serving(off):
                        self.measure(off.name, off, PREDICT)
                    # Units that come back: after the warm-up nearly every call is a returning unit's
                    # (no exposure to write), the usual case in production; the target keeps the worst.
                    self.measure(returning_row(default), gateway, PREDICT, units=RETURNING_UNITS)
                    # The same gateway with Redis (and its AOF rewrites) on the other CPU, as when
                    # Redis runs on a machine of its own: what logging costs the gateway itself.
                    with self.redis_on_load_cpu():
                        self.measure(redis_elsewhere_row(default), gateway, PREDICT)
                    self.measure(LOCAL_BATCHED, gateway, PREDICT_LOCAL)
                    with self.upstream_on_server_cpu():
                        self.measure("upstream direct", self.upstream, "/predict", rate=plan.rate)
                    self.measure(gateway.name, gateway, PREDICT, rate=plan.rate)
                    self.measure(LOCAL_BATCHED, gateway, PREDICT_LOCAL, rate=plan.rate)
        with self.serving(per_request):
            self.measure(LOCAL_PER_REQUEST, per_request, PREDICT_LOCAL)
        for workers, gateway in enumerate(scaling, start=1):
            with self.serving(gateway, pinned=False):
                self.measure(gateway.name, gateway, PREDICT, pinned=False)
                self.measure(scaling_row("local model", workers), gateway, PREDICT_LOCAL, pinned=False)
        self.measure_clients()

    def measure_clients(self) -> None:
        """Each upstream client alone (bench/clients.py) on the server's CPU, against the same upstream."""
        plan = self.plan
        seconds = plan.duration_s / 2
        args = [
            sys.executable,
            "-m",
            "bench.clients",
            f"{self.upstream.url}/predict",
            "--clients",
            ",".join(plan.clients),
        ]
        args += ["--duration", str(seconds), "--concurrency", str(plan.connections)]
        if plan.server_cpu is not None:
            args = ["taskset", "-c", str(plan.server_cpu), *args]
        try:
            done = subprocess.run(
                args, cwd=servers.ROOT, capture_output=True, text=True, timeout=len(plan.clients) * (seconds + 30)
            )
        except subprocess.TimeoutExpired as exc:
            self.failures.append(f"bench.clients: {exc}")
            return
        if done.returncode != 0:
            self.failures.append(f"bench.clients failed ({done.returncode}): {done.stderr[-1500:]}")
            return
        self.clients = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
        for result in self.clients:
            if result["errors"]:
                self.failures.append(f"client {result['client']} alone: {result['errors']} errors")
            print(f"  client {result['client']} alone: {json.dumps(result)}", file=sys.stderr)


@contextlib.contextmanager
def moved(pids: Sequence[int], cpu: int | None, *, back: int | None) -> Iterator[None]:
    """Processes pinned to `cpu` for a block, then to `back`."""
    servers.pin(pids, cpu)
    try:
        yield
    finally:
        servers.pin(pids, back)


def returning_row(client: str) -> str:
    return f"abrouter proxy ({client}, on, {RETURNING_UNITS:,} returning units)"


def redis_elsewhere_row(client: str) -> str:
    return f"abrouter proxy ({client}, on, Redis on the load CPU)"


def scaling_row(what: str, workers: int) -> str:
    """A row of the scaling runs: `what` is an upstream client (the proxy) or "local model"."""
    served = "abrouter local model (micro-batched" if what == "local model" else f"abrouter proxy ({what}"
    return f"{served}, on, {workers} worker{'s' if workers > 1 else ''}, both CPUs)"


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _line(row: Row) -> str:
    r = row.load
    return (
        f"{row.name}: {_fmt(r['rps'], 0)} req/s, p50 {_fmt(r['p50_ms'])} ms, p99 {_fmt(r['p99_ms'])} ms, "
        f"{_fmt(row.cpu_us_per_request, 0)} us CPU/req, {r['errors']} errors"
    )


def find(rows: Sequence[Row], mode: str, prefix: str) -> Row | None:
    return next((row for row in rows if row.mode == mode and row.name.startswith(prefix)), None)


@dataclass(frozen=True, slots=True)
class Ratio:
    """One figure a target is stated in, printed as ``label: value<unit><note>``."""

    label: str
    value: float
    unit: str  # printed right after the number: "%" (value is a percentage), "x" or " ms"
    digits: int
    note: str  # printed after the figure: the target, or what it is relative to


def ratio_figures(rows: Sequence[Row], plan: Plan, switches_wired: bool) -> list[Ratio]:
    """The figures the targets of docs/performance.md are stated in."""
    figures = []
    main = find(rows, "throughput", f"abrouter proxy ({plan.default_client}, on)")
    off = find(rows, "throughput", f"abrouter proxy ({plan.default_client}, off)")
    split = find(rows, "throughput", "nginx split_clients")
    tutorial = find(rows, "throughput", "tutorial")
    if main and split:
        share = main.load["rps"] / split.load["rps"]
        figures.append(Ratio("abrouter / nginx split_clients req/s", share * 100, "%", 1, " (target >= 15%)"))
    if main and tutorial:
        gain = main.load["rps"] / tutorial.load["rps"]
        figures.append(Ratio("abrouter / tutorial proxy req/s", gain, "x", 1, " (target >= 20x)"))
    if main and off:
        cost = 1 - main.load["rps"] / off.load["rps"]
        wired = "" if switches_wired else " [switches not wired yet: on and off are the same gateway]"
        figures.append(Ratio("logging + metrics cost", cost * 100, "%", 1, f" of throughput (target <= 10%){wired}"))
    returning = find(rows, "throughput", returning_row(plan.default_client))
    if returning and off:
        cost = 1 - returning.load["rps"] / off.load["rps"]
        label = f"logging + metrics cost, {RETURNING_UNITS:,} returning units"
        figures.append(Ratio(label, cost * 100, "%", 1, " of throughput (the target's measure: every call a new unit)"))
    elsewhere = find(rows, "throughput", redis_elsewhere_row(plan.default_client))
    if elsewhere and off:
        cost = 1 - elsewhere.load["rps"] / off.load["rps"]
        label = "logging + metrics cost, Redis on the other CPU"
        figures.append(Ratio(label, cost * 100, "%", 1, " of throughput (the target's measure is the line above)"))
    for client in plan.clients:
        row = find(rows, "throughput", f"abrouter proxy ({client}, on)")
        if row and main:
            relative = row.load["rps"] / main.load["rps"]
            figures.append(Ratio(f"upstream client {client}", relative, "x", 2, " the default's req/s"))
    direct = find(rows, "rate", "upstream direct")
    proxied = find(rows, "rate", "abrouter proxy")
    local = find(rows, "rate", LOCAL_BATCHED)
    if direct and proxied:
        added = proxied.load["p99_ms"] - direct.load["p99_ms"]
        label = f"p99 added over direct at {plan.rate:g} req/s"
        figures.append(Ratio(label, added, " ms", 2, " (target <= 2 ms)"))
    batched, per_request = find(rows, "throughput", LOCAL_BATCHED), find(rows, "throughput", LOCAL_PER_REQUEST)
    if batched and per_request:
        gain = batched.load["rps"] / per_request.load["rps"]
        figures.append(Ratio("local model micro-batched / per request req/s", gain, "x", 2, " (target >= 2.5x)"))
    if local:
        label = f"local model (micro-batched) p99 at {plan.rate:g} req/s"
        figures.append(Ratio(label, local.load["p99_ms"], " ms", 2, " (target <= 10 ms)"))
    for what, shared in ((plan.default_client, "the load generator and the upstream"), ("local model", "wrk")):
        one = find(rows, "throughput", scaling_row(what, 1))
        two = find(rows, "throughput", scaling_row(what, 2))
        if one and two:
            label = (
                f"2 workers / 1 worker req/s, {'proxy' if what != 'local model' else what} "
                f"(both CPUs, shared with {shared})"
            )
            figures.append(Ratio(label, two.load["rps"] / one.load["rps"], "x", 2, " (target >= 1.7x)"))
    return figures


def ratio_lines(runs: Sequence[Sequence[Ratio]]) -> list[str]:
    """One line per figure: its value after one run, else the median, range and count over the runs."""
    if len(runs) == 1:
        return [f"{r.label}: {r.value:.{r.digits}f}{r.unit}{r.note}" for r in runs[0]]
    lines = []
    for group in _grouped(runs, lambda ratio: ratio.label):
        r, stats = group[0], _stats(ratio.value for ratio in group)
        assert stats is not None
        low, high = (f"{stats[k]:.{r.digits}f}" for k in ("min", "max"))
        lines.append(
            f"{r.label}: {stats['median']:.{r.digits}f}{r.unit} "
            f"({low}{_dash(stats)}{high}{r.unit}, {len(group)} runs){r.note}"
        )
    return lines


def _grouped(runs: Sequence[Sequence[T]], key: Callable[[T], Hashable]) -> list[list[T]]:
    """The same item (by `key`) of every run that has it, in the order they first appear."""
    groups: dict[Hashable, list[T]] = {}
    for run in runs:
        for item in run:
            groups.setdefault(key(item), []).append(item)
    return list(groups.values())


def _stats(values: Iterable[float | None]) -> dict[str, float] | None:
    present = [value for value in values if value is not None]
    return {"median": median(present), "min": min(present), "max": max(present)} if present else None


def _dash(stats: dict[str, float]) -> str:
    """Between the ends of a range: "-" unless an end is negative, where it would read as a minus sign."""
    return " to " if stats["min"] < 0 else "-"


def _spread(values: Sequence[float | None], digits: int = 2) -> str:
    """One figure as ``median (min-max)`` over the runs, or as it is after one run."""
    stats = _stats(values)
    if stats is None or len(values) == 1:
        return _fmt(None if stats is None else stats["median"], digits)
    low, high = _fmt(stats["min"], digits), _fmt(stats["max"], digits)
    return f"{_fmt(stats['median'], digits)} ({low}{_dash(stats)}{high})"


def _row_key(row: Row) -> tuple[str, str]:
    return row.mode, row.name  # unique within a run: each row is measured once


def _runs_note(group: Sequence[Any], runs: int) -> str:
    return "" if len(group) == runs else f" [{len(group)} of {runs} runs]"


def table(runs: Sequence[Sequence[Row]], plan: Plan) -> str:
    """Markdown tables, so a run can be pasted into docs/performance.md as it is.

    Over several runs every figure is the median with the range in brackets, and errors the total.
    """
    groups = _grouped(runs, _row_key)
    out = [
        "| what | req/s | p50 ms | p99 ms | server CPU us/req | Redis CPU us/req | errors |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for group in groups:
        if group[0].mode == "throughput":
            loads = [row.load for row in group]
            out.append(
                f"| {group[0].name}{_runs_note(group, len(runs))} | {_spread([r['rps'] for r in loads], 0)} | "
                f"{_spread([r['p50_ms'] for r in loads])} | {_spread([r['p99_ms'] for r in loads])} | "
                f"{_spread([row.cpu_us_per_request for row in group], 0)} | "
                f"{_spread([row.redis_us_per_request for row in group], 0)} | {sum(r['errors'] for r in loads)} |"
            )
    out += [
        "",
        f"Constant rate, {plan.rate:g} req/s for {plan.rate_duration_s:g} s (latency from each request's due time):",
        "",
        "| what | achieved req/s | p50 ms | p90 ms | p99 ms | max ms | generator lag p99 ms | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for group in groups:
        if group[0].mode == "rate":
            loads = [row.load for row in group]
            out.append(
                f"| {group[0].name}{_runs_note(group, len(runs))} | {_spread([r['rps'] for r in loads], 0)} | "
                f"{_spread([r['p50_ms'] for r in loads])} | {_spread([r['p90_ms'] for r in loads])} | "
                f"{_spread([r['p99_ms'] for r in loads])} | {_spread([r['max_ms'] for r in loads])} | "
                f"{_spread([r.get('lag_p99_ms') for r in loads])} | {sum(r['errors'] for r in loads)} |"
            )
    return "\n".join(out)


def clients_table(runs: Sequence[Sequence[dict[str, Any]]]) -> str:
    out = [
        "| client alone | calls/s | CPU us/call | p50 ms | p99 ms | errors |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for group in _grouped(runs, lambda result: result["client"]):
        out.append(
            f"| {group[0]['client']}{_runs_note(group, len(runs))} | {_spread([r['calls_per_s'] for r in group], 0)} | "
            f"{_spread([r['cpu_us_per_call'] for r in group], 0)} | {_spread([r['p50_ms'] for r in group])} | "
            f"{_spread([r['p99_ms'] for r in group])} | {sum(r['errors'] for r in group)} |"
        )
    return "\n".join(out)


@dataclass(slots=True)
class Run:
    """What one repetition of the plan measured."""

    number: int
    started: str
    load_average: tuple[float, float, float]
    rows: list[Row]
    clients: list[dict[str, Any]]
    failures: list[str]
    ratios: list[Ratio]


def run_once(number: int, plan: Plan, workdir: Path, models_dir: Path, switches_wired: bool) -> Run:
    """The whole plan once, every server stopped before it returns; RuntimeError when a server would not start."""
    workdir.mkdir(parents=True)
    started, load_average = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), os.getloadavg()
    with contextlib.ExitStack() as stack:
        bench = Bench(plan, workdir, stack, models_dir)
        bench.run()
    ratios = ratio_figures(bench.rows, plan, switches_wired)
    return Run(number, started, load_average, bench.rows, bench.clients, bench.failures, ratios)


def _rows_json(rows: Sequence[Row]) -> list[dict[str, Any]]:
    return [{**asdict(row), "cpu_us_per_request": row.cpu_us_per_request} for row in rows]


def medians_json(runs: Sequence[Run]) -> dict[str, Any]:
    """Every figure of the final tables and ratio lines as {median, min, max} (null when no run has it)."""
    rows = []
    for group in _grouped([run.rows for run in runs], _row_key):
        loads = [row.load for row in group]
        figures = {key: _stats(r.get(key) for r in loads) for key in ("rps", "p50_ms", "p90_ms", "p99_ms", "max_ms")}
        figures["lag_p99_ms"] = _stats(r.get("lag_p99_ms") for r in loads)
        figures["cpu_us_per_request"] = _stats(row.cpu_us_per_request for row in group)
        figures["redis_us_per_request"] = _stats(row.redis_us_per_request for row in group)
        errors = sum(r["errors"] for r in loads)
        rows.append({"name": group[0].name, "mode": group[0].mode, "runs": len(group), "errors": errors, **figures})
    per_run = [run.ratios for run in runs]
    ratios = [
        {"label": group[0].label, "unit": group[0].unit, "note": group[0].note, "runs": len(group), "text": text}
        | (_stats(ratio.value for ratio in group) or {})
        for group, text in zip(_grouped(per_run, lambda ratio: ratio.label), ratio_lines(per_run), strict=True)
    ]
    clients = [
        {"client": group[0]["client"], "runs": len(group), "errors": sum(r["errors"] for r in group)}
        | {key: _stats(r[key] for r in group) for key in ("calls_per_s", "cpu_us_per_call", "p50_ms", "p99_ms")}
        for group in _grouped([run.clients for run in runs], lambda result: result["client"])
    ]
    return {"rows": rows, "ratios": ratios, "clients_alone": clients}


def environment(plan: Plan, notes: Sequence[str]) -> dict[str, Any]:
    cpu_model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.processor(),
    )
    return {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpu": cpu_model,
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "plan": asdict(plan),
        "notes": list(notes),
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="everything for about a second each (CI)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per throughput run (default 10)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of unmeasured load first (default 2)")
    parser.add_argument("--rate", type=float, default=1000.0, help="constant rate, req/s (default 1000)")
    parser.add_argument("--rate-duration", type=float, default=10.0, help="seconds of the constant-rate runs")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument(
        "--clients",
        default=",".join(get_args(UpstreamClientKind)),
        help="upstream client libraries to compare (default: all that are installed)",
    )
    parser.add_argument("--no-install", action="store_true", help="never apt-get; fall back to the Python tools")
    parser.add_argument(
        "--python-tools", action="store_true", help="use the Python generator and upstream even if wrk/nginx exist"
    )
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--load-cpu", type=int, default=1)
    parser.add_argument("--models-dir", type=Path, default=None, help="where the example models are trained")
    parser.add_argument("--json", type=Path, help="also write every figure here")
    parser.add_argument(
        "--repeat", type=int, default=1, help="run the whole plan N times; report medians and ranges (default 1)"
    )
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.smoke:
        args.duration, args.warmup, args.rate, args.rate_duration = 1.0, 0.0, 200.0, 1.0
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    notes: list[str] = []
    if args.python_tools:
        have_wrk = have_nginx = False
        notes.append("--python-tools: bench/loadgen.py and a Python upstream (figures not comparable)")
    else:
        have_wrk, have_nginx, tool_notes = ensure_tools(install=not args.no_install)
        notes += tool_notes
    pinned = (os.cpu_count() or 1) > 1 and shutil.which("taskset") is not None
    if not pinned:
        notes.append("one CPU or no taskset: server and load generator share the machine unpinned")
    clients = []
    for client in args.clients.split(","):
        if client not in CLIENT_MODULES:
            print(f"unknown client {client!r}; choose from {', '.join(CLIENT_MODULES)}", file=sys.stderr)
            return 2
        if importable(CLIENT_MODULES[client]):
            clients.append(client)
        else:
            notes.append(f"upstream client {client}: its library is not installed, not measured")
    default_client = Settings.model_fields["upstream_client"].default
    if default_client not in clients:
        clients.insert(0, default_client)
    wired = all(name in Settings.model_fields for name in SWITCHES)
    if not wired:
        notes.append(
            "TODO: " + " / ".join(SWITCHES.values()) + " are not abrouter settings yet; 'on' and 'off' rows are "
            "the same configuration until they are wired"
        )
    plan = Plan(
        duration_s=args.duration,
        warmup_s=args.warmup,
        rate=args.rate,
        rate_duration_s=args.rate_duration,
        connections=args.connections,
        server_cpu=args.server_cpu if pinned else None,
        load_cpu=args.load_cpu if pinned else None,
        all_cpus=",".join(str(cpu) for cpu in sorted(os.sched_getaffinity(0))) if pinned else None,
        clients=tuple(clients),
        default_client=default_client,
        use_wrk=have_wrk,
        use_nginx=have_nginx,
        start_all=args.smoke,
    )
    if plan.load_cpu is not None:
        os.sched_setaffinity(0, {plan.load_cpu})  # this orchestrator stays off the server's CPU
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    runs: list[Run] = []
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="abrouter-bench-") as tmp:
        models_dir = args.models_dir or Path(tmp) / "models"  # shared by the runs: trained once
        for number in range(1, args.repeat + 1):
            if args.repeat > 1:
                print(f"run {number}/{args.repeat}", file=sys.stderr)
            try:
                run = run_once(number, plan, Path(tmp) / f"run-{number}", models_dir, wired)
            except RuntimeError as exc:  # a server that would not start: nothing sensible to report for this run
                print(f"error: {exc}", file=sys.stderr)
                failures.append(f"run {number}: {exc}")
                continue
            runs.append(run)
            if args.repeat > 1:
                failures += [f"run {number}: {failure}" for failure in run.failures]
                for line in ratio_lines([run.ratios]):
                    print(f"  - {line}", file=sys.stderr)
            else:
                failures += run.failures
    if not runs:
        return 1
    print()
    if args.repeat > 1:
        print(f"Median of {len(runs)} runs (of {args.repeat}), lowest-highest in brackets; errors are totals:")
        print()
    print(table([run.rows for run in runs], plan))
    print()
    if any(run.clients for run in runs):
        print(f"Upstream clients alone ({plan.connections} concurrent calls, one process on the server CPU):")
        print()
        print(clients_table([run.clients for run in runs]))
        print()
    for line in ratio_lines([run.ratios for run in runs]):
        print(f"- {line}")
    for note in notes:
        print(f"- note: {note}")
    if args.json:
        report: dict[str, Any] = {"environment": environment(plan, notes)}
        if args.repeat == 1:
            run = runs[0]
            report |= {"rows": _rows_json(run.rows), "ratios": ratio_lines([run.ratios]), "clients_alone": run.clients}
        else:
            every = [
                {
                    "run": run.number,
                    "started": run.started,
                    "load_average": run.load_average,
                    "rows": _rows_json(run.rows),
                    "ratios": [asdict(ratio) | {"text": ratio_lines([[ratio]])[0]} for ratio in run.ratios],
                    "clients_alone": run.clients,
                    "failures": run.failures,
                }
                for run in runs
            ]
            report |= {"repeat": args.repeat, "runs": every, "medians": medians_json(runs)}
        report["failures"] = failures
        args.json.write_text(json.dumps(report, indent=2))
    for failure in failures:
        print(f"FAILED: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
