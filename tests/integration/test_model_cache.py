"""ModelCache: each model file loads once, a retrained file loads again, and a models dir fences paths."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from router.errors import ModelLoadError
from router.variants.registry import ModelCache


def test_the_same_file_loads_once(trained_models: dict[str, Path]) -> None:
    cache = ModelCache()
    path = trained_models["churn_current"]
    assert cache.load(path) is cache.load(str(path))
    assert len(cache) == 1


def test_a_retrained_file_at_the_same_path_loads_again(trained_models: dict[str, Path], tmp_path: Path) -> None:
    path = tmp_path / "model.joblib"
    shutil.copy(trained_models["churn_current"], path)
    cache = ModelCache()
    before = cache.load(path)
    shutil.copy(trained_models["churn_candidate"], path)
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1_000_000))
    after = cache.load(path)
    assert after is not before
    assert type(after._estimator).__name__ == "HistGradientBoostingClassifier"


def test_retain_forgets_the_models_no_version_uses(trained_models: dict[str, Path]) -> None:
    cache = ModelCache()
    kept = cache.load(trained_models["churn_current"])
    cache.load(trained_models["churn_candidate"])
    cache.retain([kept])
    assert len(cache) == 1
    assert cache.load(trained_models["churn_current"]) is kept


def test_with_a_models_dir_relative_paths_are_taken_under_it(trained_models: dict[str, Path]) -> None:
    path = trained_models["churn_current"]
    cache = ModelCache(path.parent)
    assert cache.load(path.name).path == path.resolve()


@pytest.mark.parametrize(
    "escape",
    [pytest.param("../outside.joblib", id="dot-dot"), pytest.param("/etc/passwd", id="absolute")],
)
def test_with_a_models_dir_no_path_may_leave_it(tmp_path: Path, escape: str) -> None:
    cache = ModelCache(tmp_path / "models")
    with pytest.raises(ModelLoadError, match="outside the models directory"):
        cache.load(escape)
