"""The control plane through the app over a real Redis: versions, If-Match, preview, promote, rollback, history.

Requests go through httpx2's ASGI transport in one event loop, so `asyncio.gather` makes them truly
concurrent at Redis, where the compare-and-set decides.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest

from router.app import create_app
from router.assignment.assign import assign
from router.config.schema import Experiment
from router.settings import Settings
from tests.e2e.conftest import UPSTREAM, echo_upstream

ALICE = {"Authorization": "Bearer tok-alice"}
BOB = {"Authorization": "Bearer tok-bob"}
ADMIN = {"Authorization": "Bearer tok-admin"}


def config(control: float = 90, canary: float = 10, **fields: Any) -> dict[str, Any]:
    """A canary experiment's config as a client sends it: control first, the canary last."""
    return {
        "control": "current",
        "variants": [
            {"name": "current", "weight": control, "url": f"{UPSTREAM}/current"},
            {"name": "candidate", "weight": canary, "url": f"{UPSTREAM}/candidate"},
        ],
        **fields,
    }


def if_match(version: int) -> dict[str, str]:
    return {"If-Match": f'"{version}"'}


@pytest.fixture
async def api(redis_url: str, tmp_path: Path) -> AsyncIterator[httpx2.AsyncClient]:
    """The app with three admin tokens (alice, bob and the plain one, actor `admin`) and an echo upstream."""
    settings = Settings(
        redis_url=redis_url,
        data_dir=tmp_path,
        admin_token="tok-admin",
        admin_tokens="alice:tok-alice,bob:tok-bob",
        config_refresh_s=60,  # changes must arrive by pub/sub
    )
    app = create_app(settings, transport=httpx.ASGITransport(app=echo_upstream()))
    async with (
        app.router.lifespan_context(app),
        httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://gateway.test") as client,
    ):
        yield client


async def create(api: httpx2.AsyncClient, name: str = "churn", **fields: Any) -> dict[str, Any]:
    response = await api.put(f"/v1/experiments/{name}", json=config(**fields), headers=ALICE)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def served_version(api: httpx2.AsyncClient, name: str = "churn", *, expected: int) -> float:
    """Seconds until this gateway serves `expected` as X-Config-Version (fails after 1 s)."""
    started = time.monotonic()
    while True:
        response = await api.post(f"/v1/experiments/{name}/predict", content=b"{}", headers={"X-User-Id": "u1"})
        if response.headers.get("x-config-version") == str(expected):
            return time.monotonic() - started
        assert time.monotonic() - started < 1.0, f"still version {response.headers.get('x-config-version')}"
        await asyncio.sleep(0.01)


# --- create, read, replace --------------------------------------------------------------------------------------


async def test_creating_an_experiment_answers_201_with_version_1_its_etag_and_its_actor(
    api: httpx2.AsyncClient,
) -> None:
    response = await api.put("/v1/experiments/churn", json=config(), headers=ALICE)
    assert response.status_code == 201
    assert (response.headers["etag"], response.headers["location"]) == ('"1"', "/v1/experiments/churn")
    body = response.json()
    assert (body["name"], body["version"], body["updated_by"], body["change"]) == ("churn", 1, "alice", "created")
    assert body["config"] == Experiment.model_validate({"name": "churn", **config()}).model_dump(mode="json")


async def test_get_answers_the_config_its_version_and_an_etag(api: httpx2.AsyncClient) -> None:
    await create(api)
    response = await api.get("/v1/experiments/churn", headers=BOB)
    assert response.status_code == 200
    assert response.headers["etag"] == '"1"'
    assert set(response.json()) >= {"config", "version", "updated_at", "updated_by"}


async def test_list_answers_every_live_experiment_by_name(api: httpx2.AsyncClient) -> None:
    await create(api, "upsell")
    await create(api, "churn")
    response = await api.get("/v1/experiments", headers=BOB)
    assert [e["name"] for e in response.json()["experiments"]] == ["churn", "upsell"]


