"""The `abrouter` gateway commands, run as a user runs them, against a real `abrouter serve`.

One gateway (and its private Redis) serves the whole module; each test works on experiments of
its own name. The gateway starts with no token configured, so it makes one and the CLI finds it
in the data directory, as on a fresh install.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from router.cli import main
from router.config.schema import Experiment
from tests.e2e.conftest import write_config
from tests.fixtures.redis import start_server
from tests.fixtures.servers import ROOT, ServerProcess, gateway


@dataclass
class Gateway:
    server: ServerProcess
    data_dir: Path

    @property
    def token(self) -> str:
        return (self.data_dir / "admin-token").read_text().strip()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    home = tmp_path_factory.mktemp("cli")
    redis = start_server(home / "redis")
    # explicitly empty, whatever the environment of the test run holds: serve must make a token
    server = gateway(home, redis_url=redis.url, env={"ABROUTER_ADMIN_TOKEN": "", "ABROUTER_ADMIN_TOKENS": ""})
    try:
        yield Gateway(server=server.start(timeout_s=60), data_dir=home / "data")
    finally:
        server.kill()
        redis.stop()


def abrouter(gw: Gateway, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    """`abrouter ARGS --url <gateway>`; the token comes from the data directory serve wrote it to."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ABROUTER_")}
    env["ABROUTER_DATA_DIR"] = str(gw.data_dir)
    return subprocess.run(
        [sys.executable, "-m", "router", *args, "--url", gw.server.url],
        cwd=ROOT,
        env=env,
        input=input,
        capture_output=True,
        text=True,
        timeout=60,
    )


def canary(name: str, control: float = 90, candidate: float = 10) -> Experiment:
    return Experiment.model_validate(
        {
            "name": name,
            "control": "current",
            "variants": [
                {"name": "current", "weight": control, "url": "http://127.0.0.1:9/current"},
                {"name": "candidate", "weight": candidate, "url": "http://127.0.0.1:9/candidate"},
            ],
        }
    )


def apply(gw: Gateway, tmp_path: Path, experiments: Sequence[Experiment]) -> subprocess.CompletedProcess[str]:
    return abrouter(gw, "apply", str(write_config(tmp_path / "experiments.json", experiments)), "--json")


def stored(gw: Gateway, name: str) -> dict[str, Any]:
    response = httpx.get(
        f"{gw.server.url}/v1/experiments/{name}", headers={"Authorization": f"Bearer {gw.token}"}, timeout=5
    )
    body: dict[str, Any] = response.json()
    return body


def test_serve_without_a_token_writes_one_for_the_owner_only_and_prints_it_once(served: Gateway) -> None:
    token_file = served.data_dir / "admin-token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert served.server.log.read_text().count(served.token) == 1


def test_apply_creates_then_leaves_unchanged_then_updates(served: Gateway, tmp_path: Path) -> None:
    created = apply(served, tmp_path, [canary("apply-a"), canary("apply-b")])
    assert (created.returncode, created.stderr) == (0, "")
    assert [(r["name"], r["result"], r["version"]) for r in json.loads(created.stdout)["results"]] == [
        ("apply-a", "created", 1),
        ("apply-b", "created", 1),
    ]
    again = apply(served, tmp_path, [canary("apply-a"), canary("apply-b", 50, 50)])
    assert again.returncode == 0
    assert [(r["result"], r["version"], r["change"]) for r in json.loads(again.stdout)["results"]] == [
        ("unchanged", 1, ""),
        ("updated", 2, "weights current 90->50, candidate 10->50"),
    ]


def test_apply_prints_a_table_by_default(served: Gateway, tmp_path: Path) -> None:
    result = abrouter(served, "apply", str(write_config(tmp_path / "x.json", [canary("apply-table")])))
    assert result.returncode == 0
    assert "apply-table" in result.stdout
    assert "created" in result.stdout


def test_apply_of_an_invalid_file_applies_nothing_and_names_the_field(served: Gateway, tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "experiments:\n"
        "  - {name: apply-good, control: a, variants: [{name: a, weight: 1, url: 'http://x/a'},"
        " {name: b, weight: 1, url: 'http://x/b'}]}\n"
        "  - {name: apply-bad, control: a, variants: [{name: a, weight: -5, url: 'http://x/a'},"
        " {name: b, weight: 1, url: 'http://x/b'}]}\n"
    )
    result = abrouter(served, "apply", str(path))
    assert result.returncode == 1
    assert f"{path}: experiments[1].variants[0].weight: must be >= 0, got -5" in result.stderr
    assert stored(served, "apply-good")["error"]["code"] == "unknown_experiment"


def test_list_json_lists_the_experiments_in_force(served: Gateway, tmp_path: Path) -> None:
    apply(served, tmp_path, [canary("list-a")])
    result = abrouter(served, "list", "--json")
    assert result.returncode == 0
    listed = {e["name"]: e for e in json.loads(result.stdout)["experiments"]}
    assert listed["list-a"]["version"] == 1
    assert listed["list-a"]["config"]["control"] == "current"


def test_list_prints_a_table_with_the_shares(served: Gateway, tmp_path: Path) -> None:
    apply(served, tmp_path, [canary("list-table")])
    result = abrouter(served, "list")
    assert result.returncode == 0
    line = next(line for line in result.stdout.splitlines() if "list-table" in line)
    assert "current 90%" in line and "candidate 10%" in line


