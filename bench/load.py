"""Running one load against one URL, with wrk or with bench/loadgen.py, pinned to the load generator's CPU.

Every function returns the same keys: requests, errors, rps, p50_ms, p90_ms, p99_ms, max_ms,
duration_s (and lag_p99_ms for the Python generator), so the report does not care which tool ran.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Final

from bench.loadgen import DEFAULT_BODY
from bench.servers import ROOT

LUA_SCRIPT: Final = Path(__file__).with_name("random_user.lua")
#: a run that takes this much longer than planned is killed (wrk or the generator hung)
SLACK_S: Final = 30.0


def _pinned(args: list[str], cpu: int | str | None) -> list[str]:
    return ["taskset", "-c", str(cpu), *args] if cpu is not None else args


def _wrk_environment(units: int | None) -> dict[str, str]:
    """The wrk script's environment: BENCH_UNITS only when asked for, never inherited from the shell."""
    env = {key: value for key, value in os.environ.items() if key != "BENCH_UNITS"}
    env["BENCH_BODY"] = DEFAULT_BODY.decode()
    if units is not None:
        if units < 1:
            raise ValueError(f"units must be at least 1, got {units}")
        env["BENCH_UNITS"] = str(units)
    return env


def wrk_closed(
    url: str, *, connections: int, duration_s: float, cpu: int | str | None, units: int | None = None
) -> dict[str, Any]:
    """wrk, one thread, `connections` keep-alive connections, random X-User-Id per request (bench/random_user.lua).

    `units`: ids drawn from that many units instead of a new one per request.
    """
    wrk = shutil.which("wrk")
    assert wrk is not None, "wrk is not installed"
    seconds = max(1, math.ceil(duration_s))  # wrk takes whole seconds
    args = [wrk, "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s", "-s", str(LUA_SCRIPT), url]
    done = subprocess.run(
        _pinned(args, cpu),
        capture_output=True,
        text=True,
        timeout=seconds + SLACK_S,
        env=_wrk_environment(units),
        check=False,
    )
    line = next((x for x in done.stdout.splitlines() if x.startswith("BENCH_JSON ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout[-1500:]} {done.stderr[-1500:]}")
    raw = json.loads(line.removeprefix("BENCH_JSON "))
    duration = raw["duration_us"] / 1e6
    socket_errors = raw["connect"] + raw["read"] + raw["write"] + raw["timeout"]
    return {
        "tool": "wrk",
        "requests": raw["requests"],
        "errors": raw["status"] + socket_errors,
        "duration_s": round(duration, 4),
        "rps": round(raw["requests"] / duration, 1) if duration else 0.0,
        "p50_ms": raw["p50_us"] / 1000,
        "p90_ms": raw["p90_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "max_ms": raw["max_us"] / 1000,
    }


def python_load(
    url: str,
    *,
    mode: str,
    connections: int,
    duration_s: float,
    cpu: int | str | None,
    rate: float | None = None,
    units: int | None = None,
) -> dict[str, Any]:
    """bench/loadgen.py in a process of its own (mode `closed` or `rate`)."""
    args = [sys.executable, "-m", "bench.loadgen", url, "--mode", mode]
    args += ["--connections", str(connections), "--duration", str(duration_s)]
    if rate is not None:
        args += ["--rate", str(rate)]
    if units is not None:
        args += ["--units", str(units)]
    done = subprocess.run(
        _pinned(args, cpu), capture_output=True, text=True, timeout=duration_s + SLACK_S, cwd=ROOT, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"bench.loadgen failed ({done.returncode}): {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    result["tool"] = "python"
    return result
