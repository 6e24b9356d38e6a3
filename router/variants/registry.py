"""Builds the variant backends of an experiment's config version, loading each local model once."""

from __future__ import annotations

from pathlib import Path

import anyio.to_thread
import orjson

from router.config.schema import Experiment
from router.proxy import UpstreamClient
from router.variants.base import PredictCall, VariantBackend, VariantResponse
from router.variants.local import LocalModel
from router.variants.remote import RemoteVariant


class LocalVariant:
    """Runs an in-process scikit-learn model on `{"instances": [...]}` bodies."""

    def __init__(self, name: str, *, model: LocalModel) -> None:
        self.name = name
        self.model = model

    async def predict(self, call: PredictCall) -> VariantResponse:
        answer = await self.model.predict(call.json())
        return VariantResponse(status=200, body=orjson.dumps(answer), content_type="application/json")


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
