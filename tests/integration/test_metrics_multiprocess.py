"""Several real worker processes writing prometheus-client's multiprocess files, merged as /metrics merges them.

Each "worker" is a Python subprocess with PROMETHEUS_MULTIPROC_DIR set, as `abrouter serve --workers N`
starts them; the test process reads the files with `scrape_collector`, the function /metrics uses.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from router.config.schema import Experiment
from router.metrics import MULTIPROC_ENV, Metrics, prepare_multiprocess_dir, scrape_collector
from tests.fixtures.servers import ROOT

WORKER = """
import json, os, sys
from prometheus_client import CollectorRegistry
from router.config.schema import Experiment
from router.metrics import Metrics, worker_lifetime

spec = json.loads(sys.argv[1])

def work():
    metrics = Metrics(CollectorRegistry())
    for item in spec.get("configs", []):
        metrics.config_in_force(Experiment.model_validate(item["experiment"]), item["version"])
    for name in spec.get("retire", []):
        metrics.experiment_retired(name)
    for args in spec.get("requests", []):
        metrics.request(*args)
    metrics.flush()  # what the app's flush_periodically does within a second
    if "pending" in spec:
        metrics.set_events_pending(spec["pending"])
    print("ready", flush=True)
    if spec.get("wait"):
        sys.stdin.readline()

if spec.get("lifetime"):
    with worker_lifetime(os.environ["PROMETHEUS_MULTIPROC_DIR"]):
        work()
else:
    work()
