"""The OpenAPI document served at /openapi.json.

Operations are described here, next to each other, and schemas come from the pydantic models;
a test checks that every route of the app is described, so a new endpoint cannot be forgotten.
"""

from __future__ import annotations

from typing import Any, Final

from router import __version__
from router.api.outcomes import MAX_OUTCOMES
from router.api.outcomes import request_schema as outcomes_request_schema
from router.config.edits import ConfigPatch, Promotion, Rollback
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

# --- the control plane (router.api.admin): every operation needs an admin bearer token ---------------------------

_ADMIN: Final[dict[str, Any]] = {"security": [{"bearerAuth": []}]}
_IF_MATCH: Final = {
    "name": "If-Match",
    "in": "header",
    "required": False,
    "description": 'the version the change was computed from, as the ETag gives it (`"7"`); 412 when stale',
    "schema": {"type": "string"},
}


def _ref(schema: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{schema}"}


def _json_body(schema: str, *, required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {"application/json": {"schema": _ref(schema)}}}


def _stored(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "headers": {"ETag": {"description": 'the version, quoted: `"7"`', "schema": {"type": "string"}}},
        "content": {"application/json": {"schema": _ref("StoredExperiment")}},
    }


_STORED_EXPERIMENT: Final = {
    "type": "object",
    "description": "One version of an experiment",
    "properties": {
        "name": {"type": "string"},
        "version": {"type": "integer"},
        "updated_at": {"type": "string", "format": "date-time"},
        "updated_by": {"type": "string", "description": "the actor of the token that made this version"},
        "change": {"type": "string", "description": "what changed from the previous version, readably"},
        "archived": {"type": "boolean"},
        "config": _ref("Experiment"),
    },
    "required": ["name", "version", "updated_at", "updated_by", "change", "archived", "config"],
}
_PREVIEW: Final = {
    "type": "object",
    "properties": {
        "experiment": {"type": "string"},
        "version": {"type": "integer", "description": "the version the preview was computed from"},
        "moves": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "from": {"type": "string"},
                    "to": {"type": "string"},
                    "share": {"type": "number", "description": "share of all units, 0..1"},
                },
                "required": ["from", "to", "share"],
            },
        },
        "moved": {"type": "number", "description": "sum of the shares"},
        "config": _ref("Experiment"),
    },
    "required": ["experiment", "version", "moves", "moved", "config"],
}

ADMIN_OPERATIONS: Final[dict[tuple[str, str], dict[str, Any]]] = {
    ("/v1/experiments", "get"): {
        "summary": "List the experiments that are not archived, by name",
        **_ADMIN,
        "responses": {
            "200": {
                "description": "every experiment in force",
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "properties": {"experiments": {"type": "array", "items": _ref("StoredExperiment")}},
                        }
                    }
                },
            },
            **_errors(401, 503),
        },
    },
    ("/v1/experiments/{name}", "get"): {
        "summary": "An experiment's config, version, time and actor of its last change",
        **_ADMIN,
        "parameters": [_NAME_PARAM],
        "responses": {"200": _stored("the version in force"), **_errors(401, 404, 503)},
    },
    ("/v1/experiments/{name}", "put"): {
        "summary": "Create an experiment (201) or replace its whole config (200, If-Match required)",
        "description": (
            "The body is an experiment as in a config file; `name` may be left out and must otherwise be the "
            "URL's. Replacing without `If-Match` is refused with 428, so no edit is lost; an identical config "
            "changes nothing. Archived experiments are created again with their version numbers continued."
        ),
        **_ADMIN,
        "parameters": [_NAME_PARAM, _IF_MATCH],
        "requestBody": _json_body("Experiment"),
        "responses": {
            "200": _stored("replaced"),
            "201": _stored("created"),
            **_errors(401, 404, 412, 413, 422, 428, 503),
        },
    },
    ("/v1/experiments/{name}", "patch"): {
        "summary": "Change weights, status, winner, coverage, shadow or forced units",
        "description": (
            "Only the fields sent change; `weights` names the variants whose weight changes, `force` replaces the "
            "whole map, null clears `winner` or `shadow`. With `If-Match` a concurrent change gives 412; without, "
            "the patch applies to whatever version is current."
        ),
        **_ADMIN,
        "parameters": [_NAME_PARAM, _IF_MATCH],
        "requestBody": _json_body("ConfigPatch"),
        "responses": {"200": _stored("the new version"), **_errors(401, 404, 412, 413, 422, 503)},
    },
    ("/v1/experiments/{name}", "delete"): {
        "summary": "Archive an experiment: no longer served, its history and data kept",
        **_ADMIN,
        "parameters": [_NAME_PARAM, _IF_MATCH],
        "responses": {"200": _stored("the archived version"), **_errors(401, 404, 412, 503)},
    },
    ("/v1/experiments/{name}/preview", "post"): {
        "summary": "Which share of units a PATCH body would move from which variant to which; nothing changes",
        "description": (
            "Computed from the bucket ranges of the config in force and of the patched one: a move's share is "
            "the overlap of the old range of `from` with the new range of `to`, scaled by the namespace's width. "
            "Forced units are not counted."
        ),
        **_ADMIN,
        "parameters": [_NAME_PARAM],
        "requestBody": _json_body("ConfigPatch"),
        "responses": {
            "200": {"description": "the moves", "content": {"application/json": {"schema": _ref("Preview")}}},
            **_errors(401, 404, 413, 422, 503),
        },
    },
    ("/v1/experiments/{name}/promote", "post"): {
        "summary": "Conclude the experiment with all traffic to one variant",
        **_ADMIN,
        "parameters": [_NAME_PARAM, _IF_MATCH],
        "requestBody": _json_body("Promotion"),
        "responses": {"200": _stored("the concluded version"), **_errors(401, 404, 412, 413, 422, 503)},
    },
    ("/v1/experiments/{name}/rollback", "post"): {
        "summary": "Write an earlier version's config (default: the previous version) as a new version",
        "description": "A no-op when that config is the one in force. The body may be empty.",
        **_ADMIN,
        "parameters": [_NAME_PARAM, _IF_MATCH],
        "requestBody": _json_body("Rollback", required=False),
        "responses": {"200": _stored("the restored config as a new version"), **_errors(401, 404, 412, 422, 503)},
    },
    ("/v1/experiments/{name}/history", "get"): {
        "summary": "Every version, oldest first, with its time, actor and what changed",
        **_ADMIN,
        "parameters": [_NAME_PARAM],
        "responses": {
            "200": {
                "description": "the history, archived versions included",
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "properties": {
                                "experiment": {"type": "string"},
                                "versions": {"type": "array", "items": _ref("StoredExperiment")},
                            },
                        }
                    }
                },
            },
            **_errors(401, 404, 503),
        },
    },
}

