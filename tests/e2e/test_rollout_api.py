"""GET /v1/experiments/{name}/rollout and the operators' actions, through two gateway apps sharing one Redis.

Each app runs its own rollout controller (ticking every 50 ms); the lease in Redis lets exactly
one of them act, and what either shows is the same state.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest

from router.app import create_app
from router.settings import Settings
from tests.e2e.conftest import UPSTREAM, echo_upstream

ALICE = {"Authorization": "Bearer tok-alice"}


def config(*, rollout: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "control": "current",
        "variants": [
            {"name": "current", "weight": 100, "url": f"{UPSTREAM}/current"},
            {"name": "candidate", "weight": 0, "url": f"{UPSTREAM}/candidate"},
        ],
        "rollout": rollout,
    }


PLAN = {"canary": "candidate", "steps": [1, 10, 50, 100], "interval_s": 3600, "min_units": 10}


@pytest.fixture
async def gateways(redis_url: str, tmp_path: Path) -> AsyncIterator[list[httpx2.AsyncClient]]:
    """Two apps (two replicas) on one Redis, each with a rollout controller ticking every 50 ms."""
    clients = []
    async with contextlib.AsyncExitStack() as stack:
        for replica in ("a", "b"):
            settings = Settings(
                redis_url=redis_url,
                data_dir=tmp_path / replica,
                admin_tokens="alice:tok-alice",
                rollout_tick_s=0.05,
            )
            app = create_app(settings, transport=httpx.ASGITransport(app=echo_upstream()))
            await stack.enter_async_context(app.router.lifespan_context(app))
            client = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://gateway.test")
            clients.append(await stack.enter_async_context(client))
        yield clients


async def rollout_when(client: httpx2.AsyncClient, ready: Any, name: str = "churn") -> dict[str, Any]:
    """GET .../rollout until `ready(body)` holds (fails after 5 s)."""
    deadline = time.monotonic() + 5
    while True:
        response = await client.get(f"/v1/experiments/{name}/rollout", headers=ALICE)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        if ready(body):
            return body
        assert time.monotonic() < deadline, body
        await asyncio.sleep(0.05)


async def test_a_new_rollout_is_started_by_one_replica_and_shown_by_both(gateways: list[httpx2.AsyncClient]) -> None:
    first, second = gateways
    created = await first.put("/v1/experiments/churn", json=config(rollout=PLAN), headers=ALICE)
    assert created.status_code == 201, created.text
    body = await rollout_when(first, lambda b: b["phase"] == "running" and b["weights_applied"])
    assert body["percent"] == 1 and body["step"] == 0 and body["canary"] == "candidate"
    assert body["steps"] == [1, 10, 50, 100] and body["rollout"]["min_units"] == 10
    assert body["decisions"][0]["decision"] == "advance" and body["decisions"][0]["actor"] == "rollout"
    assert body["lease"] is not None and body["lease"]["expires_in_s"] > 0
    seen_by_second = (await second.get("/v1/experiments/churn/rollout", headers=ALICE)).json()
    assert seen_by_second["lease"]["holder"] == body["lease"]["holder"]
    current = (await first.get("/v1/experiments/churn", headers=ALICE)).json()
    weights = {v["name"]: v["weight"] for v in current["config"]["variants"]}
    assert weights == {"current": 99, "candidate": 1} and current["updated_by"] == "rollout"
    history = (await second.get("/v1/experiments/churn/history", headers=ALICE)).json()["versions"]
    assert [v["updated_by"] for v in history] == ["alice", "rollout"]  # started once, whichever replica did it


async def test_operators_pause_advance_and_abort_through_the_api(gateways: list[httpx2.AsyncClient]) -> None:
    first, second = gateways
    await first.put("/v1/experiments/churn", json=config(rollout=PLAN), headers=ALICE)
    await rollout_when(first, lambda b: b["phase"] == "running" and b["weights_applied"])

    paused = await second.post("/v1/experiments/churn/rollout/pause", headers=ALICE)
    assert paused.status_code == 200, paused.text
    assert paused.json()["phase"] == "paused"
    newest = paused.json()["decisions"][0]
    assert (newest["decision"], newest["actor"], newest["reason"]) == ("pause", "alice", "pause by alice")
    again = await first.post("/v1/experiments/churn/rollout/pause", headers=ALICE)
    assert again.status_code == 409 and again.json()["error"]["code"] == "rollout_conflict"

    advanced = await first.post("/v1/experiments/churn/rollout/advance", headers=ALICE)
    assert advanced.status_code == 200 and advanced.json()["percent"] == 10
    served = (await second.get("/v1/experiments/churn", headers=ALICE)).json()["config"]["variants"]
    assert {v["name"]: v["weight"] for v in served} == {"current": 90, "candidate": 10}

    aborted = await first.post("/v1/experiments/churn/rollout/abort", headers=ALICE)
    assert aborted.json()["phase"] == "aborted" and aborted.json()["percent"] == 0
    await asyncio.sleep(0.3)  # controllers keep ticking: an aborted rollout stays where it is
    body = (await second.get("/v1/experiments/churn/rollout", headers=ALICE)).json()
    assert body["phase"] == "aborted"
    assert [d["decision"] for d in body["decisions"]] == ["abort", "advance", "pause", "advance"]


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        pytest.param("/v1/experiments/plain/rollout", 409, "no_rollout", id="no-rollout-in-config"),
        pytest.param("/v1/experiments/nobody/rollout", 404, "unknown_experiment", id="unknown-experiment"),
    ],
)
async def test_rollout_of_what_has_none_is_a_clear_error(
    gateways: list[httpx2.AsyncClient], path: str, status: int, code: str
) -> None:
    first, _ = gateways
    await first.put("/v1/experiments/plain", json=config(), headers=ALICE)
    response = await first.get(path, headers=ALICE)
    assert response.status_code == status and response.json()["error"]["code"] == code


async def test_an_unknown_action_is_a_422_naming_the_actions(gateways: list[httpx2.AsyncClient]) -> None:
    first, _ = gateways
    await first.put("/v1/experiments/churn", json=config(rollout=PLAN), headers=ALICE)
    response = await first.post("/v1/experiments/churn/rollout/skip", headers=ALICE)
    assert response.status_code == 422
    assert "pause, resume, advance, abort" in response.json()["error"]["message"]


async def test_rollout_endpoints_need_the_admin_token(gateways: list[httpx2.AsyncClient]) -> None:
    first, _ = gateways
    assert (await first.get("/v1/experiments/churn/rollout")).status_code == 401
    assert (await first.post("/v1/experiments/churn/rollout/pause")).status_code == 401