async def test_put_without_if_match_on_an_existing_experiment_answers_428(api: httpx2.AsyncClient) -> None:
    await create(api)
    response = await api.put("/v1/experiments/churn", json=config(50, 50), headers=BOB)
    assert response.status_code == 428
    assert response.json()["error"]["code"] == "precondition_required"
    assert (await api.get("/v1/experiments/churn", headers=BOB)).json()["version"] == 1


async def test_put_with_the_current_if_match_replaces_the_config(api: httpx2.AsyncClient) -> None:
    await create(api)
    response = await api.put("/v1/experiments/churn", json=config(50, 50), headers={**BOB, **if_match(1)})
    assert response.status_code == 200
    assert (response.json()["version"], response.headers["etag"]) == (2, '"2"')


async def test_put_with_a_stale_if_match_answers_412_and_changes_nothing(api: httpx2.AsyncClient) -> None:
    await create(api)
    await api.put("/v1/experiments/churn", json=config(50, 50), headers={**BOB, **if_match(1)})
    response = await api.put("/v1/experiments/churn", json=config(70, 30), headers={**ALICE, **if_match(1)})
    assert response.status_code == 412
    assert response.json()["error"]["details"][0]["current_version"] == 2


@pytest.mark.parametrize(
    "tag",
    [
        pytest.param('"seven"', id="not-a-number"),
        pytest.param('"' + "9" * 5000 + '"', id="five-thousand-digits"),
        pytest.param('"-1"', id="negative"),
    ],
)
async def test_an_if_match_that_names_no_version_answers_412(api: httpx2.AsyncClient, tag: str) -> None:
    await create(api)
    response = await api.patch("/v1/experiments/churn", json={"coverage": 0.5}, headers={**BOB, "If-Match": tag})
    assert response.status_code == 412
    assert response.json()["error"]["code"] == "version_conflict"


async def test_if_match_star_matches_whatever_version_exists(api: httpx2.AsyncClient) -> None:
    await create(api)
    response = await api.put("/v1/experiments/churn", json=config(80, 20), headers={**BOB, "If-Match": "*"})
    assert (response.status_code, response.json()["version"]) == (200, 2)


async def test_if_match_star_on_a_missing_experiment_answers_412(api: httpx2.AsyncClient) -> None:
    response = await api.put("/v1/experiments/ghost", json=config(), headers={**BOB, "If-Match": "*"})
    assert response.status_code == 412


async def test_weights_too_large_to_sum_answer_422_and_never_reach_the_predict_path(api: httpx2.AsyncClient) -> None:
    await create(api)
    response = await api.patch(
        "/v1/experiments/churn", json={"weights": {"current": 1e308, "candidate": 1e308}}, headers=ALICE
    )
    assert response.status_code == 422
    assert "weights must sum to at most" in str(response.json()["error"]["details"])
    await served_version(api, expected=1)  # still served, by the version before the refused edit


async def test_a_config_whose_local_model_cannot_load_answers_422_naming_the_file(
    api: httpx2.AsyncClient, tmp_path: Path
) -> None:
    missing = tmp_path / "typo.joblib"
    body = {
        "control": "current",
        "variants": [
            {"name": "current", "weight": 1, "url": f"{UPSTREAM}/current"},
            {"name": "candidate", "weight": 1, "model": str(missing)},
        ],
    }
    response = await api.put("/v1/experiments/churn", json=body, headers=ALICE)
    assert response.status_code == 422
    assert response.json()["error"]["details"] == [f"variants[1].model: model file {missing} does not exist"]
    assert (await api.get("/v1/experiments/churn", headers=ALICE)).status_code == 404


