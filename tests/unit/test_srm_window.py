"""`shares_window`: which config versions' units the SRM check counts (those under today's shares)."""

from __future__ import annotations

import pytest

from router.config.schema import Experiment
from router.store.configs import StoredExperiment
from router.store.srm import shares_window


def version(number: int, a: float, b: float, **fields: object) -> StoredExperiment:
    experiment = Experiment.model_validate(
        {
            "name": "exp",
            "control": "a",
            "variants": [
                {"name": "a", "weight": a, "url": "http://127.0.0.1:9/a"},
                {"name": "b", "weight": b, "url": "http://127.0.0.1:9/b"},
            ],
            **fields,
        }
    )
    return StoredExperiment(experiment, number, updated_at="2026-11-27T00:00:00Z", updated_by="test")


@pytest.mark.parametrize(
    ("history", "since"),
    [
        pytest.param([version(1, 50, 50)], None, id="one-version"),
        pytest.param([version(1, 50, 50), version(2, 1, 1)], None, id="same-shares-other-weights"),
        pytest.param([version(1, 50, 50), version(2, 90, 10)], 2, id="re-weighted"),
        pytest.param(
            [version(1, 50, 50), version(2, 90, 10), version(3, 9, 1, force={"qa": "b"})], 2, id="edit-keeping-shares"
        ),
        pytest.param([version(1, 90, 10), version(2, 50, 50), version(3, 90, 10)], 3, id="back-to-earlier-shares"),
        pytest.param([version(1, 50, 50), None, version(3, 50, 50)], 3, id="unreadable-version-is-a-change"),
        pytest.param([version(1, 50, 50), None], None, id="newest-unreadable"),
        pytest.param([], None, id="no-history"),
    ],
)
def test_the_window_starts_where_todays_shares_took_effect(
    history: list[StoredExperiment | None], since: int | None
) -> None:
    assert shares_window(history) == since
