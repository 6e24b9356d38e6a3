"""`abrouter demo` as a user runs it: a small run that prints the report and writes the page, and a Ctrl-C.

Everything the demo starts (model server, gateway, the gateway's Redis) lives in one temporary
directory named in its output, so "nothing is left running" reads as: no process mentions that
directory, and the directory is gone.
"""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pytest

from tests.fixtures.servers import ROOT

UNITS: Final = 300
TIME_BOUND_S: Final = 40.0


def demo_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ABROUTER_")}
    env["PYTHONUNBUFFERED"] = "1"  # the test reads the progress lines as they come
    return env


def demo_directory(output: str) -> Path:
    match = re.search(r"training the example models in (\S+)/models", output)
    assert match, output
    return Path(match.group(1))


def processes_mentioning(text: str) -> list[str]:
    """Command lines of the processes that name `text`, e.g. a data directory."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if text in cmdline:
            found.append(f"{proc.name}: {cmdline}")
    return found


@dataclass
class DemoRun:
    result: subprocess.CompletedProcess[str]
    page: Path
    seconds: float


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoRun]:
    page = tmp_path_factory.mktemp("demo") / "report.html"
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "router", "demo", "--units", str(UNITS), "--output", str(page)],
        cwd=ROOT,
        env=demo_env(),
        capture_output=True,
        text=True,
        timeout=2 * TIME_BOUND_S,
    )
    yield DemoRun(result=result, page=page, seconds=time.monotonic() - started)


def test_the_demo_exits_0_within_its_time_bound(demo: DemoRun) -> None:
    assert demo.result.returncode == 0, demo.result.stdout + demo.result.stderr
    assert demo.seconds < TIME_BOUND_S


def test_the_demo_states_the_planted_effect_and_prints_the_report(demo: DemoRun) -> None:
    out = demo.result.stdout
    assert "planted: current converts 10%, candidate 14% (relative lift +40%" in out
    assert f"{UNITS:,} exposed units" in out
    assert "The split of units matches the configured weights" in out
    assert "Metric converted (binomial)" in out and "Metric revenue (mean)" in out
    assert f"HTML report written to {demo.page}" in out


def test_the_demo_writes_the_html_report(demo: DemoRun) -> None:
    page = demo.page.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    assert "<code>demo</code>" in page
    assert page.count("<svg") >= 3


def test_the_demo_stops_everything_it_started(demo: DemoRun) -> None:
    directory = demo_directory(demo.result.stdout)
    assert processes_mentioning(str(directory)) == []
    assert not directory.exists()


def test_ctrl_c_stops_everything_the_demo_started(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "router", "demo", "--units", "100000", "--output", str(tmp_path / "never.html")],
        cwd=ROOT,
        env=demo_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert process.stdout is not None
    output = b""
    try:
        deadline = time.monotonic() + TIME_BOUND_S
        while b"sending" not in output:  # traffic is flowing: every server is up
            assert time.monotonic() < deadline, output.decode()
            if select.select([process.stdout], [], [], 0.5)[0]:
                chunk = os.read(process.stdout.fileno(), 65536)
                assert chunk, output.decode()
                output += chunk
        directory = demo_directory(output.decode())
        assert processes_mentioning(str(directory)) != []
        process.send_signal(signal.SIGINT)
        rest, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    output += rest
    assert process.returncode == 1
    assert b"interrupted" in output
    assert processes_mentioning(str(directory)) == []
    assert not directory.exists()
    assert not (tmp_path / "never.html").exists()
