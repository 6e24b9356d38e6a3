"""Pydantic models of experiment configs (SPEC section 3).

One schema gives validation with field paths, JSON Schema for editors and the OpenAPI
document. Cross-field rules are model validators, so a config is either whole and valid or
rejected with every problem named.
"""

from __future__ import annotations

import functools
import itertools
import math
import urllib.parse
from collections.abc import Mapping
from enum import StrEnum
from types import MappingProxyType
from typing import Annotated, Any, Final, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

NAME_PATTERN: Final = r"^[a-z0-9][a-z0-9_-]{0,62}$"
#: weights are relative; a cap keeps their sum finite (1e308 + 1e308 would overflow the ranges)
MAX_WEIGHT_SUM: Final = 1e12
UNIT_SOURCES: Final = ("header", "cookie", "query", "json")
OPERATIONAL_GATE_METRICS: Final = frozenset({"error_rate", "latency_p50", "latency_p95", "latency_p99"})
MAX_ROLLOUT_INTERVAL_S: Final = 7 * 24 * 3600

Name = Annotated[str, Field(pattern=NAME_PATTERN, description="lower-case letters, digits, `_` and `-`; 63 at most")]


class Status(StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    CONCLUDED = "concluded"


class MetricKind(StrEnum):
    BINOMIAL = "binomial"
    MEAN = "mean"


class FieldProblems(ValueError):
    """Several cross-field problems, each with the field path it concerns (relative to the model).

    pydantic keeps the raised exception in the error's context, so the loader can expand it
    into one `experiments[0].control: message` line per problem.
    """

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{path}: {message}" if path else message for path, message in problems))
        self.problems = problems


class _Model(BaseModel):
    # Unknown keys are typos far more often than intent: reject them.
    model_config = ConfigDict(extra="forbid", frozen=True)


class Variant(_Model):
    """One arm: a remote model server (`url`) or an in-process joblib model (`model`)."""

    name: Name
    weight: float = Field(ge=0, allow_inf_nan=False, strict=True)  # strict: `true` is not a weight of 1
    url: str | None = Field(default=None, description="HTTP(S) URL the call is proxied to")
    model: str | None = Field(default=None, description="path of a joblib file of a scikit-learn estimator")
    timeout_s: float = Field(default=1.0, gt=0, le=300, description="upstream timeout of a remote variant")

    @field_validator("url")
    @classmethod
    def _url_is_http(cls, url: str | None) -> str | None:
        if url is None:
            return None
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"must be an http:// or https:// URL with a host, got {url!r}")
        if not url.isprintable() or " " in url:
            raise ValueError(f"must not contain spaces or control characters, got {url!r}")
        return url

    @field_validator("model")
    @classmethod
    def _model_is_a_path(cls, model: str | None) -> str | None:
        if model is not None and (not model.strip() or not model.isprintable()):
            raise ValueError(f"must be the path of a joblib file, got {model!r}")
        return model

    @model_validator(mode="after")
    def _exactly_one_target(self) -> Self:
        if (self.url is None) == (self.model is None):
            raise ValueError(f"variant {self.name!r} needs exactly one of `url` and `model`")
        return self

    @property
    def is_remote(self) -> bool:
        return self.url is not None


class Metric(_Model):
    """An outcome metric the report analyses."""

    name: Name
    kind: MetricKind


class Shadow(_Model):
    """Mirror a share of calls to a variant; its response is discarded."""

    variant: Name
    percent: float = Field(ge=0, le=100, strict=True)


class Gate(_Model):
    """A rollout guard: exactly one bound on one metric."""

    metric: str
    max_increase: float | None = Field(default=None, allow_inf_nan=False)
    max_ratio: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    no_worse_than: float | None = Field(default=None, allow_inf_nan=False)

    @model_validator(mode="after")
    def _exactly_one_bound(self) -> Self:
        bounds = [b for b in (self.max_increase, self.max_ratio, self.no_worse_than) if b is not None]
        if len(bounds) != 1:
            raise ValueError("a gate needs exactly one of `max_increase`, `max_ratio` and `no_worse_than`")
        return self