# --- reports (router.api.reports): admin auth too -------------------------------------------------------------------

_MAYBE_NUMBER: Final = {"type": ["number", "null"]}
_LATENCY_MS: Final = {
    "type": "object",
    "description": "interpolated from the latency histogram every replica writes to; null without calls",
    "properties": {"p50": _MAYBE_NUMBER, "p95": _MAYBE_NUMBER, "p99": _MAYBE_NUMBER},
    "required": ["p50", "p95", "p99"],
}
_SRM: Final = {
    "type": "object",
    "description": "the sample-ratio-mismatch check: when `passed` is false, no result of the report can be trusted",
    "properties": {
        "status": {"enum": ["ok", "insufficient_data"]},
        "passed": {"type": "boolean", "description": "false only when the chi-square p-value is below `threshold`"},
        "p_value": {**_MAYBE_NUMBER, "description": "Pearson chi-square against the configured weights"},
        "threshold": {"type": "number"},
        "chi_square": _MAYBE_NUMBER,
        "df": {"type": ["integer", "null"]},
        "sequential_p_value": {
            **_MAYBE_NUMBER,
            "description": "Optimizely's ssrm: the running minimum over every report since the weights last changed",
        },
        "expected_shares": {"type": "object", "additionalProperties": {"type": "number"}},
        "units": {"type": "object", "additionalProperties": {"type": "integer"}},
        "message": {"type": "string"},
    },
    "required": ["status", "passed", "p_value", "sequential_p_value", "expected_shares", "units", "message"],
}
_VARIANT_REPORT: Final = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "control": {"type": "boolean"},
        "weight": {"type": "number", "description": "normalised: the share of units the config asks for"},
        "expected_share": {"type": "number"},
        "observed_share": _MAYBE_NUMBER,
        "units": {"type": "integer", "description": "exposed units: hashed or sticky assignments"},
        "requests": {"type": "integer", "description": "every call assigned this variant, exposed or not"},
        "errors": {"type": "integer", "description": "5xx answers and calls that fell back to control"},
        "error_rate": _MAYBE_NUMBER,
        "latency_ms": _LATENCY_MS,
    },
    "required": ["name", "control", "weight", "units", "requests", "errors", "error_rate", "latency_ms"],
}
_COMPARISON: Final = {
    "type": "object",
    "description": (
        "a treatment against control; `ci_*`, `p_value`, `chance_to_beat_control`, `risk` and the sequential "
        "numbers are about the relative lift, `absolute_*` about the difference of means; all null with "
        "`status: insufficient_data`"
    ),
    "properties": {
        "variant": {"type": "string"},
        "status": {"enum": ["ok", "insufficient_data"]},
        "reason": {"type": ["string", "null"], "description": "too_few_units, zero_variance, zero_control_mean, ..."},
        "detail": {"type": ["string", "null"]},
        **{
            field: _MAYBE_NUMBER
            for field in (
                "absolute_effect",
                "absolute_ci_low",
                "absolute_ci_high",
                "absolute_p_value",
                "relative_lift",
                "relative_se",
                "ci_low",
                "ci_high",
                "p_value",
                "p_value_holm",
                "chance_to_beat_control",
                "sequential_ci_low",
                "sequential_ci_high",
                "sequential_p_value",
            )
        },
        "risk": {
            "type": ["array", "null"],
            "items": {"type": "number"},
            "description": "[expected loss keeping control, expected loss shipping the variant]",
        },
    },
    "required": ["variant", "status", "reason", "relative_lift", "ci_low", "ci_high", "p_value"],
}
_METRIC_REPORT: Final = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "kind": {"enum": ["binomial", "mean"]},
        "control": {"type": "string"},
        "arms": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "variant": {"type": "string"},
                    "units": {"type": "integer"},
                    "mean": _MAYBE_NUMBER,
                    "variance": _MAYBE_NUMBER,
                },
                "required": ["variant", "units", "mean", "variance"],
            },
        },
        "comparisons": {"type": "array", "items": _COMPARISON},
    },
    "required": ["name", "kind", "control", "arms", "comparisons"],
}
_REPORT: Final = {
    "type": "object",
    "description": "The experiment report (SPEC section 6); docs/statistics.md explains every number",
    "properties": {
        "experiment": {"type": "string"},
        "description": {"type": "string"},
        "status": {"type": "string"},
        "config_version": {"type": "integer"},
        "generated_at": {"type": "string", "format": "date-time"},
        "alpha": {"type": "number"},
        "total_units": {"type": "integer"},
        "srm": _SRM,
        "variants": {"type": "array", "items": _VARIANT_REPORT},
        "metrics": {"type": "array", "items": _METRIC_REPORT},
    },
    "required": ["experiment", "config_version", "generated_at", "srm", "variants", "metrics"],
}

