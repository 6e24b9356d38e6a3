"""Builds the variant backends of an experiment's config version, loading each local model once."""

from __future__ import annotations

from pathlib import Path

import anyio.to_thread

from router.config.schema import Experiment
from router.proxy import UpstreamClient
from router.variants.base import VariantBackend
from router.variants.local import LocalModel, LocalVariant
from router.variants.remote import RemoteVariant


class ModelCache:
    """Local models by resolved path, so a model shared by experiments or versions loads once."""

    def __init__(self) -> None:
        self._models: dict[Path, LocalModel] = {}

    def load(self, path: str | Path) -> LocalModel:
        """The model at `path`, loaded now if it is new (raises `ModelLoadError` naming the file)."""
        key = Path(path).resolve()
        if key not in self._models:
            self._models[key] = LocalModel.load(path)
        return self._models[key]

    async def load_async(self, path: str | Path) -> LocalModel:
        """`load` off the event loop: unpickling a large model must not stall requests."""
        return await anyio.to_thread.run_sync(self.load, path)

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
