"""Versioned experiment configs in Redis, the source of truth at run time (SPEC sections 4 and 5).

Every change writes a new integer version with one compare-and-set Lua script that touches only
the experiment's own keys (one cluster slot): it checks the version the caller saw, replaces the
config hash and appends to the history list. Then the change is announced on a pub/sub channel
so every replica reloads it; replicas also poll `versions()` as a backstop for lost messages.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import redis.asyncio
import redis.asyncio.client
import redis.exceptions
from pydantic import ValidationError
from redis.asyncio.cluster import RedisCluster

from router.config.loader import describe_validation_error
from router.config.schema import Experiment
from router.errors import StoreUnavailable, UnknownExperiment, UnknownVersion, UnreadableConfig, VersionConflict
from router.store.client import RedisClient
from router.store.keys import Keys

log = logging.getLogger("abrouter.config")

# KEYS: config hash, history list. ARGV: the version the caller saw ("" = absent), the new version,
# config JSON, updated_at, updated_by, archived (0/1), change, history entry JSON.
# Returns {1, new version} or {0, version found} so the caller can say which version won.
_COMPARE_AND_SET: Final = """
local current = redis.call('HGET', KEYS[1], 'version') or ''
if current ~= ARGV[1] then
  return {0, current}
end
redis.call('HSET', KEYS[1], 'version', ARGV[2], 'config', ARGV[3], 'updated_at', ARGV[4],
           'updated_by', ARGV[5], 'archived', ARGV[6], 'change', ARGV[7])
