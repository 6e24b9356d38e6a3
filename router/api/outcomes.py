"""POST /v1/experiments/{name}/outcomes: metric values reported for units, attributed to their first variant.

Outcomes take the same durable path as exposures (`EventWriter`): the call is answered once they
are queued, and the event script attributes each to the variant of the unit's first exposure
when it is written, whatever the weights are by then. The `unattributed` count of the answer is
what can be known when the call is answered: units neither exposed by this process nor found in
Redis's record of first exposures. When Redis does not answer in time, outcomes of units this
process did not expose are still accepted and counted as `unverified`; the script decides their
attribution when Redis is back (abrouter_outcomes_total and the stats' unattributed counts show it).
"""

from __future__ import annotations

from typing import Any, Final

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.requests import Request
from starlette.responses import Response

from router.api.responses import JSONResponse
from router.api.units import MAX_UNIT_ID_LENGTH
from router.config.loader import describe_validation_error
from router.config.schema import Experiment
from router.errors import InvalidPayload
from router.services import Services

MAX_OUTCOMES: Final = 1000
#: Larger magnitudes are surely mistakes, and squares of per-unit totals must stay far from overflow.
MAX_ABS_VALUE: Final = 1e15


class Outcome(BaseModel):
    """One metric value for one unit."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)

    unit: str = Field(
        strict=True,
        min_length=1,
        max_length=MAX_UNIT_ID_LENGTH,
        description="the unit's id; an integer is taken as its decimal text, as predict takes a JSON body's",
    )
    metric: str = Field(strict=True, min_length=1, max_length=63, description="a metric the experiment declares")
    value: float = Field(
        strict=True,
        allow_inf_nan=False,
        ge=-MAX_ABS_VALUE,
        le=MAX_ABS_VALUE,
        description="binomial metrics: non-zero means converted; mean metrics: added to the unit's total",
    )

    @field_validator("unit", mode="before")
    @classmethod
    def _integer_as_text(cls, value: object) -> object:
        # predict reads an integer id from a JSON body (`unit: json:user.id`) as str(id): the same unit here
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        return value


class OutcomeBatch(BaseModel):
    """Several outcomes in one call."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    outcomes: list[Outcome] = Field(min_length=1, max_length=MAX_OUTCOMES)


def request_schema() -> dict[str, Any]:
    """The JSON Schema of the body, self-contained, for the OpenAPI document."""
    single = Outcome.model_json_schema()
    batch = OutcomeBatch.model_json_schema()
    batch.pop("$defs", None)
    batch["properties"]["outcomes"]["items"] = single
    return {"oneOf": [single, batch]}


def parse_outcomes(body: bytes, experiment: Experiment) -> list[Outcome]:
    """The outcomes of a request body, each of a declared metric; `InvalidPayload` naming every problem."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidPayload(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidPayload(f"the request body must be a JSON object, got {type(data).__name__}")
    batched = "outcomes" in data
    try:
        outcomes = list(OutcomeBatch.model_validate(data).outcomes) if batched else [Outcome.model_validate(data)]
    except ValidationError as exc:
        details = describe_validation_error(exc)
        raise InvalidPayload(f"invalid outcomes: {len(details)} problem(s)", details=details) from None
    declared = [metric.name for metric in experiment.metrics]
    problems = [
        f"{f'outcomes[{index}].' if batched else ''}metric: {outcome.metric!r} is not a metric of experiment "
        f"{experiment.name!r}; declared: {', '.join(declared) or 'none'}"
        for index, outcome in enumerate(outcomes)
        if outcome.metric not in declared
    ]
    if problems:
        raise InvalidPayload(f"undeclared metrics in {len(problems)} outcome(s)", details=problems)
    return outcomes


async def outcomes(request: Request) -> Response:
    """Validate, check which units were exposed (without waiting long), queue, answer 202 with the counts."""
    services: Services = request.app.state.services
    active = services.live.get(request.path_params["name"])
    name = active.experiment.name
    items = parse_outcomes(await request.body(), active.experiment)
    unknown = [item.unit for item in items if not services.events.exposed_here(name, item.unit)]
    first = await services.sticky.first_variants(name, unknown) if unknown else {}
    services.events.record_outcomes(active.experiment, [(item.unit, item.metric, item.value) for item in items])
    body: dict[str, int] = {"accepted": len(items)}
    if first is None:
        body |= {"unattributed": 0, "unverified": len(unknown)}
    else:
        body["unattributed"] = sum(1 for unit in unknown if unit not in first)
    return JSONResponse(body, status_code=202)
