"""What the serving process does around the app: objects alive after start-up are frozen out of the GC."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from router.app import create_app
from router.settings import Settings
from tests.e2e.conftest import experiment, store_experiments


@pytest.fixture
def unfrozen() -> Iterator[None]:
    """The test process shares one heap across tests: give back what a test froze."""
    gc.unfreeze()
    yield
    gc.unfreeze()


@pytest.mark.parametrize(
    ("freeze", "frozen"), [pytest.param(True, True, id="serving"), pytest.param(False, False, id="embedded")]
)
def test_objects_alive_after_start_up_are_frozen_only_in_a_serving_process(
    redis_url: str, tmp_path: Path, unfrozen: None, freeze: bool, frozen: bool
) -> None:
    store_experiments(redis_url, [experiment("frozen")])
    app = create_app(Settings(redis_url=redis_url, data_dir=tmp_path), freeze_after_startup=freeze)
    with TestClient(app):
        assert (gc.get_freeze_count() > 0) is frozen
