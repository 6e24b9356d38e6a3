"""LiveConfig: a version whose model cannot load is refused once, and the previous one stays in force."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as redis

from router.config.schema import Experiment
from router.live_config import LiveConfig
from router.proxy import UpstreamClient, open_upstream_client
from router.store.configs import ConfigStore
from router.store.keys import Keys
from router.variants.local import LocalModel
from router.variants.registry import ModelCache


class CountingModelCache(ModelCache):
    """Counts load attempts, to see what a refresh retries."""

    def __init__(self) -> None:
        super().__init__()
        self.attempts = 0

    def load(self, path: str | Path) -> LocalModel:
        self.attempts += 1
        return super().load(path)


def _experiment(model: Path) -> Experiment:
    variants: list[dict[str, Any]] = [
        {"name": "a", "weight": 1, "url": "http://127.0.0.1:9/a"},
        {"name": "b", "weight": 1, "model": str(model)},
    ]
    return Experiment.model_validate({"name": "exp", "control": "a", "variants": variants})


@pytest.fixture
async def upstream() -> AsyncIterator[UpstreamClient]:
    client = open_upstream_client("httpx", max_connections=4, keepalive_s=1)
    yield client
    await client.aclose()


async def test_a_version_whose_model_cannot_load_is_tried_once_and_the_previous_one_stays(
    redis_client: redis.Redis, trained_models: dict[str, Path], tmp_path: Path, upstream: UpstreamClient
) -> None:
    store = ConfigStore(redis_client, keys=Keys())
    models = CountingModelCache()
    live = LiveConfig(store, client=upstream, models=models)
    await store.put(_experiment(trained_models["churn_current"]), actor="test", expected_version=None)
    await live.refresh(strict=True)
    await store.put(_experiment(tmp_path / "typo.joblib"), actor="test", expected_version=1)
    for _ in range(3):
        await live.refresh()
    assert models.attempts == 2  # version 1 once, version 2 once: not once a refresh
    assert live.get("exp").version == 1
    assert "version 2" in live.rejected["exp"]

    await store.put(_experiment(trained_models["churn_candidate"]), actor="test", expected_version=2)
    await live.refresh()
    assert live.get("exp").version == 3
    assert live.rejected == {}


async def test_a_rejected_version_is_tried_again_later_so_a_model_file_that_arrives_late_is_applied(
    redis_client: redis.Redis, trained_models: dict[str, Path], tmp_path: Path, upstream: UpstreamClient
) -> None:
    """Config and model files often travel separately: the file may reach a replica after the config."""
    store = ConfigStore(redis_client, keys=Keys())
    models = CountingModelCache()
    live = LiveConfig(store, client=upstream, models=models, rejected_retry_s=0.2)
    late = tmp_path / "late.joblib"
    await store.put(_experiment(trained_models["churn_current"]), actor="test", expected_version=None)
    await live.refresh(strict=True)
    await store.put(_experiment(late), actor="test", expected_version=1)
    await live.refresh()
    await live.refresh()
    assert (live.get("exp").version, models.attempts) == (1, 2)  # not retried at once
    shutil.copy(trained_models["churn_candidate"], late)

    await asyncio.sleep(0.25)
    await live.refresh()

    assert live.get("exp").version == 2
    assert live.rejected == {}
