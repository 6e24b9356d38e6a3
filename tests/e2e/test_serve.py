"""`abrouter serve` for real: uvicorn on loopback, a real example model server, real local models."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import httpx

from router.config.schema import Experiment
from router.store.embedded import CONF_NAME
from tests.e2e.conftest import write_config
from tests.fixtures.servers import ROOT, ServerProcess, gateway, model_server

ROW = [12.0, 70.5, 1.0, 0.1]


def canary(upstream_url: str, models: dict[str, Path]) -> Experiment:
    """Control in-process, candidate remote: the shape of a canary of a model behind a server."""
    return Experiment.model_validate(
        {
            "name": "churn",
            "control": "current",
            "variants": [
                {"name": "current", "weight": 50, "model": str(models["churn_current"])},
                {"name": "candidate", "weight": 50, "url": f"{upstream_url}/predict", "timeout_s": 2},
            ],
            "force": {"qa-local": "current", "qa-remote": "candidate"},
        }
    )


def predict(base_url: str, unit: str) -> httpx.Response:
    return httpx.post(
        f"{base_url}/v1/experiments/churn/predict", json={"instances": [ROW]}, headers={"X-User-Id": unit}, timeout=10
    )


def test_serve_answers_for_a_remote_and_a_local_variant_and_falls_back_when_the_upstream_dies(
    tmp_path: Path, redis_url: str, trained_models: dict[str, Path], started: list[ServerProcess]
) -> None:
    upstream = model_server(tmp_path, name="candidate-server").start()
    started.append(upstream)
    config = write_config(tmp_path / "churn.json", [canary(upstream.url, trained_models)])
    server = gateway(tmp_path, redis_url=redis_url, config=config)
    started.append(server.start())

    local, remote = predict(server.url, "qa-local"), predict(server.url, "qa-remote")
    assert (local.status_code, local.headers["x-variant"]) == (200, "current")
    assert (remote.status_code, remote.headers["x-variant"]) == (200, "candidate")
    assert remote.json()["model"] == "candidate-server"
    assert set(local.json()) == {"predictions", "probabilities"}
    for response in (local, remote):
        assert response.headers["x-config-version"] == "1"
        assert response.headers["x-assignment"] == "forced"

    upstream.kill()
    fallback = predict(server.url, "qa-remote")
    assert fallback.status_code == 200
    assert (fallback.headers["x-variant"], fallback.headers["x-assignment"]) == ("current", "fallback")


def test_serve_refuses_to_start_when_a_local_model_cannot_load(
    tmp_path: Path, redis_url: str, broken_model_file: Path
) -> None:
    experiment = Experiment.model_validate(
        {
            "name": "broken",
            "control": "a",
            "variants": [
                {"name": "a", "weight": 1, "model": str(broken_model_file)},
                {"name": "b", "weight": 1, "url": "http://127.0.0.1:9/predict"},
            ],
        }
    )
    config = write_config(tmp_path / "broken.json", [experiment])
    result = subprocess.run(
        [sys.executable, "-m", "router", "serve", "--redis-url", redis_url, "--config", str(config), "--port", "0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert str(broken_model_file) in result.stderr


def test_serve_refuses_an_invalid_config_and_names_the_field(tmp_path: Path, redis_url: str) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(
        "experiments:\n  - name: x\n    control: a\n    variants:\n"
        "      - {name: a, weight: -5, url: 'http://127.0.0.1:9/p'}\n"
        "      - {name: b, weight: 1, url: 'http://127.0.0.1:9/p'}\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "router", "serve", "--redis-url", redis_url, "--config", str(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert f"{config}: experiments[0].variants[0].weight: must be >= 0, got -5" in result.stderr


def test_serve_without_a_redis_url_runs_an_embedded_redis_and_stops_it_on_sigterm(
    tmp_path: Path, trained_models: dict[str, Path], started: list[ServerProcess]
) -> None:
    upstream = model_server(tmp_path).start()
    started.append(upstream)
    config = write_config(tmp_path / "churn.json", [canary(upstream.url, trained_models)])
    server = gateway(tmp_path, redis_url=None, config=config)
    started.append(server.start())
    assert httpx.get(f"{server.url}/readyz").status_code == 200
    assert predict(server.url, "someone").status_code == 200
    conf = (tmp_path / "data" / "redis" / CONF_NAME).read_text()
    redis_port = int(next(line.split()[1] for line in conf.splitlines() if line.startswith("port ")))
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", redis_port)) == 0

    assert server.stop() == 0
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", redis_port)) != 0, "the embedded Redis outlived the gateway"


def test_the_access_log_has_a_line_per_request_at_info_level_unless_turned_off(
    tmp_path: Path, redis_url: str, started: list[ServerProcess]
) -> None:
    logs = {}
    for access_log in ("--access-log", "--no-access-log"):
        server = gateway(tmp_path / access_log, redis_url=redis_url)
        (tmp_path / access_log).mkdir()
        server.args[server.args.index("--log-level") + 1] = "info"
        server.args.append(access_log)
        started.append(server.start())
        assert httpx.get(f"{server.url}/v1/experiments", timeout=5).status_code == 401
        server.stop()
        logs[access_log] = server.log.read_text()
    assert '"GET /v1/experiments HTTP/1.1" 401' in logs["--access-log"]
    assert "/v1/experiments" not in logs["--no-access-log"]