redis.call('RPUSH', KEYS[2], ARGV[8])
return {1, ARGV[2]}
"""

# Shown inline in a change summary up to this length; longer values are only said to have changed.
_SHOW_MAX: Final = 60


@dataclass(frozen=True, slots=True)
class StoredExperiment:
    """One version of an experiment as the store holds it."""

    experiment: Experiment
    version: int
    updated_at: str
    updated_by: str
    archived: bool = False
    change: str = ""

    @property
    def name(self) -> str:
        return self.experiment.name


def utc_now() -> datetime:
    return datetime.now(UTC)


class ConfigStore:
    """Reads and writes experiment configs with optimistic concurrency (an expected version per write)."""

    def __init__(self, redis: RedisClient, *, keys: Keys, clock: Callable[[], datetime] = utc_now) -> None:
        self._redis = redis
        self._keys = keys
        self._clock = clock
        self._compare_and_set = redis.register_script(_COMPARE_AND_SET)

    async def get(self, name: str) -> StoredExperiment:
        """The version of `name` in force; `UnknownExperiment` if there is none or it is archived."""
        stored = await self._read(name)
        if stored is None or stored.archived:
            raise _unknown(name, stored)
        return stored

    async def list(self) -> builtins.list[StoredExperiment]:
        """Every experiment that is not archived, sorted by name; those this release cannot read are left out."""
        names = await self._names()
        with _translate_errors():
            async with self._redis.pipeline(transaction=False) as pipe:
                for name in names:
                    pipe.hgetall(self._keys.config(name))
                rows = await pipe.execute()
        listed = []
        for name, row in zip(names, rows, strict=True):
            if not row:
                continue
            try:
                stored = _from_hash(row)
            except UnreadableConfig as exc:  # one experiment's: the others are still listed
                log.warning("experiment %s left out of the list: %s", name, exc.message)
                continue
            if not stored.archived:
                listed.append(stored)
        return listed

    async def versions(self) -> dict[str, int]:
        """name -> version of every experiment that is not archived, without reading the configs."""
        names = await self._names()
        with _translate_errors():
            async with self._redis.pipeline(transaction=False) as pipe:
                for name in names:
                    pipe.hmget(self._keys.config(name), ["version", "archived"])
                rows = await pipe.execute()
        return {
            name: int(version)
            for name, (version, archived) in zip(names, rows, strict=True)
            if version is not None and _text(archived) != "1"
        }

    async def put(
        self, experiment: Experiment, *, actor: str, expected_version: int | None, note: str = ""
    ) -> StoredExperiment:
        """Create (`expected_version=None`) or replace the version the caller saw; an identical config is a no-op.

        Creating an archived experiment again continues its version numbers, so history stays one line.
        `note` (e.g. "promoted candidate") heads the change summary of the history entry.
        """
        name = experiment.name
        current = await self._read(name)
        if expected_version is None:
            if current is not None and not current.archived:
                raise VersionConflict(
                    f"experiment {name!r} already exists at version {current.version}; "
                    "replacing it needs the version being replaced",
                    details=[{"experiment": name, "expected_version": None, "current_version": current.version}],
                )
            change = (
                "created" if current is None else _joined("re-created", describe_change(current.experiment, experiment))
            )
        else:
            if current is None or current.archived:
                raise _unknown(name, current)
            _check_version(name, expected_version, current.version)
            if _same_config(current.experiment, experiment):
                return current
            change = describe_change(current.experiment, experiment)
        if note:
            change = _joined(note, change)
        return await self._write(
            experiment, actor=actor, change=change, seen=current, expected_version=expected_version
        )

    async def create_if_absent(self, experiment: Experiment, *, actor: str) -> StoredExperiment | None:
        """Create `experiment` unless one of that name exists, archived ones included; None when it exists.

        An archived experiment counts as existing so that `serve --config` does not bring back
        what an operator deleted each time the gateway restarts.
        """
        try:
            if await self._read(experiment.name) is not None:
                return None
        except UnreadableConfig:
            return None  # written by a newer release: it exists, and a restart must not fail on it
        try:
            return await self._write(experiment, actor=actor, change="created", seen=None, expected_version=None)
        except VersionConflict:
            return None  # another replica created it between our read and our write

    async def history(self, name: str) -> builtins.list[StoredExperiment]:
        """Every version of `name`, oldest first, archived ones included."""
        return [_from_history_entry(entry) for entry in await self._history_entries(name)]

    async def readable_history(self, name: str) -> builtins.list[StoredExperiment | None]:
        """`history`, with None for each version this release cannot read (a newer release's) instead of failing."""
        readable: builtins.list[StoredExperiment | None] = []
        for entry in await self._history_entries(name):
            try:
                readable.append(_from_history_entry(entry))
            except UnreadableConfig:
                readable.append(None)
        return readable

    async def _history_entries(self, name: str) -> builtins.list[bytes | str]:
        with _translate_errors():
            entries: builtins.list[bytes | str] = await self._redis.lrange(self._keys.history(name), 0, -1)
        if not entries:
            raise _unknown(name, None)
        return entries

    async def archive(self, name: str, *, actor: str, expected_version: int | None = None) -> StoredExperiment:
        """Write a new version marked archived: it stops being served, its data and history are kept."""
        current = await self._read(name)
        if current is None or current.archived:
            raise _unknown(name, current)
        if expected_version is not None:
            _check_version(name, expected_version, current.version)
        return await self._write(
            current.experiment,
            actor=actor,
            change="archived",
            seen=current,
            expected_version=expected_version,
            archived=True,
        )

    async def rollback(
        self,
        name: str,
        *,
        actor: str,
        to_version: int | None = None,
        expected_version: int | None = None,
        check: Callable[[Experiment], Awaitable[None]] | None = None,
    ) -> StoredExperiment:
        """Write the config of an earlier version (default: the one before the current) as a new version.

        Like an identical `put`, it is a no-op when that config is the one in force. `check` sees
        the earlier config before it is written and raises to refuse it, as a `put` is checked.
        """
        current = await self._read(name)
        if current is None or current.archived:
            raise _unknown(name, current)
        if expected_version is not None:
            _check_version(name, expected_version, current.version)
        if to_version is None and current.version == 1:
            raise UnknownVersion(
                f"experiment {name!r} has only version 1: there is no earlier version to roll back to",
                details=[{"experiment": name, "current_version": 1}],
            )
        target = await self._version(name, current.version - 1 if to_version is None else to_version, current)
        if _same_config(current.experiment, target.experiment):
            return current
        if check is not None:
            await check(target.experiment)
        change = _joined(
            f"rolled back to version {target.version}", describe_change(current.experiment, target.experiment)
        )
        return await self._write(
            target.experiment, actor=actor, change=change, seen=current, expected_version=expected_version
        )

    @contextlib.asynccontextmanager
    async def subscribe(self) -> AsyncIterator[ChangeFeed]:
        """Listen to the change notices every write publishes; `StoreUnavailable` when Redis cannot be reached."""
        pubsub = self._redis.pubsub()
        try:
            with _translate_errors():
                if isinstance(self._redis, RedisCluster):
                    # its pub/sub picks the channel's node from the slot map, which a fresh client lacks
                    await self._redis.initialize()
                await pubsub.subscribe(self._keys.config_channel())
            yield ChangeFeed(pubsub)
        finally:
            # closing a connection to a Redis that is gone can fail too; there is nothing left to do then
            with contextlib.suppress(redis.exceptions.RedisError, OSError):
                await pubsub.aclose()  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated

    async def _version(self, name: str, version: int, current: StoredExperiment) -> StoredExperiment:
        """Version `version` of `name` from its history (entry i holds version i + 1)."""
        if 1 <= version <= current.version:
            with _translate_errors():
                raw = await self._redis.lindex(self._keys.history(name), version - 1)
            entry = _from_history_entry(raw) if raw is not None else None
            if entry is not None and entry.version == version:
                return entry
            # a history that does not start at version 1 (e.g. restored from elsewhere): look it up
            for entry in await self.history(name):
                if entry.version == version:
                    return entry
        raise UnknownVersion(
            f"experiment {name!r} has no version {version} (its versions are 1 to {current.version})",
            details=[{"experiment": name, "version": version, "current_version": current.version}],
        )

    async def _read(self, name: str) -> StoredExperiment | None:
        with _translate_errors():
            row = await self._redis.hgetall(self._keys.config(name))
        return _from_hash(row) if row else None

    async def _names(self) -> builtins.list[str]:
        with _translate_errors():
            members = await self._redis.smembers(self._keys.index())
        return sorted(_text(m) for m in members)

    async def _write(
        self,
        experiment: Experiment,
        *,
        actor: str,
        change: str,
        seen: StoredExperiment | None,
        expected_version: int | None,
        archived: bool = False,
    ) -> StoredExperiment:
        name = experiment.name
        stored = StoredExperiment(
            experiment=experiment,
            version=(seen.version if seen is not None else 0) + 1,
            updated_at=_iso(self._clock()),
            updated_by=actor,
            archived=archived,
            change=change,
        )
        config_json = _dumps(experiment.model_dump(mode="json"))
        entry = {
            "version": stored.version,
            "updated_at": stored.updated_at,
            "updated_by": stored.updated_by,
            "archived": stored.archived,
            "change": stored.change,
            "config": experiment.model_dump(mode="json"),
        }
        with _translate_errors():
            # Indexed before the write: a name whose write then fails is skipped by readers, whereas
            # a written config missing from the index would be invisible to list() and versions().
            await self._redis.sadd(self._keys.index(), name)
            outcome, version = await self._compare_and_set(
                keys=[self._keys.config(name), self._keys.history(name)],
                args=[
                    str(seen.version) if seen is not None else "",
                    str(stored.version),
                    config_json,
                    stored.updated_at,
                    stored.updated_by,
                    "1" if archived else "0",
                    change,
                    _dumps(entry),
                ],
            )
        if int(outcome) != 1:
            found = int(version) if version else None
            raise VersionConflict(
                f"experiment {name!r} changed concurrently: it was at version "
                f"{seen.version if seen is not None else 'none'} and is now at version {found or 'none'}",
                details=[{"experiment": name, "expected_version": expected_version, "current_version": found}],
            )
        with _translate_errors():
            # A lost notification is repaired by the replicas' periodic versions() check.
            message = {"name": name, "version": stored.version, "archived": archived}
            await self._redis.publish(self._keys.config_channel(), _dumps(message))
        return stored


@dataclass(frozen=True, slots=True)
class ChangeNotice:
    """What a write announces on the config channel."""

    name: str
    version: int
    archived: bool


class ChangeFeed:
    """A subscription to the config channel (see `ConfigStore.subscribe`)."""

    def __init__(self, pubsub: redis.asyncio.client.PubSub) -> None:
        self._pubsub = pubsub

    async def next(self, timeout_s: float) -> ChangeNotice | None:
        """The next notice, or None when `timeout_s` passes without one (or a message is not a notice)."""
        with _translate_errors():
            message = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=timeout_s)
        if message is None or message.get("type") != "message":
            return None
        try:
            data = json.loads(message["data"])
            return ChangeNotice(name=str(data["name"]), version=int(data["version"]), archived=bool(data["archived"]))
        except (ValueError, TypeError, KeyError):
            # another program on the channel; the reader reloads on any message, so nothing is lost
            return None


