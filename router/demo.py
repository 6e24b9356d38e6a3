"""`abrouter demo`: the whole loop on one machine, with an effect whose size is known in advance.

It trains the example models, starts the example model server and a gateway (with its embedded
Redis, in a temporary directory), sends synthetic users through the gateway, reports their
conversions and revenue as outcomes, and prints the experiment report; the HTML page is written to
a file. The users convert with a probability fixed per variant (`PLANTED`), so a reader can check
that the report finds the effect that was planted. Everything it starts is stopped on exit,
Ctrl-C and SIGTERM included; the children also get SIGTERM from Linux if the demo is killed.

Needs a source checkout: the example models and model server live in the `variants` package.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, cast

import aiohttp
import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from router.client import AdminClient
from router.config.schema import Experiment
from router.errors import GatewayUnreachable, RouterError
from router.reports.model import Report
from router.reports.render import report_renderable
from router.store.embedded import die_with_parent, free_port

EXIT_OK, EXIT_FAILURE = 0, 1
EXPERIMENT: Final = "demo"
CONTROL, CANDIDATE = "current", "candidate"
DEFAULT_UNITS: Final = 4000
#: a run whose estimates are close to the planted lift; other seeds scatter around it as they should
DEFAULT_SEED: Final = 3
DEFAULT_OUTPUT: Final = Path("abrouter-demo-report.html")
#: calls in flight at once: enough to keep one gateway worker busy, few enough to stay gentle
CONCURRENCY: Final = 32
OUTCOMES_PER_CALL: Final = 500
START_TIMEOUT_S: Final = 60.0
CALL_TIMEOUT_S: Final = 10.0
#: how long the statistics may take to reach Redis after the last call (the event writer batches)
SETTLE_TIMEOUT_S: Final = 20.0
STOP_TIMEOUT_S: Final = 15.0


@dataclass(frozen=True, slots=True)
class PlantedEffect:
    """What the synthetic users do: the truth the report should recover."""

    conversion: Mapping[str, float]  # probability that a unit converts, per variant
    order_value: float  # mean revenue of a conversion, the same in every variant

    def lift(self) -> float:
        """The planted relative lift of the candidate, on conversion and on revenue per unit alike."""
        return self.conversion[CANDIDATE] / self.conversion[CONTROL] - 1.0


PLANTED: Final = PlantedEffect(conversion={CONTROL: 0.10, CANDIDATE: 0.14}, order_value=40.0)


@dataclass(frozen=True, slots=True)
class SyntheticUnit:
    """One user: its calls' feature rows and its luck, drawn before it is assigned a variant."""

    id: str
    rows: tuple[tuple[float, ...], ...]
    draw: float  # converts when below the conversion probability of its variant
    order_value: float


@dataclass(slots=True)
class Tally:
    """What the demo sent and saw, to check the report against."""

    calls: Counter[str] = field(default_factory=Counter)  # per X-Variant
    errors: Counter[str] = field(default_factory=Counter)
    units: Counter[str] = field(default_factory=Counter)  # exposed: hashed or sticky
    conversions: Counter[str] = field(default_factory=Counter)


def synthetic_units(count: int, seed: int) -> Iterator[SyntheticUnit]:
    """`count` users with random ids (sequential ids hash less evenly at small counts), 1 to 3 calls each."""
    rng = random.Random(seed)
    seen: set[str] = set()
    while len(seen) < count:
        unit_id = f"user-{rng.getrandbits(64):016x}"
        if unit_id in seen:
            continue
        seen.add(unit_id)
        calls = 1 + (rng.random() < 0.3) + (rng.random() < 0.1)
        rows = tuple(
            (round(rng.uniform(0, 72), 1), round(rng.uniform(18, 120), 2), float(rng.randint(0, 5)), rng.random())
            for _ in range(calls)
        )
        value = round(rng.gammavariate(2.0, PLANTED.order_value / 2.0), 2)
        yield SyntheticUnit(unit_id, rows, rng.random(), value)


