"""The experiments in force in this process: an in-memory copy of the store, kept fresh.

Requests read only this copy, so assignment never waits for Redis, and a replica that loses
Redis keeps serving the last config it had. `router.config_sync` keeps it fresh.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from router.config.schema import Experiment
from router.errors import ModelLoadError, StoreUnavailable, UnknownExperiment, UnreadableConfig
from router.metrics import Metrics, StoreOperation
from router.proxy import UpstreamClient
from router.store.configs import ConfigStore, StoredExperiment
from router.variants.base import VariantBackend
from router.variants.local import LocalVariant
from router.variants.registry import ModelCache, build_backends

log = logging.getLogger("abrouter.config")

#: Seconds before a version that could not be applied (its model failed to load) is tried again.
REJECTED_RETRY_S: Final = 30.0


@dataclass(frozen=True, slots=True)
class ActiveExperiment:
    """One experiment's config version together with the backends that serve its variants."""

    stored: StoredExperiment
    backends: Mapping[str, VariantBackend]

    @property
    def experiment(self) -> Experiment:
        return self.stored.experiment

    @property
    def version(self) -> int:
        return self.stored.version


class LiveConfig:
    """Holds the active experiments and refreshes them from the `ConfigStore`."""

    def __init__(
        self,
        store: ConfigStore,
        *,
        client: UpstreamClient,
        models: ModelCache,
        metrics: Metrics | None = None,
        rejected_retry_s: float = REJECTED_RETRY_S,
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._client = client
        self._models = models
        self._active: dict[str, ActiveExperiment] = {}
        self.loaded = False
        self.store_error: str | None = None
        #: experiment name -> why its newest version is not in force (e.g. its model failed to load)
        self.rejected: dict[str, str] = {}
        # name -> (version, when it was rejected): tried again after `rejected_retry_s`, not every second
        self._rejected_versions: dict[str, tuple[int, float]] = {}
        self._rejected_retry_s = rejected_retry_s
        self.last_refresh: float | None = None

    def get(self, name: str) -> ActiveExperiment:
        """The experiment in force called `name`."""
        active = self._active.get(name)
        if active is not None:
            return active
        if not self.loaded:
            raise StoreUnavailable("no experiment config has been loaded from Redis yet")
        raise UnknownExperiment(f"no experiment named {name!r}", details=[{"experiment": name}])

    def names(self) -> list[str]:
        return sorted(self._active)

    async def refresh(self, *, strict: bool = False) -> None:
        """Load every experiment whose stored version differs from the one in force.

        With `strict` (start-up), a model that fails to load raises `ModelLoadError`; later, it
        is logged and the previous version stays in force.
        """
        try:
            versions = await self._store.versions()
            changed = [
                name
                for name, version in versions.items()
                if self._version_of(name) != version and not self._recently_rejected(name, version)
            ]
            loaded = []
            # one experiment's unreadable config: the others are still applied
            unreadable: list[tuple[str, str, StoredExperiment | None]] = []
            for name in changed:
                try:
                    loaded.append(await self._store.get(name))
                except UnreadableConfig as exc:
                    # a process that starts now serves the newest version it can read
                    fallback = await self._newest_readable(name) if self._version_of(name) is None else None
                    unreadable.append((name, exc.message, fallback))
        except StoreUnavailable as exc:
            self.lost_store(exc.message)
            raise
        for stored in loaded:
            await self._activate(stored, strict=strict)
        for name, why, fallback in unreadable:
            if fallback is not None:
                await self._activate(fallback, strict=False)
            self._reject(name, versions[name], why)  # after: activating clears an experiment's rejection
        for name in set(self.rejected) - set(versions):  # archived since: nothing to warn about
            self.rejected.pop(name, None)
            self._rejected_versions.pop(name, None)
        for name in set(self._active) - set(versions):
            self._rejected_versions.pop(name, None)
            log.info("experiment %s is archived or deleted: no longer served", name)
            del self._active[name]
            if self._metrics is not None:
                self._metrics.experiment_retired(name)
        if loaded:
            self._models.retain(
                backend.model
                for active in self._active.values()
                for backend in active.backends.values()
                if isinstance(backend, LocalVariant)
            )
        if self.store_error is not None:
            log.info("config store reachable again; config in force checked")
            self.store_error = None
        if self._metrics is not None:
            self._metrics.set_config_stale(False)
        self.loaded = True
        self.last_refresh = time.monotonic()

    @property
    def stale(self) -> bool:
        """Whether the last check against Redis failed, so the config in force may be out of date."""
        return self.store_error is not None

    def lost_store(self, message: str) -> None:
        """Redis cannot be reached: keep serving what is loaded, and say so (readyz, abrouter_config_stale)."""
        if self.store_error is None:
            log.warning("config store unreachable, serving the last config loaded: %s", message)
        self.store_error = message
        if self._metrics is not None:
            self._metrics.set_config_stale(True)
            self._metrics.store_error(StoreOperation.CONFIG)

    def _version_of(self, name: str) -> int | None:
        active = self._active.get(name)
        return active.version if active is not None else None

    async def _newest_readable(self, name: str) -> StoredExperiment | None:
        """The newest version of `name` in its history that this release can read, unless it is archived."""
        for stored in reversed(await self._store.readable_history(name)):
            if stored is not None:
                return None if stored.archived else stored
        return None

    def _reject(self, name: str, version: int, why: str) -> None:
        """Keep the version in force (if any) and say why the newest one is not (readyz)."""
        log.error(
            "experiment %s version %d not applied (tried again in %g s): %s", name, version, self._rejected_retry_s, why
        )
        self.rejected[name] = f"version {version}: {why}"
        self._rejected_versions[name] = (version, time.monotonic())

    def _recently_rejected(self, name: str, version: int) -> bool:
        """Whether `version` failed within `rejected_retry_s`: a model file that arrives after its config
        (copied to each replica by another tool) or a passing failure must not pin the replica for good."""
        rejected = self._rejected_versions.get(name)
        return (
            rejected is not None and rejected[0] == version and time.monotonic() - rejected[1] < self._rejected_retry_s
        )

    async def _activate(self, stored: StoredExperiment, *, strict: bool) -> None:
        name = stored.experiment.name
        try:
            backends = await build_backends(stored.experiment, client=self._client, models=self._models)
        except ModelLoadError as exc:
            if strict:
                raise
            self._reject(name, stored.version, exc.message)
            return
        self.rejected.pop(name, None)
        self._rejected_versions.pop(name, None)
        previous = self._version_of(name)
        self._active[name] = ActiveExperiment(stored=stored, backends=backends)
        if self._metrics is not None:
            self._metrics.config_in_force(stored.experiment, stored.version)
        log.info("experiment %s: version %s -> %d in force", name, previous, stored.version)
