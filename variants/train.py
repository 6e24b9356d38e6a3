"""Train the example models and dump them as joblib files: ``python -m variants.train [--out DIR] [--force]``.

The files are build output (git-ignored): the gateway and the tests train them when missing,
so no pickle is ever committed.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import joblib

from variants.churn import MODELS, Features, Labels, make_dataset

DEFAULT_MODELS_DIR: Final = Path(__file__).resolve().parent / "models"


@dataclass(frozen=True, slots=True)
class TrainedModel:
    """One model file and how it came to be there."""

    name: str
    path: Path
    size_bytes: int
    #: None when the file already existed and was kept
    train_seconds: float | None


def train_models(out_dir: Path, *, seed: int = 0, force: bool = False) -> list[TrainedModel]:
    """Dump `<out_dir>/<name>.joblib` for every example model, keeping existing files unless `force`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    data: tuple[Features, Labels] | None = None
    trained = []
    for name, build in MODELS.items():
        path = out_dir / f"{name}.joblib"
        seconds = None
        if force or not path.exists():
            if data is None:
                data = make_dataset(seed=seed)
            started = time.perf_counter()
            model = build(*data)
            seconds = time.perf_counter() - started
            _dump_atomically(model, path)
        trained.append(TrainedModel(name, path, path.stat().st_size, seconds))
    return trained


def train_all(out_dir: Path, *, seed: int = 0, force: bool = False) -> list[Path]:
    """The model files, trained where missing: what a gateway or a test needs before loading them."""
    return [model.path for model in train_models(out_dir, seed=seed, force=force)]


def _dump_atomically(model: object, path: Path) -> None:
    """Write beside the target and rename, so a worker starting concurrently never loads half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        joblib.dump(model, tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a model file is readable like any build output
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; prints one line per model file."""
    parser = argparse.ArgumentParser(prog="python -m variants.train", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_MODELS_DIR, help="output directory (default: %(default)s)")
    parser.add_argument("--force", action="store_true", help="retrain and overwrite existing files")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic dataset (default: %(default)s)")
    args = parser.parse_args(argv)
    for model in train_models(args.out, seed=args.seed, force=args.force):
        how = "kept (exists)" if model.train_seconds is None else f"trained in {model.train_seconds:.2f} s"
        print(f"{model.path}  {model.size_bytes / 1024:.1f} KiB  {how}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
