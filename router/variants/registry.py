"""Builds the variant backends of an experiment's config version, loading each local model once."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import anyio.to_thread

from router.config.schema import Experiment
from router.errors import ModelLoadError
from router.proxy import UpstreamClient
from router.variants.base import VariantBackend
from router.variants.batching import Batching
from router.variants.local import DEFAULT_BATCHING, DEFAULT_INLINE_MAX_S, LocalModel, LocalVariant
from router.variants.remote import RemoteVariant


class ModelCache:
    """Local models by file, so a model shared by experiments or versions loads once.

    A file is known by its resolved path, size and modification time: retraining into the same
    path and applying the config again loads the new model. With `root` (ABROUTER_MODELS_DIR),
    relative paths are taken under it and no path may leave it: a joblib file is a pickle, so
    whoever may write configs must not be able to make the gateway unpickle an arbitrary file.
    One model, one micro-batching queue (`batching`; None runs every call on its own); models probed
    within `inline_max_s` run on the event loop (router/variants/local.py).
    """

    def __init__(
        self,
        root: Path | None = None,
        *,
        batching: Batching | None = DEFAULT_BATCHING,
        inline_max_s: float = DEFAULT_INLINE_MAX_S,
    ) -> None:
        self.root = root.resolve() if root is not None else None
        self._batching = batching
        self._inline_max_s = inline_max_s
        self._models: dict[tuple[Path, int, int], LocalModel] = {}

    def resolve(self, path: str | Path) -> Path:
        """The file a config's `model:` names; `ModelLoadError` when it lies outside `root`."""
        candidate = Path(path)
        if self.root is None:
            return candidate.resolve()
        resolved = (self.root / candidate).resolve()
        if not resolved.is_relative_to(self.root):
            raise ModelLoadError(f"model file {path} is outside the models directory {self.root} (ABROUTER_MODELS_DIR)")
        return resolved

    def load(self, path: str | Path) -> LocalModel:
        """The model at `path`, loaded now if it is new or changed (raises `ModelLoadError` naming the file)."""
        resolved = self.resolve(path)
        try:
            stat = resolved.stat()
        except OSError:
            # raises the ModelLoadError that names the problem
            return LocalModel.load(resolved, batching=self._batching, inline_max_s=self._inline_max_s)
        key = (resolved, stat.st_size, stat.st_mtime_ns)
        if key not in self._models:
            self._models[key] = LocalModel.load(resolved, batching=self._batching, inline_max_s=self._inline_max_s)
        return self._models[key]

    async def load_async(self, path: str | Path) -> LocalModel:
        """`load` off the event loop: unpickling a large model must not stall requests."""
        return await anyio.to_thread.run_sync(self.load, path)

    def retain(self, models: Iterable[LocalModel]) -> None:
        """Forget every model but these (the ones versions in force use), so retired models free their memory."""
        keep = {id(model) for model in models}
        self._models = {key: model for key, model in self._models.items() if id(model) in keep}

    def __len__(self) -> int:
        return len(self._models)


async def build_backends(
    experiment: Experiment, *, client: UpstreamClient, models: ModelCache
) -> dict[str, VariantBackend]:
    """One backend per variant; any local model that fails to load fails the whole build."""
    backends: dict[str, VariantBackend] = {}
    for variant in experiment.variants:
        if variant.url is not None:
            backends[variant.name] = RemoteVariant(
                variant.name, url=variant.url, timeout_s=variant.timeout_s, client=client
            )
        else:
            assert variant.model is not None  # the schema guarantees exactly one of url/model
            backends[variant.name] = LocalVariant(variant.name, model=await models.load_async(variant.model))
    return backends
