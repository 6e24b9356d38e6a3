"""What the serving process does around the app: objects alive after start-up are frozen out of the GC,
and the youngest generation is collected less often."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from router.app import GC_YOUNG_THRESHOLD, create_app
from router.settings import Settings
from tests.e2e.conftest import experiment, store_experiments


@pytest.fixture
def unfrozen() -> Iterator[None]:
    """The test process shares one heap across tests: give back what a test froze, and the thresholds."""
    thresholds = gc.get_threshold()
    gc.unfreeze()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


@pytest.mark.parametrize(
    ("freeze", "frozen"), [pytest.param(True, True, id="serving"), pytest.param(False, False, id="embedded")]
)
def test_objects_alive_after_start_up_are_frozen_only_in_a_serving_process(
    redis_url: str, tmp_path: Path, unfrozen: None, freeze: bool, frozen: bool
) -> None:
    store_experiments(redis_url, [experiment("frozen")])
    app = create_app(Settings(redis_url=redis_url, data_dir=tmp_path), freeze_after_startup=freeze)
    before = gc.get_threshold()
    with TestClient(app):
        assert (gc.get_freeze_count() > 0) is frozen
        assert gc.get_threshold() == ((GC_YOUNG_THRESHOLD, *before[1:]) if frozen else before)