def describe_change(before: Experiment, after: Experiment) -> str:
    """A readable summary of what changed, e.g. "weights a 90->75, b 10->25; status running->paused"."""
    old, new = before.model_dump(mode="json"), after.model_dump(mode="json")
    parts: builtins.list[str] = []
    for field, value in new.items():
        if field == "variants":
            parts += _variant_changes(old["variants"], value)
        elif old.get(field) != value:
            parts.append(_field_change(field, old.get(field), value))
    return "; ".join(parts) or "no change"


def _variant_changes(old: Sequence[Mapping[str, Any]], new: Sequence[Mapping[str, Any]]) -> builtins.list[str]:
    before = {v["name"]: v for v in old}
    after = {v["name"]: v for v in new}
    common = [name for name in after if name in before]
    parts = []
    weights = [
        f"{name} {_show(before[name]['weight'])}->{_show(after[name]['weight'])}"
        for name in common
        if before[name]["weight"] != after[name]["weight"]
    ]
    if weights:
        parts.append("weights " + ", ".join(weights))
    for name in common:
        parts += [
            _field_change(f"variant {name} {field}", before[name].get(field), value)
            for field, value in after[name].items()
            if field not in ("name", "weight") and before[name].get(field) != value
        ]
    parts += [f"variant {name} added (weight {_show(after[name]['weight'])})" for name in after if name not in before]
    parts += [f"variant {name} removed" for name in before if name not in after]
    # Order decides the bucket ranges, so a reordering moves units even when nothing else changed.
    if [n for n in before if n in after] != common:
        parts.append("variants reordered")
    return parts