async def test_a_rollback_to_a_config_whose_model_file_is_gone_answers_422_and_writes_nothing(
    api: httpx2.AsyncClient, tmp_path: Path, trained_models: dict[str, Path]
) -> None:
    model = tmp_path / "candidate.joblib"
    shutil.copy(next(iter(trained_models.values())), model)
    with_model = {
        "control": "current",
        "variants": [
            {"name": "current", "weight": 1, "url": f"{UPSTREAM}/current"},
            {"name": "candidate", "weight": 1, "model": str(model)},
        ],
    }
    assert (await api.put("/v1/experiments/churn", json=with_model, headers=ALICE)).status_code in (200, 201)
    response = await api.put("/v1/experiments/churn", json=config(), headers={**ALICE, **if_match(1)})
    assert response.status_code == 200
    model.unlink()  # the file version 1 served is deleted since

    response = await api.post("/v1/experiments/churn/rollback", json={"to_version": 1}, headers=ALICE)

    assert response.status_code == 422
    assert response.json()["error"]["details"] == [f"variants[1].model: model file {model} does not exist"]
    assert (await api.get("/v1/experiments/churn", headers=ALICE)).json()["version"] == 2


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        pytest.param(config(90, -5), "variants[1].weight: must be >= 0, got -5", id="negative-weight"),
        pytest.param(config(status="concluded"), "winner: is required when status is concluded", id="no-winner"),
        pytest.param(config(colour="red"), "colour: is not a known field", id="unknown-field"),
        pytest.param({**config(), "name": "other"}, "name: must be the experiment of the URL 'churn'", id="name"),
    ],
)
async def test_an_invalid_config_answers_422_invalid_config_with_the_field_path(
    api: httpx2.AsyncClient, body: dict[str, Any], detail: str
) -> None:
    response = await api.put("/v1/experiments/churn", json=body, headers=ALICE)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "invalid_config"
    assert any(d.startswith(detail) for d in error["details"]), error["details"]


@pytest.mark.parametrize(
    "body",
    [pytest.param(b"{not json", id="not-json"), pytest.param(b"[1, 2]", id="not-an-object")],
)
async def test_a_body_that_is_not_a_json_object_answers_422_invalid_payload(
    api: httpx2.AsyncClient, body: bytes
) -> None:
    response = await api.put("/v1/experiments/churn", content=body, headers=ALICE)
    assert (response.status_code, response.json()["error"]["code"]) == (422, "invalid_payload")


async def test_an_unknown_experiment_answers_404(api: httpx2.AsyncClient) -> None:
    response = await api.patch("/v1/experiments/nope", json={"coverage": 0.5}, headers=ALICE)
    assert (response.status_code, response.json()["error"]["code"]) == (404, "unknown_experiment")


# --- PATCH and concurrency --------------------------------------------------------------------------------------


async def test_20_concurrent_patches_with_the_same_if_match_give_one_200_and_nineteen_412(
    api: httpx2.AsyncClient,
) -> None:
    await create(api)
    responses = await asyncio.gather(
        *(
            api.patch(
                "/v1/experiments/churn", json={"weights": {"candidate": 11 + i}}, headers={**ALICE, **if_match(1)}
            )
            for i in range(20)
        )
    )
    statuses = Counter(r.status_code for r in responses)
    assert statuses == {200: 1, 412: 19}
    winner = next(r for r in responses if r.status_code == 200).json()
    current = (await api.get("/v1/experiments/churn", headers=ALICE)).json()
    assert (current["version"], current["config"]) == (2, winner["config"])
    assert len((await api.get("/v1/experiments/churn/history", headers=ALICE)).json()["versions"]) == 2


async def test_twenty_concurrent_patches_without_if_match_are_all_applied(api: httpx2.AsyncClient) -> None:
    await create(api)
    responses = await asyncio.gather(
        *(api.patch("/v1/experiments/churn", json={"force": {f"u{i}": "candidate"}}, headers=ALICE) for i in range(20))
    )
    assert Counter(r.status_code for r in responses) == {200: 20}
    assert (await api.get("/v1/experiments/churn", headers=ALICE)).json()["version"] == 21


