"""The side-by-side benchmark: ``python -m bench.run [--smoke] [--json FILE]`` (see docs/performance.md).

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
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final, get_args

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

    def start(self, server: servers.Server, *, cpu: int | None, path: str) -> servers.Server:
        server.start(cpu=cpu, ready_path=path, body=DEFAULT_BODY)
        self.stack.callback(server.stop)
        return server

    def measure(
        self, name: str, server: servers.Server, path: str, *, rate: float | None = None, pinned: bool = True
    ) -> Row | None:
        """Warm up, then one measured run; CPU is read around the measured run only.

        Not `pinned`: the load generator runs on any CPU, like the server under test.
        """
        url = f"{server.url}{path}"
        plan = self.plan
        load_cpu = plan.load_cpu if pinned else plan.all_cpus
        try:
            if plan.warmup_s > 0:
                self._load(url, plan.warmup_s, rate, load_cpu)
            before, redis_before = server.cpu_seconds(), self._redis_cpu()
            result = self._load(url, plan.duration_s if rate is None else plan.rate_duration_s, rate, load_cpu)
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

    def _load(self, url: str, duration_s: float, rate: float | None, cpu: int | str | None) -> dict[str, Any]:
        """Closed loop (wrk, else the Python generator) without a rate; the constant-rate generator with one."""
        plan = self.plan
        if rate is None and plan.use_wrk:
            return load.wrk_closed(url, connections=plan.connections, duration_s=duration_s, cpu=cpu)
        return load.python_load(
            url,
            mode="closed" if rate is None else "rate",
            rate=rate,
            connections=plan.connections,
            duration_s=duration_s,
            cpu=cpu,
        )

    def _redis_cpu(self) -> float:
        return servers.cpu_seconds([self.redis.pid]) if self.redis.pid is not None else 0.0

    @contextlib.contextmanager
    def upstream_on_server_cpu(self) -> Iterator[None]:
        """For the direct runs the upstream is the server under test, so it gets the server's CPU."""
        tree = servers.process_tree(self.upstream.pid)
        servers.pin(tree, self.plan.server_cpu)
        try:
            yield
        finally:
            servers.pin(tree, self.plan.load_cpu)

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


def ratios(rows: Sequence[Row], plan: Plan, switches_wired: bool) -> list[str]:
    """The figures the targets of docs/performance.md are stated in."""
    lines = []
    main = find(rows, "throughput", f"abrouter proxy ({plan.default_client}, on)")
    off = find(rows, "throughput", f"abrouter proxy ({plan.default_client}, off)")
    split = find(rows, "throughput", "nginx split_clients")
    tutorial = find(rows, "throughput", "tutorial")
    if main and split:
        share = main.load["rps"] / split.load["rps"]
        lines.append(f"abrouter / nginx split_clients req/s: {share:.1%} (target >= 15%)")
    if main and tutorial:
        lines.append(f"abrouter / tutorial proxy req/s: {main.load['rps'] / tutorial.load['rps']:.1f}x (target >= 20x)")
    if main and off:
        cost = 1 - main.load["rps"] / off.load["rps"]
        wired = "" if switches_wired else " [switches not wired yet: on and off are the same gateway]"
        lines.append(f"logging + metrics cost: {cost:.1%} of throughput (target <= 10%){wired}")
    for client in plan.clients:
        row = find(rows, "throughput", f"abrouter proxy ({client}, on)")
        if row and main:
            lines.append(f"upstream client {client}: {row.load['rps'] / main.load['rps']:.2f}x the default's req/s")
    direct = find(rows, "rate", "upstream direct")
    proxied = find(rows, "rate", "abrouter proxy")
    local = find(rows, "rate", LOCAL_BATCHED)
    if direct and proxied:
        added = proxied.load["p99_ms"] - direct.load["p99_ms"]
        lines.append(f"p99 added over direct at {plan.rate:g} req/s: {added:.2f} ms (target <= 2 ms)")
    batched, per_request = find(rows, "throughput", LOCAL_BATCHED), find(rows, "throughput", LOCAL_PER_REQUEST)
    if batched and per_request:
        gain = batched.load["rps"] / per_request.load["rps"]
        lines.append(f"local model micro-batched / per request req/s: {gain:.2f}x (target >= 2.5x)")
    if local:
        lines.append(
            f"local model (micro-batched) p99 at {plan.rate:g} req/s: {local.load['p99_ms']:.2f} ms (target <= 10 ms)"
        )
    for what, shared in ((plan.default_client, "the load generator and the upstream"), ("local model", "wrk")):
        one = find(rows, "throughput", scaling_row(what, 1))
        two = find(rows, "throughput", scaling_row(what, 2))
        if one and two:
            lines.append(
                f"2 workers / 1 worker req/s, {'proxy' if what != 'local model' else what} "
                f"(both CPUs, shared with {shared}): {two.load['rps'] / one.load['rps']:.2f}x (target >= 1.7x)"
            )
    return lines


