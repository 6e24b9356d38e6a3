"""Edits of a stored experiment, as the admin API receives them: a patch, a promotion, a rollback.

Each edit produces a whole new `Experiment`, validated by the same schema as a config file, so
an edit can never store a config that a file could not hold.
"""

from __future__ import annotations

from typing import Annotated, Any, Self, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, model_validator

from router.config.loader import describe_validation_error
from router.config.schema import Experiment, FieldProblems, Name, Shadow, Status
from router.errors import InvalidConfig

M = TypeVar("M", bound=BaseModel)
# strict: a number, never a boolean or a string coerced into one (`"coverage": false` is no 0)
Weight = Annotated[float, Field(ge=0, allow_inf_nan=False, strict=True)]

# Fields a patch may clear with null; the others need a value when they are sent.
_NULLABLE = frozenset({"winner", "shadow"})


class _Body(BaseModel):
    # An unknown key in an edit is a typo, and ignoring it would silently change nothing.
    model_config = ConfigDict(extra="forbid", frozen=True)


class ConfigPatch(_Body):
    """The body of PATCH and preview: only the fields sent change."""

    weights: dict[str, Weight] | None = Field(
        default=None, description="variant -> new weight; variants not named keep theirs"
    )
    status: Status | None = None
    winner: str | None = Field(default=None, description="null clears it")
    coverage: float | None = Field(default=None, ge=0, le=1, strict=True)
    shadow: Shadow | None = Field(default=None, description="null stops shadowing")
    force: dict[str, str] | None = Field(default=None, description="unit id -> variant; replaces the whole map")

    @model_validator(mode="after")
    def _no_null_values(self) -> Self:
        nulls = sorted(f for f in self.model_fields_set - _NULLABLE if getattr(self, f) is None)
        if nulls:
            raise FieldProblems([(field, "cannot be null") for field in nulls])
        return self

    def apply(self, experiment: Experiment) -> Experiment:
        """`experiment` with this patch applied; `InvalidConfig` naming each problem when the result is invalid."""
        data = experiment.model_dump(mode="json")
        if self.weights is not None:
            names = list(experiment.variant_names)
            unknown = [f"weights.{n}: {n!r} is not one of the variants {names}" for n in self.weights if n not in names]
            if unknown:
                raise InvalidConfig(f"experiment {experiment.name!r}: unknown variants in weights", details=unknown)
            data["variants"] = [{**v, "weight": self.weights.get(v["name"], v["weight"])} for v in data["variants"]]
        for field in self.model_fields_set - {"weights"}:
            data[field] = self.model_dump(mode="json", include={field})[field]
        return validated_experiment(data)


class Promotion(_Body):
    """The body of promote: conclude the experiment with `variant` as the winner."""

    variant: Name

    def apply(self, experiment: Experiment) -> Experiment:
        """`experiment` concluded with this variant serving all traffic."""
        if self.variant not in experiment.variant_names:
            names = list(experiment.variant_names)
            raise InvalidConfig(
                f"experiment {experiment.name!r} has no variant {self.variant!r}",
                details=[f"variant: {self.variant!r} is not one of the variants {names}"],
            )
        return validated_experiment(
            {**experiment.model_dump(mode="json"), "status": "concluded", "winner": self.variant}
        )


class Rollback(_Body):
    """The body of rollback: the version whose config comes back (default: the one before the current)."""

    to_version: StrictInt | None = Field(default=None, ge=1)  # strict: `true` is not version 1


def validated_experiment(data: Any) -> Experiment:
    """An `Experiment` from plain data, or `InvalidConfig` with one `path: message` per problem."""
    name = data.get("name") if isinstance(data, dict) else None
    return validated(Experiment, data, subject=f"experiment {name!r}" if isinstance(name, str) else "experiment")


def validated(model: type[M], data: Any, *, subject: str | None = None) -> M:
    """`model` from plain data, or `InvalidConfig` with one `path: message` per problem."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        details = describe_validation_error(exc)
        what = subject or f"{model.__name__} body"
        raise InvalidConfig(f"invalid {what}: {len(details)} problem(s)", details=details) from None