async def test_concurrent_patches_without_if_match_are_all_applied_one_after_another(
    api: httpx2.AsyncClient,
) -> None:
    await create(api)
    responses = await asyncio.gather(
        api.patch("/v1/experiments/churn", json={"coverage": 0.5}, headers=ALICE),
        api.patch("/v1/experiments/churn", json={"status": "paused"}, headers=BOB),
    )
    assert [r.status_code for r in responses] == [200, 200]
    current = (await api.get("/v1/experiments/churn", headers=ALICE)).json()
    assert (current["version"], current["config"]["coverage"], current["config"]["status"]) == (3, 0.5, "paused")


async def test_a_patch_changes_only_what_it_sends(api: httpx2.AsyncClient) -> None:
    await create(api, shadow={"variant": "candidate", "percent": 5})
    response = await api.patch(
        "/v1/experiments/churn", json={"weights": {"candidate": 25}, "shadow": None}, headers=BOB
    )
    body = response.json()
    assert [v["weight"] for v in body["config"]["variants"]] == [90, 25]
    assert body["config"]["shadow"] is None
    assert body["change"] == 'weights candidate 10->25; shadow {"variant":"candidate","percent":5.0}->none'


async def test_an_invalid_patch_answers_422_with_the_field_path(api: httpx2.AsyncClient) -> None:
    await create(api)
    response = await api.patch("/v1/experiments/churn", json={"weights": {"nope": 1}, "coverage": 2}, headers=BOB)
    assert response.status_code == 422
    assert response.json()["error"]["details"] == ["coverage: must be <= 1, got 2"]


@pytest.mark.parametrize(
    ("patch", "detail"),
    [
        pytest.param({"coverage": False}, "coverage: Input should be a valid number, got False", id="coverage-false"),
        pytest.param(
            {"weights": {"current": True}}, "weights.current: Input should be a valid number, got True", id="bool"
        ),
        pytest.param(
            {"weights": {"current": "5"}}, "weights.current: Input should be a valid number, got '5'", id="string"
        ),
        pytest.param(
            {"shadow": {"variant": "candidate", "percent": True}},
            "shadow.percent: Input should be a valid number, got True",
            id="shadow-percent-true",
        ),
    ],
)
async def test_a_patch_number_sent_as_a_boolean_or_string_is_refused_not_coerced(
    api: httpx2.AsyncClient, patch: dict[str, Any], detail: str
) -> None:
    """`"coverage": false` would otherwise take every unit out of the experiment."""
    await create(api)
    response = await api.patch("/v1/experiments/churn", json=patch, headers=BOB)
    assert response.status_code == 422
    assert response.json()["error"]["details"] == [detail]
    assert (await api.get("/v1/experiments/churn", headers=ALICE)).json()["version"] == 1


async def test_an_edit_is_served_by_the_same_gateway_within_a_second(api: httpx2.AsyncClient) -> None:
    await create(api)
    await served_version(api, expected=1)
    await api.patch("/v1/experiments/churn", json={"weights": {"candidate": 25}}, headers=BOB)
    assert await served_version(api, expected=2) < 1.0


# --- preview ----------------------------------------------------------------------------------------------------


async def test_the_preview_of_a_canary_from_10_to_25_percent_is_15_percent_from_control_to_canary_only(
    api: httpx2.AsyncClient,
) -> None:
    await create(api)
    response = await api.post(
        "/v1/experiments/churn/preview", json={"weights": {"current": 75, "candidate": 25}}, headers=BOB
    )
    assert response.status_code == 200
    body = response.json()
    assert body["moves"] == [{"from": "current", "to": "candidate", "share": 0.15}]
    assert (body["moved"], body["version"]) == (0.15, 1)
    stored = (await api.get("/v1/experiments/churn", headers=BOB)).json()
    assert (stored["version"], [v["weight"] for v in stored["config"]["variants"]]) == (1, [90, 10])