"""


def experiment_json(name: str = "exp", **weights: float) -> dict[str, Any]:
    weights = weights or {"a": 50, "b": 50}
    variants = [{"name": v, "weight": w, "url": f"http://127.0.0.1:9/{v}"} for v, w in weights.items()]
    return {"name": name, "control": next(iter(weights)), "variants": variants}


class Workers:
    """Starts worker subprocesses sharing one multiprocess directory."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.waiting: list[subprocess.Popen[str]] = []

    def run(self, **spec: Any) -> subprocess.Popen[str]:
        """Run a worker; with `wait=True` it stays alive (until `kill` or the test ends) after recording."""
        env = {**os.environ, MULTIPROC_ENV: str(self.path)}
        process = subprocess.Popen(
            [sys.executable, "-c", WORKER, json.dumps(spec)],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "ready"
        if spec.get("wait"):
            self.waiting.append(process)
        else:
            process.communicate(timeout=10)
            assert process.returncode == 0
        return process

    def stop_all(self) -> None:
        for process in self.waiting:
            process.kill()
            process.communicate(timeout=10)


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    path = tmp_path / "prometheus"
    path.mkdir()
    started = Workers(path)
    yield started
    started.stop_all()


def scrape(
    path: Path, served: Mapping[str, Mapping[str, float]] | None = None
) -> dict[tuple[str, frozenset[Any]], float]:
    """What /metrics would show, scraped by a worker serving `served` (experiment -> weights)."""
    metrics = Metrics(CollectorRegistry())
    for name, weights in (served or {}).items():
        metrics.config_in_force(Experiment.model_validate(experiment_json(name, **weights)), 1)
    text = generate_latest(scrape_collector(metrics, str(path))).decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def sample(samples: Mapping[tuple[str, frozenset[Any]], float], name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def test_the_requests_of_two_workers_add_up(workers: Workers) -> None:
    workers.run(requests=[["exp", "a", "hashed", 200, 0.01]] * 3)
    workers.run(requests=[["exp", "a", "hashed", 200, 0.2]] * 4)
    samples = scrape(workers.path)
    labels = {"experiment": "exp", "variant": "a"}
    assert sample(samples, "abrouter_requests_total", **labels, reason="hashed", status="200") == 7
    assert sample(samples, "abrouter_request_duration_seconds_count", **labels) == 7
    assert sample(samples, "abrouter_request_duration_seconds_bucket", **labels, le="0.01") == 3
    assert sample(samples, "abrouter_request_duration_seconds_bucket", **labels, le="+Inf") == 7


def test_events_pending_is_the_sum_over_live_workers(workers: Workers) -> None:
    workers.run(pending=5, wait=True)
    workers.run(pending=7, wait=True)
    assert sample(scrape(workers.path), "abrouter_events_pending") == 12


def test_a_worker_that_exits_no_longer_counts_in_events_pending(workers: Workers) -> None:
    workers.run(pending=5, wait=True)
    workers.run(pending=7, lifetime=True)
    assert sample(scrape(workers.path), "abrouter_events_pending") == 5


def test_a_killed_workers_pending_events_are_forgotten_when_the_next_worker_starts(workers: Workers) -> None:
    doomed = workers.run(pending=5, wait=True)
    doomed.kill()
    doomed.wait(timeout=10)
    workers.run(pending=2, wait=True, lifetime=True)
    assert sample(scrape(workers.path), "abrouter_events_pending") == 2


def test_the_config_gauges_are_not_summed_over_workers(workers: Workers) -> None:
    for _ in range(2):
        workers.run(configs=[{"experiment": experiment_json(a=90, b=10), "version": 3}], wait=True)
    samples = scrape(workers.path, served={"exp": {"a": 90, "b": 10}})
    assert sample(samples, "abrouter_config_version", experiment="exp") == 3
    assert sample(samples, "abrouter_variant_weight", experiment="exp", variant="a") == pytest.approx(0.9)


def test_the_weights_set_last_by_any_worker_win(workers: Workers) -> None:
    workers.run(configs=[{"experiment": experiment_json(a=50, b=50), "version": 1}], wait=True)
    workers.run(configs=[{"experiment": experiment_json(a=80, b=20), "version": 2}], wait=True)
    samples = scrape(workers.path, served={"exp": {"a": 80, "b": 20}})
    assert sample(samples, "abrouter_variant_weight", experiment="exp", variant="a") == pytest.approx(0.8)
    assert sample(samples, "abrouter_config_version", experiment="exp") == 2


def test_config_gauges_of_experiments_no_longer_served_are_hidden_but_their_counts_stay(workers: Workers) -> None:
    old, new = experiment_json("old"), experiment_json("new")
    workers.run(
        configs=[{"experiment": old, "version": 1}, {"experiment": new, "version": 1}],
        retire=["old"],
        requests=[["old", "a", "hashed", 200, 0.01]],
        wait=True,
    )
    samples = scrape(workers.path, served={"new": {"a": 50, "b": 50}})
    assert sample(samples, "abrouter_config_version", experiment="old") is None
    assert sample(samples, "abrouter_variant_weight", experiment="old", variant="a") is None
    assert sample(samples, "abrouter_config_version", experiment="new") == 1
    assert sample(samples, "abrouter_requests_total", experiment="old", variant="a", reason="hashed", status="200") == 1


def test_the_weight_of_a_variant_no_longer_in_force_is_hidden(workers: Workers) -> None:
    workers.run(configs=[{"experiment": experiment_json(a=50, b=50), "version": 1}], wait=True)
    samples = scrape(workers.path, served={"exp": {"a": 50, "c": 50}})
    assert sample(samples, "abrouter_variant_weight", experiment="exp", variant="b") is None
    assert sample(samples, "abrouter_variant_weight", experiment="exp", variant="a") == pytest.approx(0.5)


def test_the_launchers_directory_starts_empty_and_dead_launchers_directories_go(tmp_path: Path) -> None:
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(finished.stdout)
    stale = tmp_path / "prometheus" / str(dead_pid)
    stale.mkdir(parents=True)
    ours_before = tmp_path / "prometheus" / str(os.getpid())
    ours_before.mkdir()
    (ours_before / "counter_1.db").write_bytes(b"stale")
    path = prepare_multiprocess_dir(tmp_path)
    assert path == ours_before.resolve()
    assert list(path.iterdir()) == []
    assert not stale.exists()
