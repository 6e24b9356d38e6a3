"""The benchmark's smoke mode runs end to end, so `python -m bench.run` cannot rot between real runs.

It uses wrk and nginx when the machine has them and falls back to the Python load generator and
upstream when it does not (it never installs anything here: `--no-install`). Only the default
upstream client is started, which keeps a smoke run under 30 s; tests/e2e/test_proxy_clients.py
covers the others.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from router.settings import Settings
from tests.fixtures.servers import ROOT


def smoke_bench(
    out: Path, trained_models: dict[str, Path], *extra: str, timeout_s: float = 100
) -> subprocess.CompletedProcess[str]:
    """`python -m bench.run --smoke` on the default client only, writing its JSON to `out`."""
    default_client = Settings.model_fields["upstream_client"].default
    models_dir = next(iter(trained_models.values())).parent
    args = ["--smoke", "--no-install", "--clients", default_client, "--models-dir", str(models_dir), "--json", str(out)]
    done = subprocess.run(
        [sys.executable, "-m", "bench.run", *args, *extra],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def test_the_smoke_benchmark_measures_abrouter_against_its_baselines_without_errors(
    tmp_path: Path, trained_models: dict[str, Path]
) -> None:
    default_client = Settings.model_fields["upstream_client"].default
    out = tmp_path / "bench.json"
    smoke_bench(out, trained_models)
    report = json.loads(out.read_text())
    rows = {(row["mode"], row["name"]) for row in report["rows"]}
    assert {
        ("throughput", "tutorial Starlette+httpx"),
        ("throughput", f"abrouter proxy ({default_client}, on)"),
        ("throughput", f"abrouter proxy ({default_client}, off)"),
        ("throughput", f"abrouter proxy ({default_client}, on, 10,000 returning units)"),
        ("throughput", "abrouter local model (per request, on)"),
        ("throughput", "abrouter local model (micro-batched, on)"),
        ("throughput", f"abrouter proxy ({default_client}, on, 1 worker, both CPUs)"),
        ("throughput", f"abrouter proxy ({default_client}, on, 2 workers, both CPUs)"),
        ("throughput", "abrouter local model (micro-batched, on, 2 workers, both CPUs)"),
        ("rate", "upstream direct"),
        ("rate", f"abrouter proxy ({default_client}, on)"),
        ("rate", "abrouter local model (micro-batched, on)"),
    } <= rows
    assert all(row["load"]["requests"] > 0 and row["load"]["errors"] == 0 for row in report["rows"])
    assert all(row["cpu_us_per_request"] > 0 for row in report["rows"] if row["name"].startswith("abrouter"))
    assert any("p99 added over direct" in line for line in report["ratios"])
    assert any("cost, 10,000 returning units" in line for line in report["ratios"])


def test_a_repeated_benchmark_keeps_every_run_and_prints_the_median_and_range_of_each_figure(
    tmp_path: Path, trained_models: dict[str, Path]
) -> None:
    default_client = Settings.model_fields["upstream_client"].default
    out = tmp_path / "bench.json"
    done = smoke_bench(out, trained_models, "--repeat", "2", timeout_s=200)
    report = json.loads(out.read_text())
    assert [run["run"] for run in report["runs"]] == [1, 2]
    assert all(run["rows"] and run["ratios"] for run in report["runs"])
    figure, spread = r"-?[\d,.]+", r"-?[\d,.]+(?:-| to )-?[\d,.]+"
    row = rf"^\| abrouter proxy \({re.escape(default_client)}, on\) \| {figure} \({spread}\) \|"
    assert re.search(row, done.stdout, re.MULTILINE), done.stdout
    ratio = rf"^- p99 added over direct at 200 req/s: {figure} ms \({spread} ms, 2 runs\) \(target <= 2 ms\)$"
    assert re.search(ratio, done.stdout, re.MULTILINE), done.stdout


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        pytest.param("bench/logging_overhead.py", "0 dropped, 0 pending", id="logging"),
        pytest.param("bench/metrics_overhead.py", "ratio on/off", id="metrics"),
    ],
)
def test_the_in_process_overhead_benchmarks_run_in_smoke_mode(script: str, expected: str) -> None:
    done = subprocess.run(
        [sys.executable, script, "--smoke"], cwd=ROOT, capture_output=True, text=True, timeout=100, check=False
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "calls/s" in done.stdout and expected in done.stdout


def test_the_ab_comparison_runs_each_variant_with_its_own_environment(trained_models: dict[str, Path]) -> None:
    models_dir = next(iter(trained_models.values())).parent
    # The last variant's gateway gets a setting it refuses at start: the comparison must start it
    # with that environment, go on with the others and say so in its exit code.
    bad = "on:ABROUTER_UPSTREAM_CLIENT=carrier-pigeon"
    args = ["--smoke", "--no-install", "--models-dir", str(models_dir), "on", "off", bad]
    done = subprocess.run(
        [sys.executable, "-m", "bench.ab", *args], cwd=ROOT, capture_output=True, text=True, timeout=100, check=False
    )
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    table = {line.split("|")[1].strip(): line for line in done.stdout.splitlines() if line.startswith("| o")}
    assert set(table) == {"on", "off", bad}
    assert re.search(r"\| on \| 1 \| [\d,]+ \| [\d.]+ \| [\d.]+ \| 1\.000x \|", table["on"]), table["on"]
    assert re.search(r"\| off \| 1 \| [\d,]+ \| [\d.]+ \| [\d.]+ \| [\d.]+x \|", table["off"]), table["off"]
    assert "| 0 |" in table[bad]  # it never started: no figures
    assert f"failed: abrouter {bad} #1" in done.stderr and "carrier-pigeon" in done.stderr


def test_an_ab_variant_must_start_with_on_or_off() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.ab", "--smoke", "maybe"], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 2 and "starts with 'on' or 'off'" in done.stderr


def test_the_ab_comparison_loads_the_local_model_with_one_and_two_workers(trained_models: dict[str, Path]) -> None:
    models_dir = next(iter(trained_models.values())).parent
    args = ["--smoke", "--no-install", "--models-dir", str(models_dir), "--route", "local", "--both-cpus"]
    done = subprocess.run(
        [sys.executable, "-m", "bench.ab", *args, "on", "on:workers=2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    table = {line.split("|")[1].strip(): line for line in done.stdout.splitlines() if line.startswith("| o")}
    assert set(table) == {"on", "on:workers=2"}
    assert all(re.search(r"\| 1 \| [\d,]+ \| [\d.]+ \|", line) for line in table.values()), table


@pytest.mark.parametrize("variant", ["on:workers=0", "on:workers=two"])
def test_an_ab_variant_needs_a_whole_number_of_workers(variant: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.ab", "--smoke", variant], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 2 and "workers must be a whole number of at least 1" in done.stderr