async def test_moving_the_canary_to_25_percent_moves_what_the_preview_said_on_20000_units(
    api: httpx2.AsyncClient,
) -> None:
    await create(api)
    change = {"weights": {"current": 75, "candidate": 25}}
    preview = (await api.post("/v1/experiments/churn/preview", json=change, headers=BOB)).json()
    before = Experiment.model_validate((await api.get("/v1/experiments/churn", headers=BOB)).json()["config"])
    patched = await api.patch("/v1/experiments/churn", json=change, headers={**BOB, **if_match(1)})
    after = Experiment.model_validate(patched.json()["config"])

    rng = random.Random(20261127)
    units = [f"user-{rng.getrandbits(48):012x}" for _ in range(20_000)]
    moved = Counter((assign(before, u).variant, assign(after, u).variant) for u in units)
    moved = Counter({pair: n for pair, n in moved.items() if pair[0] != pair[1]})
    assert set(moved) == {("current", "candidate")}
    # binomial standard error of a 15% share over 20 000 units: 0.0025; allow 4 of them
    assert moved["current", "candidate"] / len(units) == pytest.approx(preview["moves"][0]["share"], abs=0.01)

    # and the gateway serves those units as computed: a sample through the prediction endpoint
    await served_version(api, expected=2)
    for unit in units[:200]:
        response = await api.post("/v1/experiments/churn/predict", content=b"{}", headers={"X-User-Id": unit})
        assert response.headers["x-variant"] == assign(after, unit).variant


async def test_a_preview_of_an_invalid_change_answers_422(api: httpx2.AsyncClient) -> None:
    await create(api)
    response = await api.post("/v1/experiments/churn/preview", json={"weights": {"nope": 1}}, headers=BOB)
    assert response.status_code == 422
    assert response.json()["error"]["details"] == [
        "weights.nope: 'nope' is not one of the variants ['current', 'candidate']"
    ]


# --- promote, rollback, history, archive ------------------------------------------------------------------------


async def test_promote_concludes_the_experiment_with_all_traffic_to_the_variant(api: httpx2.AsyncClient) -> None:
    await create(api)
    response = await api.post("/v1/experiments/churn/promote", json={"variant": "candidate"}, headers=BOB)
    assert response.status_code == 200
    assert (response.json()["config"]["status"], response.json()["config"]["winner"]) == ("concluded", "candidate")
    await served_version(api, expected=2)
    served = await api.post("/v1/experiments/churn/predict", content=b"{}", headers={"X-User-Id": "anyone"})
    assert (served.headers["x-variant"], served.headers["x-assignment"]) == ("candidate", "concluded")


async def test_promoting_an_unknown_variant_answers_422(api: httpx2.AsyncClient) -> None:
    await create(api)
    response = await api.post("/v1/experiments/churn/promote", json={"variant": "nope"}, headers=BOB)
    assert (response.status_code, response.json()["error"]["code"]) == (422, "invalid_config")


async def test_a_rollback_restores_the_earlier_weights_as_a_new_version(api: httpx2.AsyncClient) -> None:
    await create(api)
    await api.patch("/v1/experiments/churn", json={"weights": {"current": 50, "candidate": 50}}, headers=BOB)
    response = await api.post("/v1/experiments/churn/rollback", headers=ALICE)
    assert response.status_code == 200
    body = response.json()
    assert body["version"] == 3
    assert [v["weight"] for v in body["config"]["variants"]] == [90, 10]
    assert body["change"] == "rolled back to version 1; weights current 50->90, candidate 50->10"
    await served_version(api, expected=3)