class Rollout(_Model):
    """A progressive canary (SPEC section 7)."""

    canary: Name
    steps: list[Annotated[float, Field(gt=0, le=100)]] = Field(min_length=1)
    interval_s: float = Field(default=300, gt=0, le=MAX_ROLLOUT_INTERVAL_S)  # a week at most: a finite date
    min_units: int = Field(default=500, ge=0)
    gates: list[Gate] = Field(default_factory=list)
    on_failure: Literal["rollback", "pause"] = "rollback"
    # fixed: each look's 95% interval, as the report's ci_low/ci_high; sequential: the report's
    # always-valid intervals, so that many looks keep the 5% (router/rollout/gates.py)
    intervals: Literal["fixed", "sequential"] = "fixed"

    @field_validator("steps")
    @classmethod
    def _steps_increase(cls, steps: list[float]) -> list[float]:
        if any(b <= a for a, b in itertools.pairwise(steps)):
            raise ValueError(f"must be strictly increasing, got {steps}")
        return steps

    @model_serializer(mode="wrap")
    def _without_new_defaults(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Leave out fields added since 0.1 while they hold their default.

        Stored configs are read by every replica, and replicas of an earlier release reject
        unknown keys: during a rolling upgrade they could not read a config this one wrote.
        """
        data: dict[str, Any] = handler(self)
        if self.intervals == "fixed":
            data.pop("intervals", None)
        return data


class Namespace(_Model):
    """A share of the unit space; experiments with disjoint ranges in one namespace never share a unit."""

    id: str = Field(min_length=1)
    start: float = Field(ge=0, le=1)
    end: float = Field(ge=0, le=1)

    @model_validator(mode="before")
    @classmethod
    def _from_triple(cls, value: object) -> object:
        # The file format writes a namespace as [id, start, end], like GrowthBook.
        if isinstance(value, list | tuple):
            if len(value) != 3:
                raise ValueError(f"must be [id, start, end], got {list(value)!r}")
            return {"id": value[0], "start": value[1], "end": value[2]}
        return value

    @model_validator(mode="after")
    def _range_is_ordered(self) -> Self:
        if not self.start < self.end:
            raise ValueError(f"needs 0 <= start < end <= 1, got start={self.start} end={self.end}")
        return self


class Experiment(_Model):
    """One experiment as written in a config file or sent to the admin API."""

    name: Name
    description: str = ""
    unit: str = Field(
        default="header:X-User-Id", description="header:NAME, cookie:NAME, query:NAME or json:dotted.path"
    )
    seed: str | None = Field(default=None, description="hash seed; defaults to the name")
    hash_version: Literal[1, 2] = 2
    coverage: float = Field(default=1.0, ge=0, le=1, strict=True)
    namespace: Namespace | None = None
    control: Name
    variants: list[Variant] = Field(min_length=2)
    status: Status = Status.RUNNING
    winner: str | None = None
    sticky: bool = False
    on_missing_unit: Literal["control", "reject"] = "control"
    fallback: Literal["control", "none"] = "control"
    force: dict[str, str] = Field(default_factory=dict, description="unit id -> variant")
    allow_override_header: bool = False
    shadow: Shadow | None = None
    metrics: list[Metric] = Field(default_factory=list)
    rollout: Rollout | None = None

    @field_validator("unit")
    @classmethod
    def _unit_source(cls, unit: str) -> str:
        source, _, key = unit.partition(":")
        if source not in UNIT_SOURCES or not key:
            raise ValueError(f"must be one of header:NAME, cookie:NAME, query:NAME, json:path; got {unit!r}")
        return unit

    @model_validator(mode="after")
    def _cross_field_rules(self) -> Self:
        names = [v.name for v in self.variants]
        known = set(names)
        problems: list[tuple[str, str]] = []
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            problems.append(("variants", f"variant names must be unique, repeated: {', '.join(duplicates)}"))
        if self.control not in known:
            problems.append(("control", f"{self.control!r} is not one of the variants {names}"))
        total = sum(v.weight for v in self.variants)  # plain sum: inf on overflow where fsum raises
        if total <= 0:
            problems.append(("variants", "weights must have a positive sum"))
        elif not math.isfinite(total) or total > MAX_WEIGHT_SUM:
            problems.append(("variants", f"weights must sum to at most {MAX_WEIGHT_SUM:g}, got {total:g}"))
        if self.status is Status.CONCLUDED and self.winner is None:
            problems.append(("winner", "is required when status is concluded"))
        if self.winner is not None and self.winner not in known:
            problems.append(("winner", f"{self.winner!r} is not one of the variants {names}"))
        problems += [
            (f"force.{unit}", f"{variant!r} is not one of the variants {names}")
            for unit, variant in self.force.items()
            if variant not in known
        ]
        if self.shadow is not None and self.shadow.variant not in known:
            problems.append(("shadow.variant", f"{self.shadow.variant!r} is not one of the variants {names}"))
        metric_names = [m.name for m in self.metrics]
        if len(set(metric_names)) != len(metric_names):
            problems.append(("metrics", "metric names must be unique"))
        if self.rollout is not None:
            problems += self._rollout_problems(known, set(metric_names))
        if problems:
            raise FieldProblems(problems)
        return self

    def _rollout_problems(self, variants: set[str], metrics: set[str]) -> list[tuple[str, str]]:
        assert self.rollout is not None
        problems = []
        if self.rollout.canary not in variants:
            problems.append(("rollout.canary", f"{self.rollout.canary!r} is not one of the variants"))
        elif self.rollout.canary == self.control:
            problems.append(("rollout.canary", "cannot be the control"))
        allowed = metrics | OPERATIONAL_GATE_METRICS
        problems += [
            (
                f"rollout.gates[{i}].metric",
                f"{gate.metric!r} is neither a declared metric nor one of {sorted(OPERATIONAL_GATE_METRICS)}",
            )
            for i, gate in enumerate(self.rollout.gates)
            if gate.metric not in allowed
        ]
        problems += [
            (
                f"rollout.gates[{i}].no_worse_than",
                f"is a bound on a declared metric's relative lift; {gate.metric!r} takes max_increase or max_ratio",
            )
            for i, gate in enumerate(self.rollout.gates)
            if gate.metric in OPERATIONAL_GATE_METRICS and gate.no_worse_than is not None
        ]
        return problems

    # Read on every prediction call, so computed once per (frozen) experiment; `model_copy` drops them.
    @functools.cached_property
    def hash_seed(self) -> str:
        return self.seed if self.seed is not None else self.name

    @functools.cached_property
    def variant_names(self) -> tuple[str, ...]:
        return tuple(v.name for v in self.variants)

    @functools.cached_property
    def weights(self) -> tuple[float, ...]:
        return tuple(v.weight for v in self.variants)

    @functools.cached_property
    def shares(self) -> Mapping[str, float]:
        """variant -> its share of traffic, weight / sum of weights (the validators keep the sum positive)."""
        total = sum(self.weights)
        return MappingProxyType({v.name: v.weight / total for v in self.variants})

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        """A copy whose derived values are computed afresh (pydantic would copy cached ones, stale after `update`)."""
        copy = super().model_copy(update=update, deep=deep)
        for name in _DERIVED:
            copy.__dict__.pop(name, None)
        return copy

    def variant(self, name: str) -> Variant:
        """The variant called `name` (the validators guarantee control, winner and forced ones exist)."""
        for v in self.variants:
            if v.name == name:
                return v
        raise KeyError(name)


#: the cached properties of `Experiment`
_DERIVED: Final = ("hash_seed", "variant_names", "weights", "shares")


class ConfigFile(_Model):
    """The top level of a config file."""

    experiments: list[Experiment] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_names(self) -> Self:
        names = [e.name for e in self.experiments]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise FieldProblems([("experiments", f"experiment names must be unique, repeated: {', '.join(repeated)}")])
        return self
