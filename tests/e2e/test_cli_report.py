"""`abrouter report NAME --format table|json|html [-o FILE]` against a real `abrouter serve` with traffic in Redis.

One gateway (and its private Redis) serves the module. Its experiment's variants point at a port
nobody listens on, so every call fails fast (and counts as an error), which is all a report needs:
exposures, requests, errors and outcomes.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import httpx
import pytest

from router.cli import main
from router.config.schema import Experiment
from tests.e2e.conftest import store_experiments
from tests.fixtures.redis import start_server
from tests.fixtures.servers import ROOT, ServerProcess, gateway

TOKEN: Final = "cli-report-token"
NAME: Final = "cli-report"
UNITS: Final = 300


@dataclass
class Served:
    server: ServerProcess
    exposed: Counter[str]
    calls: Counter[str]

    def report(self) -> dict[str, Any]:
        response = httpx.get(
            f"{self.server.url}/v1/experiments/{NAME}/report", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10
        )
        body: dict[str, Any] = response.json()
        return body


def reported_experiment() -> Experiment:
    dead = "http://127.0.0.1:9/predict"  # the discard port: connection refused at once
    return Experiment.model_validate(
        {
            "name": NAME,
            "control": "current",
            "fallback": "none",
            "variants": [
                {"name": "current", "weight": 50, "url": dead, "timeout_s": 0.5},
                {"name": "candidate", "weight": 50, "url": dead, "timeout_s": 0.5},
            ],
            "metrics": [{"name": "converted", "kind": "binomial"}],
        }
    )


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    home = tmp_path_factory.mktemp("cli-report")
    redis = start_server(home / "redis")
    store_experiments(redis.url, [reported_experiment()])
    server = gateway(home, redis_url=redis.url, env={"ABROUTER_ADMIN_TOKEN": TOKEN, "ABROUTER_ADMIN_TOKENS": ""})
    try:
        server.start(timeout_s=60)
        rng = random.Random(7)
        exposed: Counter[str] = Counter()
        calls: Counter[str] = Counter()
        outcomes = []
        with httpx.Client(base_url=server.url, timeout=5) as client:
            for _ in range(UNITS):
                unit = f"u-{rng.getrandbits(64):016x}"
                response = client.post(f"/v1/experiments/{NAME}/predict", json={}, headers={"X-User-Id": unit})
                variant = response.headers["x-variant"]
                calls[variant] += 1
                exposed[variant] += 1
                if rng.random() < (0.2 if variant == "candidate" else 0.1):
                    outcomes.append({"unit": unit, "metric": "converted", "value": 1})
            assert client.post(f"/v1/experiments/{NAME}/outcomes", json={"outcomes": outcomes}).status_code == 202
        served = Served(server=server, exposed=exposed, calls=calls)
        deadline = time.monotonic() + 15  # the event writer flushes every 0.1 s
        while served.report()["total_units"] < UNITS and time.monotonic() < deadline:
            time.sleep(0.1)
        yield served
    finally:
        server.kill()
        redis.stop()


def abrouter(served: Served, *args: str) -> subprocess.CompletedProcess[str]:
    """`abrouter ARGS --url <gateway> --token <token>`, as a user runs it, output piped."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ABROUTER_")}
    return subprocess.run(
        [sys.executable, "-m", "router", *args, "--url", served.server.url, "--token", TOKEN],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_gateway_counted_the_traffic_of_the_module(served: Served) -> None:
    report = served.report()
    assert {v["name"]: (v["units"], v["requests"], v["errors"]) for v in report["variants"]} == {
        name: (served.exposed[name], served.calls[name], served.calls[name]) for name in ("current", "candidate")
    }


def test_report_prints_a_table_for_people_by_default(served: Served) -> None:
    result = abrouter(served, "report", NAME)
    assert (result.returncode, result.stderr) == (0, "")
    out = result.stdout
    assert f"Experiment {NAME}" in out
    assert "The split of units matches the configured weights" in out
    line = next(line for line in out.splitlines() if line.lstrip().startswith("candidate") and "100.0%" in line)
    assert f"{served.exposed['candidate']:,}" in line  # units, and an error rate of 100%: the upstream is dead
    assert "Metric converted (binomial)" in out
    assert "candidate vs current" in out or "than current" in out  # the verdict line
    assert "\x1b[" not in out  # no colour codes when piped


@pytest.mark.parametrize(
    "flags", [pytest.param(["--format", "json"], id="format-json"), pytest.param(["--json"], id="json-flag")]
)
def test_report_json_prints_the_gateways_document(
    served: Served, flags: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", NAME, *flags, "--url", served.server.url, "--token", TOKEN]) == 0
    printed = json.loads(capsys.readouterr().out)
    expected = served.report()
    assert printed["experiment"] == NAME
    assert printed["variants"] == expected["variants"]
    assert printed["metrics"] == expected["metrics"]


@pytest.mark.parametrize(
    ("fmt", "starts_with", "contains"),
    [
        pytest.param("html", "<!DOCTYPE html>", "<svg", id="html"),
        pytest.param("json", "{", '"srm": {', id="json"),
        pytest.param("table", f"Experiment {NAME}", "Metric converted (binomial)", id="table"),
    ],
)
def test_report_output_writes_the_file_and_nothing_to_stdout(
    served: Served, tmp_path: Path, fmt: str, starts_with: str, contains: str
) -> None:
    target = tmp_path / f"report.{fmt}"
    result = abrouter(served, "report", NAME, "--format", fmt, "-o", str(target))
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert f"{NAME}: {fmt} report written to {target}" in result.stderr
    text = target.read_text(encoding="utf-8")
    assert text.startswith(starts_with)
    assert contains in text
    assert "\x1b[" not in text


@pytest.mark.parametrize(
    ("args", "expected_exit", "message"),
    [
        pytest.param(["report", "no-such-experiment"], 1, "no experiment named 'no-such-experiment'", id="unknown"),
        pytest.param(["report", NAME, "--format", "pdf"], 2, "invalid choice: 'pdf'", id="bad-format"),
        pytest.param(["report", NAME, "-o", "/nonexistent-dir/r.html"], 1, "cannot write the report", id="unwritable"),
        pytest.param(["report"], 2, "the following arguments are required: name", id="missing-name"),
    ],
)
def test_report_failures_and_bad_usage_exit_with_their_codes(
    served: Served, args: list[str], expected_exit: int, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*args, "--url", served.server.url, "--token", TOKEN]) == expected_exit
    assert message in capsys.readouterr().err