async def test_a_rollback_to_a_named_version_restores_that_version(api: httpx2.AsyncClient) -> None:
    await create(api)
    for canary in (20, 30):
        await api.patch("/v1/experiments/churn", json={"weights": {"candidate": canary}}, headers=BOB)
    response = await api.post("/v1/experiments/churn/rollback", json={"to_version": 2}, headers=ALICE)
    assert (response.json()["version"], response.json()["config"]["variants"][1]["weight"]) == (4, 20)


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        pytest.param({"to_version": 7}, 422, "unknown_version", id="never-existed"),
        pytest.param({"to_version": 0}, 422, "invalid_config", id="zero"),
        pytest.param({"to_version": "two"}, 422, "invalid_config", id="not-a-number"),
    ],
)
async def test_a_rollback_to_a_version_that_cannot_be_restored_answers_422(
    api: httpx2.AsyncClient, body: dict[str, Any], status: int, code: str
) -> None:
    await create(api)
    response = await api.post("/v1/experiments/churn/rollback", json=body, headers=ALICE)
    assert (response.status_code, response.json()["error"]["code"]) == (status, code)


async def test_history_lists_every_change_with_its_time_actor_and_summary(api: httpx2.AsyncClient) -> None:
    await create(api)
    await api.patch("/v1/experiments/churn", json={"weights": {"current": 75, "candidate": 25}}, headers=BOB)
    await api.post("/v1/experiments/churn/rollback", headers=ADMIN)
    await api.post("/v1/experiments/churn/promote", json={"variant": "candidate"}, headers=ALICE)
    await api.delete("/v1/experiments/churn", headers=BOB)
    response = await api.get("/v1/experiments/churn/history", headers=ALICE)
    assert response.status_code == 200
    versions = response.json()["versions"]
    assert [(v["version"], v["updated_by"], v["change"]) for v in versions] == [
        (1, "alice", "created"),
        (2, "bob", "weights current 90->75, candidate 10->25"),
        (3, "admin", "rolled back to version 1; weights current 75->90, candidate 25->10"),
        (4, "alice", "promoted candidate; status running->concluded; winner none->candidate"),
        (5, "bob", "archived"),
    ]
    assert all(v["updated_at"].endswith("Z") for v in versions)


async def test_delete_archives_the_experiment_and_keeps_its_history(api: httpx2.AsyncClient) -> None:
    await create(api)
    response = await api.delete("/v1/experiments/churn", headers={**BOB, **if_match(1)})
    assert (response.status_code, response.json()["archived"]) == (200, True)
    assert (await api.get("/v1/experiments/churn", headers=BOB)).status_code == 404
    assert len((await api.get("/v1/experiments/churn/history", headers=BOB)).json()["versions"]) == 2


async def test_an_archived_experiment_can_be_created_again_and_continues_its_versions(
    api: httpx2.AsyncClient,
) -> None:
    await create(api)
    await api.delete("/v1/experiments/churn", headers=BOB)
    response = await api.put("/v1/experiments/churn", json=config(50, 50), headers=ALICE)
    assert (response.status_code, response.json()["version"]) == (201, 3)


async def test_a_client_that_leaves_mid_body_is_no_unhandled_error(
    redis_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Clients drop calls mid-body (mobile ones all the time): each would log an error with a stack trace."""
    app = create_app(Settings(redis_url=redis_url, data_dir=tmp_path, admin_token="t"))
    sent: list[dict[str, Any]] = []
    incoming = [
        {"type": "http.request", "body": b'{"contr', "more_body": True},
        {"type": "http.disconnect"},  # what the server reports when the socket closes mid-body
    ]

    async def receive() -> dict[str, Any]:
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "PUT",
        "scheme": "http",
        "path": "/v1/experiments/churn",
        "raw_path": b"/v1/experiments/churn",
        "query_string": b"",
        "root_path": "",
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", b"100"),
            (b"authorization", b"Bearer t"),
        ],
    }
    with caplog.at_level("DEBUG"):
        async with app.router.lifespan_context(app):
            await app(scope, receive, send)

    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")], sent
    assert any("client disconnected during PUT /v1/experiments/churn" in r.message for r in caplog.records), sent