def run(units: int, *, seed: int, output: Path, console: Console) -> int:
    """The demo from start to end; 0 when the report was printed and written, 1 on failure or interruption."""
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM cleans up like Ctrl-C
    try:
        with contextlib.ExitStack() as cleanup:
            return _run(units, seed=seed, output=output, console=console, cleanup=cleanup)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]: everything the demo started is stopped")
        return EXIT_FAILURE
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run(units: int, *, seed: int, output: Path, console: Console, cleanup: contextlib.ExitStack) -> int:
    try:
        from variants.train import train_models
    except ImportError:
        raise RouterError(
            "abrouter demo needs the example models of a source checkout (the `variants` package); "
            "run it from the abrouter repository"
        ) from None
    home = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="abrouter-demo-")))
    console.print(f"training the example models in {home / 'models'}")
    models = {m.name: m.path for m in train_models(home / "models")}

    upstream_port, port = free_port(), free_port()
    url = f"http://127.0.0.1:{port}"
    config = home / "demo.json"
    config.write_text(json.dumps({"experiments": [_experiment(upstream_port, models["churn_candidate"])]}))
    token = secrets.token_urlsafe(24)
    model_server = [sys.executable, "-m", "variants.model_server", "--port", str(upstream_port)]
    serve = [sys.executable, "-m", "router", "serve", "--config", str(config), "--port", str(port)]
    # Both start at once: the gateway needs the model server only when calls arrive.
    servers = [
        _launch(
            f"the model server ({CONTROL})",
            [*model_server, "--model", str(models["churn_current"]), "--name", "churn-current"],
            ready=f"http://127.0.0.1:{upstream_port}/healthz",
            log=home / "model-server.log",
            cleanup=cleanup,
        ),
        _launch(
            "the gateway",
            [*serve, "--data-dir", str(home / "data"), "--log-level", "warning"],
            ready=f"{url}/readyz",
            log=home / "gateway.log",
            cleanup=cleanup,
            env={
                **{k: v for k, v in os.environ.items() if not k.startswith("ABROUTER_")},
                "ABROUTER_ADMIN_TOKEN": token,
                # One row per call: OpenMP threads of the boosted candidate cost ~5x more CPU than they save.
                "OMP_NUM_THREADS": "1",
            },
        ),
    ]
    _wait_until_ready(servers)
    console.print(f"model server ({CONTROL}) on http://127.0.0.1:{upstream_port} (pid {servers[0].process.pid})")
    console.print(f"gateway on {url} (pid {servers[1].process.pid}), embedded Redis under {home / 'data'}")

    console.print(
        f"sending {units:,} users to experiment {EXPERIMENT!r}; planted: "
        f"{CONTROL} converts {PLANTED.conversion[CONTROL]:.0%}, {CANDIDATE} {PLANTED.conversion[CANDIDATE]:.0%} "
        f"(relative lift {PLANTED.lift():+.0%} on conversion and on revenue per user)"
    )
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task("users", total=units)
        tally = asyncio.run(send_traffic(url, synthetic_units(units, seed), lambda: progress.advance(task)))
    console.print(
        f"sent {sum(tally.calls.values()):,} prediction calls ({_counts(tally.calls)}; "
        f"errors: {_counts(tally.errors)}) "
        f"and {sum(tally.conversions.values()):,} conversions ({_counts(tally.conversions)}); exposed users: "
        f"{_counts(tally.units)}"
    )

    with AdminClient(url, token, timeout_s=CALL_TIMEOUT_S) as client:
        settled = wait_for_statistics(client, tally, timeout_s=SETTLE_TIMEOUT_S)
        report = cast(Report, client.report(EXPERIMENT))  # the gateway's JSON is a Report
        page = client.report_html(EXPERIMENT)
    console.print(report_renderable(report))
    try:
        output.write_text(page, encoding="utf-8")
    except OSError as exc:
        raise RouterError(f"cannot write the HTML report to {output}: {exc.strerror or exc}") from None
    console.print(f"HTML report written to {output.resolve()}")
    if not settled:
        console.print(
            "[red]the report does not count every call and outcome the demo sent[/] "
            f"(sent: units {dict(tally.units)}, calls {dict(tally.calls)}); see {home / 'gateway.log'}"
        )
        return EXIT_FAILURE
    return EXIT_OK


def _experiment(upstream_port: int, candidate_model: Path) -> dict[str, Any]:
    """The demo experiment: the remote current model against the in-process candidate, 50/50."""
    experiment = Experiment.model_validate(
        {
            "name": EXPERIMENT,
            "description": "abrouter demo: synthetic users with a planted lift of the candidate",
            "control": CONTROL,
            "fallback": "none",  # the demo counts each call for the variant in X-Variant: no silent substitute
            "variants": [
                {"name": CONTROL, "weight": 50, "url": f"http://127.0.0.1:{upstream_port}/predict", "timeout_s": 2.0},
                {"name": CANDIDATE, "weight": 50, "model": str(candidate_model)},
            ],
            "metrics": [{"name": "converted", "kind": "binomial"}, {"name": "revenue", "kind": "mean"}],
        }
    )
    return experiment.model_dump(mode="json")


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{name} {counter[name]:,}" for name in (CONTROL, CANDIDATE))


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    headers: Mapping[str, str]
    body: bytes