REPORT_OPERATIONS: Final[dict[tuple[str, str], dict[str, Any]]] = {
    ("/v1/experiments/{name}/report", "get"): {
        "summary": "The experiment report: sample-ratio check, operations per variant, every metric compared",
        "description": (
            "Built from the per-variant sufficient statistics in Redis, so it costs the same at any traffic. "
            "Each call is a look of the sequential SRM test, whose running minimum is kept in Redis. "
            "`format=html` gives one self-contained page (inline CSS and SVG charts, nothing fetched). "
            "See docs/statistics.md."
        ),
        **_ADMIN,
        "parameters": [
            _NAME_PARAM,
            {
                "name": "format",
                "in": "query",
                "required": False,
                "schema": {"enum": ["json", "html"], "default": "json"},
            },
        ],
        "responses": {
            "200": {
                "description": "the report",
                "headers": {
                    "X-Config-Version": {"description": "the version reported on", "schema": {"type": "string"}}
                },
                "content": {
                    "application/json": {"schema": _ref("Report")},
                    "text/html": {"schema": {"type": "string"}},
                },
            },
            **_errors(401, 404, 422, 503),
        },
    },
}

# --- the progressive rollout (router.api.rollout): admin auth too ------------------------------------------------

_ROLLOUT: Final = {
    "type": "object",
    "description": "Where a progressive rollout stands (SPEC section 7); docs/rollout.md explains each field",
    "properties": {
        "experiment": {"type": "string"},
        "config_version": {"type": "integer"},
        "canary": {"type": "string"},
        "steps": {"type": "array", "items": {"type": "number"}},
        "rollout": {"type": "object", "description": "the `rollout` block of the config in force"},
        "phase": {"enum": ["pending", "running", "paused", "rolled_back", "aborted", "promoted"]},
        "step": {"type": ["integer", "null"], "description": "index into steps"},
        "percent": {"type": ["number", "null"], "description": "the canary's share of traffic now"},
        "weights_applied": {"type": ["boolean", "null"]},
        "next_decision_at": {"type": ["string", "null"], "format": "date-time"},
        "lease": {"type": ["object", "null"], "description": "the gateway process running the controller"},
        "decisions": {
            "type": "array",
            "description": "newest first: decision, actor, reason, shares, units per arm and every gate's result",
            "items": {"type": "object"},
        },
    },
    "required": ["experiment", "phase", "decisions"],
}