def _field_change(label: str, old: Any, new: Any) -> str:
    shown_old, shown_new = _show(old), _show(new)
    if len(shown_old) > _SHOW_MAX or len(shown_new) > _SHOW_MAX:
        return f"{label} changed"
    return f"{label} {shown_old}->{shown_new}"


def _show(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, str | int | float):
        return str(value)
    return _dumps(value)


def _joined(head: str, tail: str) -> str:
    return head if tail == "no change" else f"{head}; {tail}"


def _same_config(a: Experiment, b: Experiment) -> bool:
    return a.model_dump(mode="json") == b.model_dump(mode="json")


def _check_version(name: str, expected: int, current: int) -> None:
    if expected != current:
        raise VersionConflict(
            f"experiment {name!r} is at version {current}, not the expected version {expected}",
            details=[{"experiment": name, "expected_version": expected, "current_version": current}],
        )


def _unknown(name: str, stored: StoredExperiment | None) -> UnknownExperiment:
    if stored is not None and stored.archived:
        return UnknownExperiment(
            f"experiment {name!r} is archived (version {stored.version})",
            details=[{"experiment": name, "archived": True}],
        )
    return UnknownExperiment(f"no experiment named {name!r}", details=[{"experiment": name}])


def _from_hash(row: Mapping[bytes | str, bytes | str]) -> StoredExperiment:
    fields = {_text(k): _text(v) for k, v in row.items()}
    version = int(fields["version"])
    return StoredExperiment(
        experiment=_stored_experiment(json.loads(fields["config"]), version),
        version=version,
        updated_at=fields["updated_at"],
        updated_by=fields["updated_by"],
        archived=fields.get("archived") == "1",
        change=fields.get("change", ""),
    )


def _stored_experiment(config: Any, version: int) -> Experiment:
    """A stored config as an `Experiment`; `UnreadableConfig` when this release cannot read it.

    Every config was valid when it was written, so one that does not parse now was written by
    another release: a newer one with fields this one does not know, during a rolling upgrade.
    """
    try:
        return Experiment.model_validate(config)
    except ValidationError as exc:
        name = config.get("name") if isinstance(config, dict) else None
        problems = describe_validation_error(exc)
        raise UnreadableConfig(
            f"the stored config of experiment {name!r} (version {version}) cannot be read by this gateway "
            f"({problems[0] if problems else exc}); it was probably written by a newer release of abrouter: "
            "upgrade this replica",
            details=[{"experiment": name, "version": version, "problems": problems}],
        ) from None


def _from_history_entry(raw: bytes | str) -> StoredExperiment:
    entry = json.loads(raw)
    version = int(entry["version"])
    return StoredExperiment(
        experiment=_stored_experiment(entry["config"], version),
        version=version,
        updated_at=entry["updated_at"],
        updated_by=entry["updated_by"],
        archived=bool(entry.get("archived", False)),
        change=entry.get("change", ""),
    )


def _text(value: bytes | str | None) -> str:
    """Works with clients made with and without `decode_responses`."""
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else value


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


@contextlib.contextmanager
def _translate_errors() -> Iterator[None]:
    """The one place redis exceptions become `StoreUnavailable`: nothing above this module sees redis."""
    try:
        yield
    except redis.exceptions.RedisError as exc:
        raise StoreUnavailable(f"the config store in Redis failed: {type(exc).__name__}: {exc}") from exc
