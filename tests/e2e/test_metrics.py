"""GET /metrics through the app: what prediction calls record, the config gauges, and real `serve --workers 2`."""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import joblib
import numpy as np
import numpy.typing as npt
import pytest
import redis
import redis.asyncio
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from router.app import create_app
from router.config.schema import Experiment
from router.metrics import FLUSH_INTERVAL_S
from router.settings import Settings
from router.store.configs import ConfigStore
from router.store.embedded import RedisServer, free_port
from router.store.keys import Keys
from tests.e2e.conftest import GatewayFactory, echo_upstream, experiment, store_experiments, write_config
from tests.fixtures.servers import ServerProcess, gateway, model_server

ROW = [12.0, 70.5, 1.0, 0.1]
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape(client: TestClient | str) -> Samples:
    """Every sample /metrics shows, by name and labels."""
    response = client.get("/metrics") if isinstance(client, TestClient) else httpx.get(f"{client}/metrics", timeout=10)
    assert response.status_code == 200
    return parse(response.text)


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum over every series of `name` whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, series), v in samples.items() if n == name and wanted <= series)


def call(client: TestClient, unit: str | None = "u", name: str = "exp", **headers: str) -> httpx.Response:
    if unit is not None:
        headers["X-User-Id"] = unit
    return client.post(f"/v1/experiments/{name}/predict", json={"instances": [ROW]}, headers=headers)