async def send_traffic(url: str, population: Iterable[SyntheticUnit], advance: Callable[[], None]) -> Tally:
    """Every user's calls through the gateway, then its outcomes; `advance` after each user.

    A fixed pool of workers takes users one at a time, so memory stays flat whatever their number.
    aiohttp, not httpx: httpx's connection pool costs more CPU per call than the gateway does.
    """
    tally = Tally()
    pending: list[dict[str, Any]] = []
    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    timeout = aiohttp.ClientTimeout(total=CALL_TIMEOUT_S)
    async with aiohttp.ClientSession(url, connector=connector, timeout=timeout) as session:

        async def post_outcomes(batch: list[dict[str, Any]]) -> None:
            answer = await _post(session, f"/v1/experiments/{EXPERIMENT}/outcomes", {"outcomes": batch})
            if answer.status != 202:
                raise RouterError(f"the gateway refused outcomes: {answer.status} {answer.body[:300]!r}")

        async def user(unit: SyntheticUnit) -> None:
            variant = reason = ""
            for row in unit.rows:
                answer = await _post(
                    session,
                    f"/v1/experiments/{EXPERIMENT}/predict",
                    {"instances": [list(row)]},
                    headers={"X-User-Id": unit.id},
                )
                variant = answer.headers.get("x-variant", "")
                reason = answer.headers.get("x-assignment", "")
                tally.calls[variant] += 1
                if answer.status >= 500:
                    tally.errors[variant] += 1
            if reason in ("hashed", "sticky"):
                tally.units[variant] += 1
                if unit.draw < PLANTED.conversion.get(variant, 0.0):
                    tally.conversions[variant] += 1
                    pending.append({"unit": unit.id, "metric": "converted", "value": 1})
                    pending.append({"unit": unit.id, "metric": "revenue", "value": unit.order_value})
            if len(pending) >= OUTCOMES_PER_CALL:
                batch = pending[:]
                pending.clear()
                await post_outcomes(batch)
            advance()

        queue = iter(population)

        async def worker() -> None:
            for unit in queue:  # shared by every worker: each user is taken once
                await user(unit)

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        if pending:
            await post_outcomes(pending)
    return tally


async def _post(
    session: aiohttp.ClientSession, path: str, body: Any, *, headers: Mapping[str, str] | None = None
) -> _Answer:
    """One call; aiohttp's errors become `GatewayUnreachable` here and nowhere else."""
    try:
        async with session.post(path, json=body, headers=headers) as response:
            return _Answer(response.status, response.headers, await response.read())
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise GatewayUnreachable(f"the demo gateway stopped answering {path}: {type(exc).__name__}: {exc}") from None


def wait_for_statistics(client: AdminClient, tally: Tally, *, timeout_s: float) -> bool:
    """Poll the report until it counts every exposure, call and conversion sent; False at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        if _counts_everything(cast(Report, client.report(EXPERIMENT)), tally):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)


def _counts_everything(report: Report, tally: Tally) -> bool:
    variants = {v["name"]: v for v in report["variants"]}
    converted = next(m for m in report["metrics"] if m["name"] == "converted")
    conversions = {arm["variant"]: round((arm["mean"] or 0.0) * arm["units"]) for arm in converted["arms"]}
    return all(
        variants[name]["units"] == tally.units[name]
        and variants[name]["requests"] == tally.calls[name]
        and conversions[name] == tally.conversions[name]
        for name in (CONTROL, CANDIDATE)
    )


@dataclass(frozen=True, slots=True)
class _Server:
    """A server the demo started: ready once `ready` answers 200; its output goes to `log`."""

    name: str
    process: subprocess.Popen[bytes]
    ready: str
    log: Path


def _launch(
    name: str,
    args: Sequence[str],
    *,
    ready: str,
    log: Path,
    cleanup: contextlib.ExitStack,
    env: Mapping[str, str] | None = None,
) -> _Server:
    """Start a server in a session of its own: Ctrl-C reaches the demo alone, which then stops it in order."""
    with log.open("ab") as out:
        process = subprocess.Popen(
            list(args),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            start_new_session=True,
            preexec_fn=die_with_parent(),
        )
    cleanup.callback(_stop, process)
    return _Server(name, process, ready, log)


def _wait_until_ready(servers: Sequence[_Server]) -> None:
    """Poll every server until each answers its readiness URL; a server that exits or is late is an error."""
    deadline = time.monotonic() + START_TIMEOUT_S
    waiting = list(servers)
    with httpx.Client(timeout=1.0) as http:
        while waiting:
            for server in list(waiting):
                if server.process.poll() is not None:
                    raise RouterError(
                        f"{server.name} exited with status {server.process.returncode}:\n{_tail(server.log)}"
                    )
                with contextlib.suppress(httpx.HTTPError):
                    if http.get(server.ready).status_code == 200:
                        waiting.remove(server)
            if waiting and time.monotonic() > deadline:
                raise RouterError(
                    f"{waiting[0].name} was not ready within {START_TIMEOUT_S:g} s:\n{_tail(waiting[0].log)}"
                )
            if waiting:
                time.sleep(0.1)


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM (the gateway flushes its events and stops its Redis), SIGKILL if that takes too long."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _tail(path: Path, lines: int = 20) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return "(no log)"
