"""The OpenAPI document served at /openapi.json.

Operations are described here, next to each other, and schemas come from the pydantic models;
a test checks that every route of the app is described, so a new endpoint cannot be forgotten.
"""

from __future__ import annotations

from typing import Any, Final

from router import __version__
from router.config.schema import Experiment

_ERROR_SCHEMA: Final = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "details": {"type": "array", "items": {}},
            },
            "required": ["code", "message", "details"],
        }
    },
}


def _errors(*statuses: int) -> dict[str, Any]:
    return {
        str(status): {
            "description": "error",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
        for status in statuses
    }


_NAME_PARAM: Final = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
_ASSIGNMENT_HEADERS: Final = {
    name: {"description": description, "schema": {"type": "string"}}
    for name, description in {
        "X-Experiment": "the experiment",
        "X-Variant": "the variant that served the call",
        "X-Assignment": "why: no_unit, paused, concluded, forced, override, not_enrolled, sticky, hashed, fallback",
        "X-Config-Version": "the experiment's config version in force",
        "X-Request-Id": "the caller's request id, or a new one",
    }.items()
}

OPERATIONS: Final[dict[tuple[str, str], dict[str, Any]]] = {
    ("/v1/experiments/{name}/predict", "post"): {
        "summary": "Serve a prediction call with the variant assigned to the caller's unit",
        "description": (
            "Remote variants get the body and end-to-end headers and their answer comes back unchanged. "
            'Local variants take `{"instances": [[...], ...]}` and answer `{"predictions": [...], '
            '"probabilities": [[...]]}`.'
        ),
        "parameters": [_NAME_PARAM],
        "requestBody": {"content": {"application/json": {"schema": {}}}},
        "responses": {
            "200": {"description": "the variant's answer", "headers": _ASSIGNMENT_HEADERS},
            **_errors(400, 404, 413, 422, 502, 503, 504),
        },
    },
    ("/healthz", "get"): {"summary": "Liveness", "responses": {"200": {"description": "alive"}}},
    ("/readyz", "get"): {
        "summary": "Readiness: config loaded and Redis answering",
        "responses": {"200": {"description": "ready"}, "503": {"description": "not ready, with reasons"}},
    },
    ("/openapi.json", "get"): {"summary": "This document", "responses": {"200": {"description": "OpenAPI 3.1"}}},
}


def openapi_document() -> dict[str, Any]:
    """The whole OpenAPI 3.1 document."""
    paths: dict[str, dict[str, Any]] = {}
    for (path, method), operation in OPERATIONS.items():
        paths.setdefault(path, {})[method] = operation
    experiment_schema = Experiment.model_json_schema(ref_template="#/components/schemas/{model}")
    definitions = experiment_schema.pop("$defs", {})
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "abrouter",
            "version": __version__,
            "description": "A/B-testing and canary router for ML models",
        },
        "paths": paths,
        "components": {"schemas": {"Error": _ERROR_SCHEMA, "Experiment": experiment_schema, **definitions}},
    }