class ExplodingModel:
    """A local model that raises on every prediction, as a model with a bug would."""

    n_features_in_ = 4

    def predict(self, rows: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
        raise RuntimeError("the model exploded")


# --- the endpoint -------------------------------------------------------------------------------------------------


def test_metrics_are_served_in_the_prometheus_text_format(gateway: GatewayFactory) -> None:
    response = gateway([experiment()]).get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert "# TYPE abrouter_requests_total counter" in response.text


def test_openmetrics_is_served_when_the_scraper_asks_for_it(gateway: GatewayFactory) -> None:
    response = gateway([experiment()]).get("/metrics", headers={"Accept": "application/openmetrics-text"})
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.endswith("# EOF\n")


def test_an_app_records_into_the_registry_it_is_given(redis_url: str) -> None:
    store_experiments(redis_url, [experiment()])
    registry = CollectorRegistry()
    app = create_app(Settings(redis_url=redis_url), registry=registry, transport=httpx.ASGITransport(echo_upstream()))
    with TestClient(app) as client:
        response = call(client, force="x")
    labels = {"experiment": "exp", "variant": response.headers["x-variant"], "reason": "hashed", "status": "200"}
    assert registry.get_sample_value("abrouter_requests_total", labels) == 1


def test_two_apps_do_not_share_counts(gateway: GatewayFactory) -> None:
    first, second = gateway([experiment()]), gateway([experiment()])
    call(first)
    assert total(scrape(first), "abrouter_requests_total") == 1
    assert total(scrape(second), "abrouter_requests_total") == 0


# --- what a prediction call records -------------------------------------------------------------------------------


def test_each_call_is_counted_under_the_variant_that_served_it_with_reason_and_status(gateway: GatewayFactory) -> None:
    client = gateway([experiment()])
    seen = collections.Counter(call(client, f"user-{i}").headers["x-variant"] for i in range(40))
    samples = scrape(client)
    for variant in ("a", "b"):
        labels = {"experiment": "exp", "variant": variant}
        assert value(samples, "abrouter_requests_total", **labels, reason="hashed", status="200") == seen[variant]
        assert value(samples, "abrouter_request_duration_seconds_count", **labels) == seen[variant]
        assert value(samples, "abrouter_upstream_duration_seconds_count", **labels) == seen[variant]


@pytest.mark.parametrize(
    ("upstream", "variant_fields", "kind", "status"),
    [
        pytest.param(echo_upstream(status=503), {}, "status", "503", id="5xx-answer"),
        pytest.param(echo_upstream(delay_s=1.0), {"timeout_s": 0.1}, "timeout", "504", id="timeout"),
        pytest.param("network", {"url": f"http://127.0.0.1:{free_port()}/b"}, "connect", "502", id="refused"),
    ],
)
def test_a_failing_remote_variant_counts_an_upstream_error_of_its_kind(
    gateway: GatewayFactory, upstream: Any, variant_fields: dict[str, Any], kind: str, status: str
) -> None:
    b = {"name": "b", "weight": 50, "url": "http://upstream.test/b", **variant_fields}
    exp = experiment(force={"u": "b"}, fallback="none", variants=[{"name": "a", "weight": 50, "url": "http://x/a"}, b])
    client = gateway([exp], upstream=upstream)
    assert call(client).status_code == int(status)
    samples = scrape(client)
    assert value(samples, "abrouter_upstream_errors_total", experiment="exp", variant="b", kind=kind) == 1
    assert total(samples, "abrouter_upstream_errors_total") == 1
    assert value(samples, "abrouter_requests_total", experiment="exp", variant="b", reason="forced", status=status) == 1


def test_a_local_model_that_raises_counts_an_upstream_error_of_kind_model(
    gateway: GatewayFactory, tmp_path: Path, trained_models: dict[str, Path]
) -> None:
    exploding = tmp_path / "exploding.joblib"
    joblib.dump(ExplodingModel(), exploding)
    variants = [
        {"name": "a", "weight": 50, "model": str(trained_models["churn_current"])},
        {"name": "b", "weight": 50, "model": str(exploding)},
    ]
    client = gateway([experiment(force={"u": "b"}, fallback="none", variants=variants)])
    assert call(client).status_code == 500
    assert value(scrape(client), "abrouter_upstream_errors_total", experiment="exp", variant="b", kind="model") == 1


def b_answers_503() -> Starlette:
    """An upstream whose /a answers and whose /b always fails with 503."""

    async def answer(request: Request) -> Response:
        status = 503 if request.url.path == "/b" else 200
        return JSONResponse({"path": request.url.path}, status_code=status)

    return Starlette(routes=[Route("/{path:path}", answer, methods=["POST"])])


def test_a_fallback_is_counted_for_the_failing_variant_and_the_call_under_control(gateway: GatewayFactory) -> None:
    client = gateway([experiment(force={"u": "b"})], upstream=b_answers_503())
    response = call(client)
    assert (response.status_code, response.headers["x-assignment"]) == (200, "fallback")
    samples = scrape(client)
    assert value(samples, "abrouter_fallbacks_total", experiment="exp", variant="b") == 1
    assert value(samples, "abrouter_upstream_errors_total", experiment="exp", variant="b", kind="status") == 1
    assert (
        value(samples, "abrouter_requests_total", experiment="exp", variant="a", reason="fallback", status="200") == 1
    )
    assert total(samples, "abrouter_requests_total") == 1
    assert value(samples, "abrouter_upstream_duration_seconds_count", experiment="exp", variant="a") == 1
    assert value(samples, "abrouter_upstream_duration_seconds_count", experiment="exp", variant="b") == 1


def test_a_call_refused_before_assignment_is_counted_without_a_variant(gateway: GatewayFactory) -> None:
    client = gateway([experiment(on_missing_unit="reject")])
    assert call(client, unit=None).status_code == 400
    samples = scrape(client)
    assert value(samples, "abrouter_requests_total", experiment="exp", variant="", reason="rejected", status="400") == 1
    assert value(samples, "abrouter_request_duration_seconds_count", experiment="exp", variant="") == 1


def test_an_unknown_experiment_never_becomes_a_label_value(gateway: GatewayFactory) -> None:
    client = gateway([experiment()])
    assert call(client, name="no-such-experiment-xyz").status_code == 404
    response = client.get("/metrics")
    assert "no-such-experiment-xyz" not in response.text
    assert total(parse(response.text), "abrouter_requests_total") == 0


def test_unit_ids_and_request_ids_never_appear_in_metrics(gateway: GatewayFactory) -> None:
    client = gateway([experiment(allow_override_header=True)])
    call(client, "unit-secret-4711", **{"X-Request-Id": "request-secret-0815"})
    call(client, "unit-secret-4712", **{"X-Variant": "b"})
    text = client.get("/metrics").text
    assert "secret" not in text


# --- the config gauges --------------------------------------------------------------------------------------------


def weights(samples: Samples, name: str = "exp") -> dict[str, float]:
    return {
        dict(series)["variant"]: v
        for (n, series), v in samples.items()
        if n == "abrouter_variant_weight" and dict(series)["experiment"] == name
    }


def test_the_config_gauges_show_the_weights_and_version_in_force(gateway: GatewayFactory) -> None:
    client = gateway(
        [
            experiment(
                variants=[
                    {"name": "a", "weight": 9, "url": "http://x/a"},
                    {"name": "b", "weight": 1, "url": "http://x/b"},
                ]
            )
        ]
    )
    samples = scrape(client)
    assert weights(samples) == pytest.approx({"a": 0.9, "b": 0.1})
    assert value(samples, "abrouter_config_version", experiment="exp") == 1


async def _edit(redis_url: str, name: str, new: Experiment | None) -> None:
    """Write a new version of `name` (or archive it when `new` is None), as the admin API would."""
    connection = redis.asyncio.Redis.from_url(redis_url)
    try:
        store = ConfigStore(connection, keys=Keys())
        current = await store.get(name)
        if new is None:
            await store.archive(name, actor="test")
        else:
            await store.put(new, actor="test", expected_version=current.version)
    finally:
        await connection.aclose()


def wait_for(client: TestClient, check: Any, *, timeout_s: float = 5.0) -> Samples:
    """Scrape until `check(samples)` holds (config changes arrive with the next refresh), bounded in time."""
    deadline = time.monotonic() + timeout_s
    while True:
        samples = scrape(client)
        if check(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.05)


def test_a_new_version_replaces_the_config_gauges_and_drops_a_removed_variant(
    gateway: GatewayFactory, redis_url: str
) -> None:
    client = gateway([experiment()], settings={"config_refresh_s": 0.05})
    edited = experiment(
        variants=[{"name": "a", "weight": 1, "url": "http://x/a"}, {"name": "c", "weight": 3, "url": "http://x/c"}]
    )
    asyncio.run(_edit(redis_url, "exp", edited))
    samples = wait_for(client, lambda s: value(s, "abrouter_config_version", experiment="exp") == 2)
    assert value(samples, "abrouter_config_version", experiment="exp") == 2
    assert weights(samples) == pytest.approx({"a": 0.25, "c": 0.75})


def test_an_archived_experiment_loses_its_config_gauges_but_keeps_its_counts(
    gateway: GatewayFactory, redis_url: str
) -> None:
    client = gateway([experiment()], settings={"config_refresh_s": 0.05})
    call(client)
    asyncio.run(_edit(redis_url, "exp", None))
    samples = wait_for(client, lambda s: value(s, "abrouter_config_version", experiment="exp") is None)
    assert value(samples, "abrouter_config_version", experiment="exp") is None
    assert weights(samples) == {}
    assert total(samples, "abrouter_requests_total", experiment="exp") == 1


# --- real `abrouter serve --workers 2` ----------------------------------------------------------------------------

N_CALLS = 400


@dataclass(frozen=True)
class Served:
    """What the test saw from its side and what the two workers exported."""

    variants: collections.Counter[str]
    samples: Samples
    per_worker: dict[int, float]  # requests counted in each worker's own file


def _worker_pids(directory: Path, prefix: str) -> set[int]:
    return {int(path.stem.rsplit("_", 1)[1]) for path in directory.glob(f"{prefix}_*.db")}


def _workers_with_config(directory: Path) -> set[int]:
    """Workers whose own file shows a config version in force (a worker that found Redis slow starts without)."""
    pids = set()
    for pid in _worker_pids(directory, "gauge_livemax"):
        merged = MultiProcessCollector.merge([str(directory / f"gauge_livemax_{pid}.db")])
        if any(family.name == "abrouter_config_version" and family.samples for family in merged):
            pids.add(pid)
    return pids


def _wait_for_workers(directory: Path, count: int, *, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while len(_workers_with_config(directory)) < count:
        assert time.monotonic() < deadline, f"fewer than {count} workers loaded the config: {list(directory.iterdir())}"
        time.sleep(0.1)


async def _send(base_url: str, count: int) -> collections.Counter[str]:
    """`count` calls from distinct units, 16 at a time, each on a new connection so both workers accept some."""
    seen: collections.Counter[str] = collections.Counter()
    limits = httpx.Limits(max_connections=16, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=10) as client:
        semaphore = asyncio.Semaphore(16)

        async def one(i: int) -> None:
            async with semaphore:
                response = await client.post(
                    "/v1/experiments/churn/predict", json={"instances": [ROW]}, headers={"X-User-Id": f"user-{i}"}
                )
            assert response.status_code == 200, response.text
            seen[response.headers["x-variant"]] += 1

        async with asyncio.timeout(60):
            await asyncio.gather(*(one(i) for i in range(count)))
    return seen


@pytest.fixture(scope="module")
def served_by_two_workers(
    tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer, trained_models: dict[str, Path]
) -> Iterator[Served]:
    """`abrouter serve --workers 2` with a remote and a local variant, after N_CALLS calls."""
    tmp_path = tmp_path_factory.mktemp("two-workers")
    if not redis_server.running:
        redis_server.start()
    with redis.Redis.from_url(redis_server.url) as client:
        client.flushall()  # the session's private server, as the redis_url fixture does
    servers: list[ServerProcess] = []
    try:
        upstream = model_server(tmp_path, name="remote").start()
        servers.append(upstream)
        churn = Experiment.model_validate(
            {
                "name": "churn",
                "control": "remote",
                "variants": [
                    {"name": "remote", "weight": 50, "url": f"{upstream.url}/predict", "timeout_s": 5},
                    {"name": "local", "weight": 50, "model": str(trained_models["churn_candidate"])},
                ],
            }
        )
        config = write_config(tmp_path / "churn.json", [churn])
        server = gateway(tmp_path, redis_url=redis_server.url, config=config, workers=2)
        servers.append(server.start())
        assert server.process is not None
        directory = (tmp_path / "data" / "prometheus" / str(server.process.pid)).resolve()
        _wait_for_workers(directory, 2)
        variants = asyncio.run(_send(server.url, N_CALLS))
        # The worker answering the scrape flushes its own counts; the other hands its over every second.
        samples = scrape(server.url)
        deadline = time.monotonic() + 10 * FLUSH_INTERVAL_S
        while total(samples, "abrouter_requests_total") < N_CALLS and time.monotonic() < deadline:
            time.sleep(0.2)
            samples = scrape(server.url)
        per_worker = {}
        for pid in _worker_pids(directory, "counter"):
            merged = MultiProcessCollector.merge([str(directory / f"counter_{pid}.db")])
            per_worker[pid] = sum(
                s.value for family in merged if family.name == "abrouter_requests" for s in family.samples
            )
        yield Served(variants=variants, samples=samples, per_worker=per_worker)
    finally:
        for process in reversed(servers):
            process.stop()


def test_with_two_workers_both_served_calls_and_each_counted_its_own(served_by_two_workers: Served) -> None:
    counts = served_by_two_workers.per_worker
    assert len(counts) == 2
    assert all(count > 0 for count in counts.values()), counts
    assert sum(counts.values()) == N_CALLS


def test_with_two_workers_the_requests_total_is_the_number_of_calls_sent(served_by_two_workers: Served) -> None:
    assert total(served_by_two_workers.samples, "abrouter_requests_total") == N_CALLS


def test_with_two_workers_each_variants_count_is_the_number_of_calls_it_served(served_by_two_workers: Served) -> None:
    samples, seen = served_by_two_workers.samples, served_by_two_workers.variants
    assert set(seen) == {"remote", "local"}
    counted = {variant: total(samples, "abrouter_requests_total", variant=variant) for variant in seen}
    assert counted == dict(seen)


def test_with_two_workers_the_histograms_have_buckets_sum_and_count(served_by_two_workers: Served) -> None:
    samples = served_by_two_workers.samples
    for name in ("abrouter_request_duration_seconds", "abrouter_upstream_duration_seconds"):
        assert total(samples, f"{name}_count") == N_CALLS
        assert total(samples, f"{name}_bucket", le="+Inf") == N_CALLS
        assert total(samples, f"{name}_sum") > 0


def test_with_two_workers_the_config_gauges_are_not_summed(served_by_two_workers: Served) -> None:
    samples = served_by_two_workers.samples
    assert value(samples, "abrouter_config_version", experiment="churn") == 1
    assert weights(samples, "churn") == pytest.approx({"remote": 0.5, "local": 0.5})