def table(rows: Sequence[Row], plan: Plan) -> str:
    """Markdown tables, so a run can be pasted into docs/performance.md as it is."""
    out = [
        "| what | req/s | p50 ms | p99 ms | server CPU us/req | Redis CPU us/req | errors |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        if row.mode == "throughput":
            r = row.load
            out.append(
                f"| {row.name} | {_fmt(r['rps'], 0)} | {_fmt(r['p50_ms'])} | {_fmt(r['p99_ms'])} | "
                f"{_fmt(row.cpu_us_per_request, 0)} | {_fmt(row.redis_us_per_request, 0)} | {r['errors']} |"
            )
    out += [
        "",
        f"Constant rate, {plan.rate:g} req/s for {plan.rate_duration_s:g} s (latency from each request's due time):",
        "",
        "| what | achieved req/s | p50 ms | p90 ms | p99 ms | max ms | generator lag p99 ms | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        if row.mode == "rate":
            r = row.load
            out.append(
                f"| {row.name} | {_fmt(r['rps'], 0)} | {_fmt(r['p50_ms'])} | {_fmt(r['p90_ms'])} | "
                f"{_fmt(r['p99_ms'])} | {_fmt(r['max_ms'])} | {_fmt(r.get('lag_p99_ms'))} | {r['errors']} |"
            )
    return "\n".join(out)


def clients_table(results: Sequence[dict[str, Any]]) -> str:
    out = [
        "| client alone | calls/s | CPU us/call | p50 ms | p99 ms | errors |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        out.append(
            f"| {r['client']} | {_fmt(r['calls_per_s'], 0)} | {_fmt(r['cpu_us_per_call'], 0)} | "
            f"{_fmt(r['p50_ms'])} | {_fmt(r['p99_ms'])} | {r['errors']} |"
        )
    return "\n".join(out)


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
    args = parser.parse_args(argv)
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
    with tempfile.TemporaryDirectory(prefix="abrouter-bench-") as tmp, contextlib.ExitStack() as stack:
        workdir = Path(tmp)
        models_dir = args.models_dir or workdir / "models"
        try:
            bench = Bench(plan, workdir, stack, models_dir)
            bench.run()
        except RuntimeError as exc:  # a server that would not start: nothing sensible to report
            print(f"error: {exc}", file=sys.stderr)
            return 1
        rows, failures, clients = bench.rows, bench.failures, bench.clients
    print()
    print(table(rows, plan))
    print()
    if clients:
        print(f"Upstream clients alone ({plan.connections} concurrent calls, one process on the server CPU):")
        print()
        print(clients_table(clients))
        print()
    for line in ratios(rows, plan, wired):
        print(f"- {line}")
    for note in notes:
        print(f"- note: {note}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "environment": environment(plan, notes),
                    "rows": [{**asdict(row), "cpu_us_per_request": row.cpu_us_per_request} for row in rows],
                    "ratios": ratios(rows, plan, wired),
                    "clients_alone": clients,
                    "failures": failures,
                },
                indent=2,
            )
        )
    for failure in failures:
        print(f"FAILED: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