def test_set_weights_yes_prints_the_preview_and_applies_it(served: Gateway, tmp_path: Path) -> None:
    apply(served, tmp_path, [canary("weights-yes")])
    result = abrouter(served, "set-weights", "weights-yes", "current=75", "candidate=25", "--yes")
    assert result.returncode == 0, result.stderr
    preview = next(line for line in result.stdout.splitlines() if line.lstrip().startswith("current"))
    assert preview.split() == ["current", "candidate", "15%"]
    assert "weights-yes: version 1 -> 2: weights current 90->75, candidate 10->25" in result.stdout
    assert stored(served, "weights-yes")["version"] == 2


def test_set_weights_json_gives_the_preview_and_the_new_version(served: Gateway, tmp_path: Path) -> None:
    apply(served, tmp_path, [canary("weights-json")])
    result = abrouter(served, "set-weights", "weights-json", "current=80", "candidate=20", "--yes", "--json")
    assert result.returncode == 0
    out = json.loads(result.stdout)
    assert out["preview"]["moves"] == [{"from": "current", "to": "candidate", "share": 0.1}]
    assert out["experiment"]["version"] == 2


def test_set_weights_asks_and_a_no_changes_nothing(served: Gateway, tmp_path: Path) -> None:
    apply(served, tmp_path, [canary("weights-no")])
    result = abrouter(served, "set-weights", "weights-no", "candidate=50", input="n\n")
    assert result.returncode == 1
    assert "nothing changed" in result.stderr
    assert stored(served, "weights-no")["version"] == 1


def test_history_json_lists_every_version_with_its_actor(served: Gateway, tmp_path: Path) -> None:
    apply(served, tmp_path, [canary("history")])
    abrouter(served, "set-weights", "history", "candidate=20", "--yes")
    assert abrouter(served, "promote", "history", "candidate").returncode == 0
    assert abrouter(served, "rollback", "history", "--to-version", "1").returncode == 0
    result = abrouter(served, "history", "history", "--json")
    assert result.returncode == 0
    versions = json.loads(result.stdout)["versions"]
    assert [(v["version"], v["updated_by"]) for v in versions] == [
        (1, "admin"),
        (2, "admin"),
        (3, "admin"),
        (4, "admin"),
    ]
    assert [v["change"].split(";")[0] for v in versions] == [
        "created",
        "weights candidate 10->20",
        "promoted candidate",
        "rolled back to version 1",
    ]


def test_rollout_shows_a_rollout_and_steps_in(served: Gateway, tmp_path: Path) -> None:
    plan = canary("ramp", control=100, candidate=0).model_dump(mode="json")
    plan["rollout"] = {"canary": "candidate", "steps": [1, 10, 100], "interval_s": 3600}
    apply(served, tmp_path, [Experiment.model_validate(plan)])
    deadline = time.monotonic() + 10
    while True:  # the gateway's controller starts it within a tick (1 s)
        shown = abrouter(served, "rollout", "ramp", "--json")
        assert shown.returncode == 0, shown.stderr
        if json.loads(shown.stdout)["weights_applied"]:
            break
        assert time.monotonic() < deadline, shown.stdout
        time.sleep(0.2)
    table = abrouter(served, "rollout", "ramp")
    assert "ramp: canary candidate at 1%, running (steps 1, 10, 100" in table.stdout
    paused = abrouter(served, "rollout", "ramp", "pause", "--json")
    assert paused.returncode == 0 and json.loads(paused.stdout)["phase"] == "paused"
    refused = abrouter(served, "rollout", "ramp", "pause")
    assert refused.returncode == 1 and "cannot pause a rollout that is paused" in refused.stderr
    assert abrouter(served, "rollout", "ramp", "skip").returncode == 2


@pytest.mark.parametrize(
    ("args", "expected_exit", "message"),
    [
        pytest.param(["get", "no-such-experiment"], 1, "no experiment named 'no-such-experiment'", id="unknown"),
        pytest.param(["set-weights", "x", "a=heavy"], 2, "expected VARIANT=WEIGHT", id="bad-weight"),
        pytest.param(["set-weights", "x", "a=1", "a=2"], 2, "name each variant once", id="repeated-variant"),
        pytest.param(["rollback", "x", "--to-version", "0"], 2, "expected a version number >= 1", id="bad-version"),
        pytest.param(["promote", "x"], 2, "the following arguments are required: variant", id="missing-argument"),
        pytest.param(["list", "--token", "wrong"], 1, "the admin token is not valid", id="wrong-token"),
    ],
)
def test_failures_and_bad_usage_exit_with_their_codes(
    served: Gateway,
    args: list[str],
    expected_exit: int,
    message: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # in-process, through the same entry point as the console script: these only check exits and messages
    monkeypatch.delenv("ABROUTER_ADMIN_TOKEN", raising=False)
    monkeypatch.setenv("ABROUTER_DATA_DIR", str(served.data_dir))
    assert main([*args, "--url", served.server.url]) == expected_exit
    assert message in capsys.readouterr().err


def test_without_a_token_anywhere_the_cli_says_where_to_put_one(
    served: Gateway, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ABROUTER_ADMIN_TOKEN", raising=False)
    monkeypatch.setenv("ABROUTER_DATA_DIR", str(tmp_path))
    assert main(["list", "--url", served.server.url]) == 2
    assert "no admin token" in capsys.readouterr().err


def test_an_unreachable_gateway_is_a_failure(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "--url", "http://127.0.0.1:9", "--token", "t", "--timeout", "2"]) == 1
    assert "cannot reach the gateway at http://127.0.0.1:9" in capsys.readouterr().err
