"""The control plane: read, edit, preview, promote, roll back and archive experiment configs (SPEC section 4).

Every change is one compare-and-set on the experiment's version in Redis (`router.store.configs`):
of several editors who saw the same version exactly one wins, the others get 412. A version is
an HTTP entity tag (`ETag: "7"`), so `If-Match` is how a client says which version it edited.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any, Final
from urllib.parse import quote

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from router.api.auth import actor_of, admin_only
from router.api.responses import JSONResponse
from router.assignment.churn import moved_share, unit_moves
from router.config.edits import ConfigPatch, Promotion, Rollback, validated, validated_experiment
from router.config.schema import Experiment
from router.errors import (
    InvalidConfig,
    InvalidPayload,
    ModelLoadError,
    PreconditionRequired,
    UnknownExperiment,
    VersionConflict,
)
from router.services import Services
from router.store.configs import ConfigStore, StoredExperiment

# A PATCH without If-Match applies its change to whatever version is current; when another
# editor wins the race in between, the change is re-applied to the new version, after a short
# random pause so that racing editors spread out. The caller named no version, so a 412 would
# leave it nothing to do: it gets one only when this many attempts all lose.
EDIT_ATTEMPTS: Final = 64
EDIT_JITTER_S: Final = 0.005
#: a version is a Redis integer: longer tags can name no version (and int() of 5000 digits raises)
MAX_VERSION_DIGITS: Final = 18


def stored_json(stored: StoredExperiment) -> dict[str, Any]:
    """One version of an experiment as the API shows it."""
    return {
        "name": stored.name,
        "version": stored.version,
        "updated_at": stored.updated_at,
        "updated_by": stored.updated_by,
        "change": stored.change,
        "archived": stored.archived,
        "config": stored.experiment.model_dump(mode="json"),
    }


def stored_response(stored: StoredExperiment, *, status_code: int = 200) -> JSONResponse:
    headers = {"ETag": f'"{stored.version}"', "X-Config-Version": str(stored.version)}
    if status_code == 201:
        headers["Location"] = f"/v1/experiments/{quote(stored.name, safe='')}"
    return JSONResponse(stored_json(stored), status_code=status_code, headers=headers)


async def if_match(request: Request) -> int | None:
    """The version named by `If-Match` (`"7"`, `W/"7"`, `7`, or `*`: the current one); None when absent.

    A tag that is not a version can match no version, which HTTP answers with 412.
    """
    raw = request.headers.get("if-match")
    if raw is None:
        return None
    tag = raw.strip().removeprefix("W/")
    if tag == "*":
        try:
            return (await _store(request).get(request.path_params["name"])).version
        except UnknownExperiment:
            raise VersionConflict(
                "If-Match: * but the experiment does not exist", details=[{"if_match": raw}]
            ) from None
    if len(tag) >= 2 and tag[0] == tag[-1] == '"':
        tag = tag[1:-1]
    if tag.isascii() and tag.isdigit() and len(tag) <= MAX_VERSION_DIGITS:
        return int(tag)
    raise VersionConflict(
        f'If-Match {raw!r} names no version; send the ETag of GET /v1/experiments/{{name}}, e.g. "7"',
        details=[{"if_match": raw}],
    )


async def json_object(request: Request, *, empty: dict[str, Any] | None = None) -> dict[str, Any]:
    """The request body as a JSON object; `empty` stands for an empty body where one is allowed."""
    body = await request.body()
    if not body.strip() and empty is not None:
        return empty
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidPayload(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidPayload(f"the request body must be a JSON object, got {type(data).__name__}")
    return data


async def check_local_models(services: Services, experiment: Experiment) -> None:
    """Load the config's local models before storing it: a model that cannot load is a 422 now,
    not a version every replica refuses (and a restart that fails) later."""
    problems = []
    for i, variant in enumerate(experiment.variants):
        if variant.model is not None:
            try:
                await services.models.load_async(variant.model)
            except ModelLoadError as exc:
                problems.append(f"variants[{i}].model: {exc.message}")
    if problems:
        raise InvalidConfig(f"experiment {experiment.name!r}: a local model cannot be loaded", details=problems)


def _store(request: Request) -> ConfigStore:
    services: Services = request.app.state.services
    return services.store


def _check_version(name: str, expected: int | None, current: StoredExperiment) -> None:
    if expected is not None and expected != current.version:
        raise VersionConflict(
            f"experiment {name!r} is at version {current.version}, not the expected version {expected}",
            details=[{"experiment": name, "expected_version": expected, "current_version": current.version}],
        )


async def edit(
    store: ConfigStore,
    name: str,
    change: Callable[[Experiment], Experiment],
    *,
    actor: str,
    expected: int | None,
    note: str = "",
) -> StoredExperiment:
    """Apply `change` to the current version and write the result with one compare-and-set.

    With `expected` (If-Match) a concurrent edit is a 412; without, the change is re-applied to
    the newer version, since the caller asked for this change whatever the version.
    """
    for attempt in range(1, EDIT_ATTEMPTS + 1):
        current = await store.get(name)
        # checked against the version the change is computed from, not merely the one in Redis
        # at write time: otherwise a change computed from an older version could pass the check
        _check_version(name, expected, current)
        try:
            return await store.put(change(current.experiment), actor=actor, expected_version=current.version, note=note)
        except VersionConflict:
            if expected is not None or attempt == EDIT_ATTEMPTS:
                raise
        await asyncio.sleep(random.uniform(0, EDIT_JITTER_S * min(attempt, 10)))
    raise AssertionError("unreachable: the last attempt returns or raises")


@admin_only
async def list_experiments(request: Request) -> Response:
    """Every experiment that is not archived, sorted by name."""
    experiments = await _store(request).list()
    return JSONResponse({"experiments": [stored_json(s) for s in experiments]})


@admin_only
async def get_experiment(request: Request) -> Response:
    return stored_response(await _store(request).get(request.path_params["name"]))


@admin_only
async def put_experiment(request: Request) -> Response:
    """Create (201) or replace (200, `If-Match` required) a whole config."""
    name = request.path_params["name"]
    data = await json_object(request)
    data.setdefault("name", name)
    if data["name"] != name:
        raise InvalidConfig(
            f"experiment {name!r}: the body names another experiment",
            details=[f"name: must be the experiment of the URL {name!r}, got {data['name']!r}"],
        )
    experiment = validated_experiment(data)
    await check_local_models(request.app.state.services, experiment)
    expected = await if_match(request)
    store = _store(request)
    if expected is not None:
        return stored_response(await store.put(experiment, actor=actor_of(request), expected_version=expected))
    try:
        created = await store.put(experiment, actor=actor_of(request), expected_version=None)
    except VersionConflict as exc:
        raise PreconditionRequired(
            f"experiment {name!r} exists; replacing it needs If-Match with the version being replaced "
            "(the ETag of GET /v1/experiments/{name})",
            details=exc.details,
        ) from None
    return stored_response(created, status_code=201)


@admin_only
async def patch_experiment(request: Request) -> Response:
    """Change weights, status, winner, coverage, shadow or forced units; `If-Match` honoured when sent."""
    patch = validated(ConfigPatch, await json_object(request))
    stored = await edit(
        _store(request),
        request.path_params["name"],
        patch.apply,
        actor=actor_of(request),
        expected=await if_match(request),
    )
    return stored_response(stored)


@admin_only
async def preview_experiment(request: Request) -> Response:
    """What a PATCH body would do to assignment, from the bucket ranges; nothing is changed."""
    patch = validated(ConfigPatch, await json_object(request))
    current = await _store(request).get(request.path_params["name"])
    after = patch.apply(current.experiment)
    moves = unit_moves(current.experiment, after)
    return JSONResponse(
        {
            "experiment": current.name,
            "version": current.version,
            "moves": [{"from": m.source, "to": m.target, "share": m.share} for m in moves],
            "moved": moved_share(moves),
            "config": after.model_dump(mode="json"),
        },
        headers={"ETag": f'"{current.version}"'},
    )


@admin_only
async def promote_experiment(request: Request) -> Response:
    """Conclude the experiment: all traffic to the chosen variant."""
    promotion = validated(Promotion, await json_object(request))
    stored = await edit(
        _store(request),
        request.path_params["name"],
        promotion.apply,
        actor=actor_of(request),
        expected=await if_match(request),
        note=f"promoted {promotion.variant}",
    )
    return stored_response(stored)


@admin_only
async def rollback_experiment(request: Request) -> Response:
    """Write an earlier version's config (default: the previous version) as a new version."""
    rollback = validated(Rollback, await json_object(request, empty={}))
    services = request.app.state.services

    async def loads_its_models(experiment: Experiment) -> None:
        await check_local_models(services, experiment)  # its model files may be gone since

    stored = await _store(request).rollback(
        request.path_params["name"],
        actor=actor_of(request),
        to_version=rollback.to_version,
        expected_version=await if_match(request),
        check=loads_its_models,
    )
    return stored_response(stored)


