"""Config files (YAML or JSON) -> validated `Experiment` models.

A file is accepted whole or rejected whole: `load_file` either returns every experiment of the
file or raises `InvalidConfig` whose `details` name each problem as
``config/x.yaml: experiments[0].variants[1].weight: must be >= 0, got -5``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Final

import yaml
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from router.config.schema import ConfigFile, Experiment, FieldProblems
from router.errors import InvalidConfig

CONFIG_SUFFIXES: Final = (".yaml", ".yml", ".json")

# pydantic's wording for the common constraint errors, said the way SPEC section 3 says them.
_CONSTRAINT_MESSAGES: Final = {
    "greater_than_equal": "must be >= {ge}",
    "greater_than": "must be > {gt}",
    "less_than_equal": "must be <= {le}",
    "less_than": "must be < {lt}",
    "string_pattern_mismatch": "must match {pattern}",
    "extra_forbidden": "is not a known field",
    "missing": "is required",
    "too_short": "needs at least {min_length} items",
}


def format_location(loc: Iterable[int | str]) -> str:
    """('experiments', 0, 'variants', 1, 'weight') -> 'experiments[0].variants[1].weight'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


def _problems(error: ErrorDetails) -> list[tuple[str, str]]:
    """One pydantic error -> (field path, message) pairs; cross-field errors expand into several."""
    loc = [part for part in error["loc"] if not _is_union_tag(part)]
    ctx = error.get("ctx") or {}
    cause = ctx.get("error")
    if isinstance(cause, FieldProblems):
        base = format_location(loc)
        return [(f"{base}.{path}" if base and path else base or path, message) for path, message in cause.problems]
    template = _CONSTRAINT_MESSAGES.get(error["type"])
    if template:
        message = template.format(**{k: f"{v:g}" if isinstance(v, float) else v for k, v in ctx.items()})
    else:
        message = error["msg"].removeprefix("Value error, ")
    # value errors raised by our validators already quote the value
    quotes_value = error["type"] in ("missing", "extra_forbidden", "value_error")
    if not quotes_value and "input" in error and not isinstance(error["input"], dict | list):
        message += f", got {error['input']!r}"
    return [(format_location(loc), message)]


def _is_union_tag(part: int | str) -> bool:
    # pydantic adds the member type of a union (e.g. 'list[...]' or 'function-after[...]') to locations
    return isinstance(part, str) and ("[" in part or part in {"str", "float", "int", "bool", "none"})


def describe_validation_error(error: ValidationError, *, prefix: Sequence[int | str] = ()) -> list[str]:
    """Every problem of a pydantic error as `path: message`, paths optionally under `prefix`."""
    lines = []
    for detail in error.errors():
        for path, message in _problems(detail):
            full = format_location([*prefix, *([path] if path else [])])
            lines.append(f"{full}: {message}" if full else message)
    return lines


class _ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader, reading `1e3` as the number YAML 1.2 and JSON say it is.

    PyYAML follows YAML 1.1, whose floats need a dot: `weight: 1e3` came back as the string
    "1e3", which the schema's numbers (strict: no text taken for a number) refuse.
    """


_ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def parse_text(text: str, *, source: str) -> Any:
    """YAML (a superset of JSON) -> plain data; a syntax error becomes `InvalidConfig`."""
    try:
        if source.endswith(".json"):
            return json.loads(text)
        return yaml.load(text, Loader=_ConfigLoader)  # a SafeLoader (below): no arbitrary objects
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        raise InvalidConfig(f"{source}: not valid YAML/JSON", details=[f"{source}: {exc}"]) from None


def load_file(path: str | Path) -> list[Experiment]:
    """Read and validate one config file; raise `InvalidConfig` naming every problem."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidConfig(f"{source}: cannot read", details=[f"{source}: {exc.strerror}"]) from None
    data = parse_text(text, source=source)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InvalidConfig(
            f"{source}: invalid", details=[f"{source}: the top level must be a mapping with `experiments`"]
        )
    try:
        return ConfigFile.model_validate(data).experiments
    except ValidationError as exc:
        details = [f"{source}: {line}" for line in describe_validation_error(exc)]
        raise InvalidConfig(f"{source}: {len(details)} problem(s)", details=details) from None


def config_files(paths: Iterable[str | Path]) -> list[Path]:
    """Files named directly, plus the config files in named directories (sorted)."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found += sorted(p for p in path.iterdir() if p.suffix in CONFIG_SUFFIXES and p.is_file())
        else:
            found.append(path)
    return found


def load_files(paths: Iterable[str | Path]) -> list[Experiment]:
    """All experiments of several files; fails if any file is invalid or a name repeats across files."""
    experiments: list[Experiment] = []
    details: list[str] = []
    seen: dict[str, Path] = {}
    for path in config_files(paths):
        try:
            loaded = load_file(path)
        except InvalidConfig as exc:
            details += exc.details
            continue
        for experiment in loaded:
            if experiment.name in seen:
                details.append(f"{path}: experiment {experiment.name!r} is also defined in {seen[experiment.name]}")
            seen[experiment.name] = path
        experiments += loaded
    if details:
        raise InvalidConfig(f"{len(details)} problem(s) in config files", details=details)
    return experiments
