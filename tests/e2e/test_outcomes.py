"""POST /v1/experiments/{name}/outcomes through the app: validation, counts, attribution to the first variant."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio
from starlette.testclient import TestClient

from router.config.schema import Experiment
from router.services import Services
from router.store.configs import ConfigStore
from router.store.embedded import RedisServer
from router.store.keys import Keys
from router.store.stats import ExperimentStats
from tests.e2e.conftest import UPSTREAM, GatewayFactory, experiment

METRICS = [{"name": "converted", "kind": "binomial"}, {"name": "revenue", "kind": "mean"}]


def shop(**fields: Any) -> Experiment:
    return experiment("shop", metrics=METRICS, **fields)


def predict(client: TestClient, unit: str) -> str:
    """The variant `unit` is served."""
    response = client.post("/v1/experiments/shop/predict", json={}, headers={"X-User-Id": unit})
    assert response.status_code == 200
    return response.headers["x-variant"]


def report(client: TestClient, body: Any) -> Any:
    return client.post("/v1/experiments/shop/outcomes", json=body)


def drained(client: TestClient) -> Services:
    services: Services = client.app.state.services  # type: ignore[attr-defined]
    assert client.portal is not None
    assert client.portal.call(services.events.drain, 10.0)
    return services


def stored_stats(client: TestClient) -> ExperimentStats:
    services = drained(client)
    assert client.portal is not None
    return client.portal.call(services.stats.read, "shop")


def test_an_outcome_of_an_exposed_unit_is_accepted_and_attributed(gateway: GatewayFactory) -> None:
    client = gateway([shop()])
    variant = predict(client, "u1")
    response = report(client, {"unit": "u1", "metric": "revenue", "value": 12.5})
    assert (response.status_code, response.json()) == (202, {"accepted": 1, "unattributed": 0})
    revenue = stored_stats(client).variant(variant).metric("revenue")
    assert (revenue.n, revenue.sum, revenue.sum_squares) == (1, 12.5, 156.25)


def test_an_integer_unit_id_is_the_unit_of_its_decimal_text(gateway: GatewayFactory) -> None:
    """Predict takes an integer id from a JSON body as its text (`unit: json:user.id`): outcomes do too."""
    client = gateway([shop()])
    variant = predict(client, "12")
    response = report(client, {"unit": 12, "metric": "revenue", "value": 2.0})
    assert (response.status_code, response.json()) == (202, {"accepted": 1, "unattributed": 0})
    assert stored_stats(client).variant(variant).metric("revenue").sum == 2.0


def test_outcomes_of_units_never_exposed_are_counted_as_unattributed(gateway: GatewayFactory) -> None:
    client = gateway([shop()])
    predict(client, "seen")
    body = {
        "outcomes": [
            {"unit": "seen", "metric": "converted", "value": 1},
            {"unit": "stranger", "metric": "converted", "value": 1},
            {"unit": "stranger", "metric": "revenue", "value": 3},
        ]
    }
    assert report(client, body).json() == {"accepted": 3, "unattributed": 2}
    assert stored_stats(client).unattributed == {"converted": 1, "revenue": 1}


def test_a_unit_exposed_through_another_replica_is_attributed(gateway: GatewayFactory) -> None:
    first, second = gateway([shop()]), gateway([shop()])
    variant = predict(first, "u1")
    drained(first)
    assert report(second, {"unit": "u1", "metric": "converted", "value": 1}).json()["unattributed"] == 0
    assert stored_stats(second).variant(variant).metric("converted").sum == 1


def test_outcomes_of_units_exposed_before_a_weight_change_go_to_their_first_variant(
    gateway: GatewayFactory, redis_url: str
) -> None:
    before = shop(
        variants=[
            {"name": "a", "weight": 100, "url": f"{UPSTREAM}/a"},
            {"name": "b", "weight": 0, "url": f"{UPSTREAM}/b"},
        ]
    )
    client = gateway([before])
    units = [f"u{i}" for i in range(40)]
    assert {predict(client, unit) for unit in units} == {"a"}
    drained(client)
    after = before.model_copy(
        update={"variants": [v.model_copy(update={"weight": 100 - v.weight}) for v in before.variants]}
    )
    asyncio.run(_replace(redis_url, after))
    later = gateway([])  # a replica that starts after the change: it serves the new weights
    assert {predict(later, unit) for unit in units} == {"b"}
    body = {"outcomes": [{"unit": unit, "metric": "revenue", "value": 2} for unit in units]}
    assert report(later, body).json() == {"accepted": 40, "unattributed": 0}
    stats = stored_stats(later)
    assert (stats.variant("a").units, stats.variant("b").units) == (40, 0)
    assert (stats.variant("a").metric("revenue").sum, stats.variant("b").metric("revenue").sum) == (80.0, 0.0)


async def _replace(redis_url: str, new: Experiment) -> None:
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        store = ConfigStore(client, keys=Keys())
        current = await store.get(new.name)
        await store.put(new, actor="test", expected_version=current.version)
    finally:
        await client.aclose()


def test_a_batch_of_a_thousand_outcomes_is_accepted(gateway: GatewayFactory) -> None:
    client = gateway([shop()])
    body = {"outcomes": [{"unit": f"u{i}", "metric": "converted", "value": 1} for i in range(1000)]}
    assert report(client, body).json() == {"accepted": 1000, "unattributed": 1000}


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        pytest.param(
            {"unit": "u1", "metric": "clicks", "value": 1}, "metric: 'clicks' is not a metric", id="undeclared"
        ),
        pytest.param(
            {"outcomes": [{"unit": "u1", "metric": "revenue", "value": 1}, {"unit": "u1", "metric": "x", "value": 1}]},
            "outcomes[1].metric: 'x' is not a metric",
            id="undeclared-in-a-batch",
        ),
        pytest.param({"unit": "u1", "metric": "revenue", "value": "3"}, "value", id="value-as-text"),
        pytest.param({"unit": "u1", "metric": "revenue", "value": True}, "value", id="value-as-boolean"),
        pytest.param({"unit": "u1", "metric": "revenue", "value": 1e300}, "value", id="value-absurdly-large"),
        pytest.param({"unit": "u1", "metric": "revenue"}, "value", id="value-missing"),
        pytest.param({"unit": True, "metric": "revenue", "value": 1}, "unit", id="unit-a-boolean"),
        pytest.param({"unit": 7.5, "metric": "revenue", "value": 1}, "unit", id="unit-a-fraction"),
        pytest.param({"unit": "  ", "metric": "revenue", "value": 1}, "unit", id="unit-blank"),
        pytest.param({"outcomes": []}, "outcomes", id="empty-batch"),
        pytest.param(
            {"outcomes": [{"unit": "u", "metric": "revenue", "value": 1}] * 1001}, "outcomes", id="batch-over-1000"
        ),
        pytest.param({"unit": "u1", "metric": "revenue", "value": 1, "extra": 1}, "extra", id="unknown-field"),
        pytest.param([1, 2], "must be a JSON object", id="not-an-object"),
    ],
)
def test_an_invalid_outcome_is_refused_with_422_naming_the_problem(
    gateway: GatewayFactory, body: Any, detail: str
) -> None:
    client = gateway([shop()])
    response = report(client, body)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "invalid_payload"
    assert any(detail in line for line in [error["message"], *map(str, error["details"])])


@pytest.mark.parametrize(
    "literal",
    [
        pytest.param(b"NaN", id="nan"),
        pytest.param(b"Infinity", id="infinity"),
        pytest.param(b"-Infinity", id="minus-inf"),
    ],
)
def test_a_value_that_is_not_a_finite_number_is_refused(gateway: GatewayFactory, literal: bytes) -> None:
    client = gateway([shop()])
    body = b'{"unit": "u1", "metric": "revenue", "value": ' + literal + b"}"
    response = client.post("/v1/experiments/shop/outcomes", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422


def test_outcomes_for_an_unknown_experiment_are_404(gateway: GatewayFactory) -> None:
    client = gateway([shop()])
    response = client.post("/v1/experiments/nope/outcomes", json={"unit": "u1", "metric": "revenue", "value": 1})
    assert (response.status_code, response.json()["error"]["code"]) == (404, "unknown_experiment")


def test_while_redis_is_down_outcomes_are_accepted_unverified_and_attributed_once_it_is_back(
    gateway: GatewayFactory, fresh_redis_server: RedisServer
) -> None:
    first = gateway([shop()], redis_url=fresh_redis_server.url)
    variant = predict(first, "u1")
    drained(first)
    client = gateway([], redis_url=fresh_redis_server.url, settings={"redis_timeout_s": 0.2})  # knows nothing of u1
    fresh_redis_server.stop()
    response = report(client, {"outcomes": [{"unit": "u1", "metric": "converted", "value": 1}]})
    assert (response.status_code, response.json()) == (202, {"accepted": 1, "unattributed": 0, "unverified": 1})
    fresh_redis_server.start()
    assert stored_stats(client).variant(variant).metric("converted").sum == 1