ROLLOUT_OPERATIONS: Final[dict[tuple[str, str], dict[str, Any]]] = {
    ("/v1/experiments/{name}/rollout", "get"): {
        "summary": "The progressive rollout: phase, step, the canary's share, and every decision with its inputs",
        **_ADMIN,
        "parameters": [_NAME_PARAM],
        "responses": {
            "200": {"description": "the rollout", "content": {"application/json": {"schema": _ref("Rollout")}}},
            **_errors(401, 404, 409, 503),
        },
    },
    ("/v1/experiments/{name}/rollout/{action}", "post"): {
        "summary": "An operator's action on the rollout: pause, resume, advance or abort",
        "description": (
            "Recorded as a decision with the operator as actor. `resume` restarts a rolled-back or aborted "
            "rollout at its first step; `advance` moves to the next step without waiting for the gates "
            "(into the last step: promotes the canary); `abort` takes all traffic from the canary. "
            "409 `rollout_conflict` when the action does not apply to the rollout as it stands."
        ),
        **_ADMIN,
        "parameters": [
            _NAME_PARAM,
            {
                "name": "action",
                "in": "path",
                "required": True,
                "schema": {"enum": ["pause", "resume", "advance", "abort"]},
            },
        ],
        "responses": {
            "200": {
                "description": "the rollout after the action",
                "content": {"application/json": {"schema": _ref("Rollout")}},
            },
            **_errors(401, 404, 409, 422, 503),
        },
    },
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
    ("/v1/experiments/{name}/outcomes", "post"): {
        "summary": "Report metric values for units, attributed to the variant of each unit's first exposure",
        "description": (
            f'One outcome `{{"unit", "metric", "value"}}` or `{{"outcomes": [...]}}` with up to {MAX_OUTCOMES}. '
            "The metric must be declared by the experiment and the value a finite number. `unattributed` counts "
            "outcomes of units not known to be exposed when the call is answered (attributed if the exposure is "
            "written later); when Redis cannot be asked in time, `unverified` counts those whose "
            "attribution is decided when they are written. See docs/events.md."
        ),
        "parameters": [_NAME_PARAM],
        "requestBody": {"required": True, "content": {"application/json": {"schema": outcomes_request_schema()}}},
        "responses": {
            "202": {
                "description": "queued for Redis",
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "properties": {
                                "accepted": {"type": "integer"},
                                "unattributed": {"type": "integer"},
                                "unverified": {"type": "integer", "description": "only while Redis is unreachable"},
                            },
                            "required": ["accepted", "unattributed"],
                        }
                    }
                },
            },
            **_errors(404, 413, 422, 503),
        },
    },
    ("/healthz", "get"): {"summary": "Liveness", "responses": {"200": {"description": "alive"}}},
    ("/readyz", "get"): {
        "summary": "Readiness: config loaded and Redis answering",
        "responses": {"200": {"description": "ready"}, "503": {"description": "not ready, with reasons"}},
    },
    ("/openapi.json", "get"): {"summary": "This document", "responses": {"200": {"description": "OpenAPI 3.1"}}},
    ("/metrics", "get"): {
        "summary": "Prometheus metrics (SPEC section 8); with several workers, the sum over all of them",
        "description": "The Prometheus text format, or OpenMetrics when `Accept` asks for it. See docs/metrics.md.",
        "responses": {
            "200": {
                "description": "every abrouter_* metric",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            }
        },
    },
    **ADMIN_OPERATIONS,
    **REPORT_OPERATIONS,
    **ROLLOUT_OPERATIONS,
}


def openapi_document() -> dict[str, Any]:
    """The whole OpenAPI 3.1 document."""
    paths: dict[str, dict[str, Any]] = {}
    for (path, method), operation in OPERATIONS.items():
        paths.setdefault(path, {})[method] = operation
    schemas: dict[str, Any] = {}
    definitions: dict[str, Any] = {}
    for model in (Experiment, ConfigPatch, Promotion, Rollback):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        definitions.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "abrouter",
            "version": __version__,
            "description": "A/B-testing and canary router for ML models",
        },
        "paths": paths,
        "components": {
            "schemas": {
                "Error": _ERROR_SCHEMA,
                **schemas,
                "StoredExperiment": _STORED_EXPERIMENT,
                "Preview": _PREVIEW,
                "Report": _REPORT,
                "Rollout": _ROLLOUT,
                **definitions,
            },
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "ABROUTER_ADMIN_TOKEN, a token of ABROUTER_ADMIN_TOKENS, or .abrouter/admin-token",
                }
            },
        },
    }