@admin_only
async def experiment_history(request: Request) -> Response:
    """Every version, oldest first, with its time, actor and what changed."""
    name = request.path_params["name"]
    versions = await _store(request).history(name)
    return JSONResponse({"experiment": name, "versions": [stored_json(s) for s in versions]})


@admin_only
async def archive_experiment(request: Request) -> Response:
    """Stop serving the experiment; its history and data are kept. `If-Match` honoured when sent."""
    stored = await _store(request).archive(
        request.path_params["name"], actor=actor_of(request), expected_version=await if_match(request)
    )
    return stored_response(stored)


ROUTES: Final = [
    Route("/v1/experiments", list_experiments, methods=["GET"]),
    Route("/v1/experiments/{name}", get_experiment, methods=["GET"]),
    Route("/v1/experiments/{name}", put_experiment, methods=["PUT"]),
    Route("/v1/experiments/{name}", patch_experiment, methods=["PATCH"]),
    Route("/v1/experiments/{name}", archive_experiment, methods=["DELETE"]),
    Route("/v1/experiments/{name}/preview", preview_experiment, methods=["POST"]),
    Route("/v1/experiments/{name}/promote", promote_experiment, methods=["POST"]),
    Route("/v1/experiments/{name}/rollback", rollback_experiment, methods=["POST"]),
    Route("/v1/experiments/{name}/history", experiment_history, methods=["GET"]),
]
