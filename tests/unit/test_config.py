"""Config files: schema rules, error messages with field paths, and `abrouter validate`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from router.cli import main
from router.config.loader import load_file, load_files
from router.config.schema import Experiment
from router.errors import InvalidConfig

ROOT = Path(__file__).resolve().parents[2]


def _experiment(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": "churn",
        "control": "current",
        "variants": [
            {"name": "current", "weight": 90, "url": "http://127.0.0.1:9001/predict"},
            {"name": "candidate", "weight": 10, "model": "variants/models/churn_candidate.joblib"},
        ],
    }
    return {**base, **fields}


def _write(tmp_path: Path, *experiments: dict[str, Any], name: str = "x.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"experiments": list(experiments)}))
    return path


def _problems(tmp_path: Path, **fields: Any) -> list[str]:
    path = _write(tmp_path, _experiment(**fields))
    with pytest.raises(InvalidConfig) as caught:
        load_file(path)
    return [line.removeprefix(f"{path}: ") for line in caught.value.details]


def test_a_valid_file_loads_with_its_defaults(tmp_path: Path) -> None:
    (experiment,) = load_file(_write(tmp_path, _experiment()))
    assert experiment.hash_seed == "churn"
    assert experiment.hash_version == 2
    assert experiment.unit == "header:X-User-Id"
    assert experiment.weights == (90, 10)
    assert experiment.shares == {"current": 0.9, "candidate": 0.1}
    assert experiment.variant("candidate").timeout_s == 1.0


def test_json_files_are_accepted_too(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    path.write_text(json.dumps({"experiments": [_experiment()]}))
    assert [e.name for e in load_file(path)] == ["churn"]


def test_the_example_configs_are_valid() -> None:
    experiments = load_files([ROOT / "config"])
    assert {"churn", "churn-local"} <= {e.name for e in experiments}
    assert any(v.url for e in experiments for v in e.variants)
    assert any(v.model for e in experiments for v in e.variants)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        pytest.param(
            {
                "variants": [
                    {"name": "current", "weight": 90, "url": "http://h/p"},
                    {"name": "candidate", "weight": -5, "url": "http://h/p"},
                ]
            },
            "experiments[0].variants[1].weight: must be >= 0, got -5",
            id="negative-weight",
        ),
        pytest.param(
            {
                "variants": [
                    {"name": "current", "weight": 0, "url": "http://h/p"},
                    {"name": "candidate", "weight": 0, "url": "http://h/p"},
                ]
            },
            "experiments[0].variants: weights must have a positive sum",
            id="zero-weights",
        ),
        pytest.param(
            {
                "variants": [
                    {"name": "current", "weight": 1e308, "url": "http://h/p"},
                    {"name": "candidate", "weight": 1e308, "url": "http://h/p"},
                ]
            },
            "experiments[0].variants: weights must sum to at most 1e+12, got inf",
            id="weights-overflow",
        ),
        pytest.param(
            {
                "variants": [
                    {"name": "current", "weight": 1, "url": "http://h/p\r\nX-Injected: 1"},
                    {"name": "candidate", "weight": 1, "url": "http://h/p"},
                ]
            },
            "experiments[0].variants[0].url: must not contain spaces or control characters",
            id="url-with-crlf",
        ),
        pytest.param({"control": "nope"}, "experiments[0].control: 'nope' is not one of the variants", id="control"),
        pytest.param(
            {
                "variants": [
                    {"name": "current", "weight": 1, "url": "http://h/p", "model": "m.joblib"},
                    {"name": "candidate", "weight": 1, "url": "http://h/p"},
                ]
            },
            "experiments[0].variants[0]: variant 'current' needs exactly one of `url` and `model`",
            id="url-and-model",
        ),
        pytest.param(
            {"variants": [{"name": "current", "weight": 1}, {"name": "candidate", "weight": 1, "url": "http://h/p"}]},
            "experiments[0].variants[0]: variant 'current' needs exactly one of `url` and `model`",
            id="neither-url-nor-model",
        ),
        pytest.param(
            {
                "variants": [
                    {"name": "current", "weight": 1, "url": "http://h/p"},
                    {"name": "current", "weight": 1, "url": "http://h/p"},
                ]
            },
            "experiments[0].variants: variant names must be unique, repeated: current",
            id="duplicate-variant",
        ),
        pytest.param(
            {"status": "concluded"},
            "experiments[0].winner: is required when status is concluded",
            id="concluded-without-winner",
        ),
        pytest.param({"name": "Churn Model"}, "experiments[0].name: must match", id="name-pattern"),
        pytest.param(
            {"namespace": ["checkout", 0.5, 0.5]},
            "experiments[0].namespace: needs 0 <= start < end <= 1",
            id="empty-namespace",
        ),
        pytest.param(
            {"namespace": ["checkout", 0.2, 1.5]}, "experiments[0].namespace.end: must be <= 1", id="namespace-past-one"
        ),
        pytest.param({"coverage": 1.2}, "experiments[0].coverage: must be <= 1, got 1.2", id="coverage"),
        pytest.param({"unit": "body:user"}, "experiments[0].unit: must be one of header:NAME", id="unit-source"),
        pytest.param(
            {"force": {"u1": "ghost"}},
            "experiments[0].force.u1: 'ghost' is not one of the variants",
            id="force-unknown-variant",
        ),
        pytest.param({"colour": "red"}, "experiments[0].colour: is not a known field", id="unknown-field"),
        pytest.param({"hash_version": 3}, "experiments[0].hash_version:", id="hash-version"),
        pytest.param(
            {"rollout": {"canary": "candidate", "steps": [5], "interval_s": 1e12}},
            "experiments[0].rollout.interval_s: must be <= 604800",
            id="rollout-interval-too-long",
        ),
        pytest.param(
            {
                "rollout": {
                    "canary": "candidate",
                    "steps": [5],
                    "gates": [{"metric": "error_rate", "max_increase": "nan"}],
                }
            },
            "experiments[0].rollout.gates[0].max_increase:",
            id="rollout-gate-nan-bound",
        ),
        pytest.param(
            {"rollout": {"canary": "ghost", "steps": [5, 100]}},
            "experiments[0].rollout.canary: 'ghost' is not one of the variants",
            id="rollout-canary-unknown",
        ),
        pytest.param(
            {"rollout": {"canary": "current", "steps": [5, 100]}},
            "experiments[0].rollout.canary: cannot be the control",
            id="rollout-canary-is-control",
        ),
        pytest.param(
            {"rollout": {"canary": "candidate", "steps": [5, 100], "intervals": "always"}},
            "experiments[0].rollout.intervals: Input should be 'fixed' or 'sequential'",
            id="rollout-intervals-unknown",
        ),
        pytest.param(
            {"rollout": {"canary": "candidate", "steps": [5, 25, 25, 100]}},
            "experiments[0].rollout.steps: must be strictly increasing, got [5.0, 25.0, 25.0, 100.0]",
            id="rollout-steps-not-increasing",
        ),
        pytest.param(
            {"rollout": {"canary": "candidate", "steps": [5, 100], "gates": [{"metric": "clicks", "max_ratio": 2}]}},
            "experiments[0].rollout.gates[0].metric: 'clicks' is neither a declared metric nor one of",
            id="rollout-gate-undeclared-metric",
        ),
        pytest.param(
            {"rollout": {"canary": "candidate", "steps": [5], "gates": [{"metric": "error_rate", "no_worse_than": 0}]}},
            "experiments[0].rollout.gates[0].no_worse_than: is a bound on a declared metric's relative lift",
            id="rollout-no-worse-than-on-error-rate",
        ),
        pytest.param(
            {"rollout": {"canary": "candidate", "steps": [5], "gates": [{"metric": "error_rate"}]}},
            "experiments[0].rollout.gates[0]: a gate needs exactly one of",
            id="rollout-gate-without-bound",
        ),
    ],
)
def test_each_rule_is_reported_with_its_field_path(tmp_path: Path, fields: dict[str, Any], expected: str) -> None:
    assert any(problem.startswith(expected) for problem in _problems(tmp_path, **fields)), _problems(tmp_path, **fields)


def test_every_problem_of_a_file_is_reported_not_only_the_first(tmp_path: Path) -> None:
    path = _write(tmp_path, _experiment(coverage=2), _experiment(name="other", control="ghost"))
    with pytest.raises(InvalidConfig) as caught:
        load_file(path)
    assert len(caught.value.details) == 2


def test_a_repeated_experiment_name_across_files_is_refused(tmp_path: Path) -> None:
    _write(tmp_path, _experiment(), name="a.yaml")
    _write(tmp_path, _experiment(), name="b.yaml")
    with pytest.raises(InvalidConfig, match="problem"):
        load_files([tmp_path])


def test_a_yaml_syntax_error_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("experiments: [\n")
    with pytest.raises(InvalidConfig) as caught:
        load_file(path)
    assert caught.value.details[0].startswith(f"{path}: ")


def test_validate_prints_ok_per_valid_file_and_exits_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, _experiment())
    assert main(["validate", str(path)]) == 0
    assert capsys.readouterr().out == f"{path}: ok\n"


def test_validate_prints_each_problem_and_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = _write(tmp_path, _experiment(), name="good.yaml")
    bad = _write(
        tmp_path,
        _experiment(
            variants=[
                {"name": "current", "weight": 90, "url": "http://h/p"},
                {"name": "candidate", "weight": -5, "url": "http://h/p"},
            ]
        ),
        name="bad.yaml",
    )
    assert main(["validate", str(good), str(bad)]) == 1
    assert capsys.readouterr().out.splitlines() == [
        f"{good}: ok",
        f"{bad}: experiments[0].variants[1].weight: must be >= 0, got -5",
    ]


def test_validate_with_no_arguments_is_bad_usage() -> None:
    assert main(["validate"]) == 2


def test_the_config_schema_round_trips_through_json() -> None:
    experiment = Experiment.model_validate(_experiment(namespace=["checkout", 0, 0.5], force={"u": "candidate"}))
    assert Experiment.model_validate(experiment.model_dump(mode="json")) == experiment


def test_a_copied_experiment_derives_its_weights_names_and_seed_from_its_own_fields() -> None:
    original = Experiment.model_validate(_experiment())
    assert original.weights and original.variant_names and original.hash_seed and original.shares  # cached
    variants = [{**v, "weight": 7} for v in _experiment()["variants"]]
    copy = original.model_copy(
        update={"seed": "other", "variants": Experiment.model_validate(_experiment(variants=variants)).variants}
    )
    assert copy.hash_seed == "other"
    assert copy.weights == (7, 7)
    assert copy.shares == {"current": 0.5, "candidate": 0.5}
    assert original.weights != copy.weights


def test_a_rollout_with_default_intervals_is_written_as_an_earlier_release_reads_it() -> None:
    """Replicas of an earlier release reject unknown keys: a field added later is left out at its default."""
    plan = {"canary": "candidate", "steps": [5, 100]}
    fixed = Experiment.model_validate(_experiment(rollout=plan))
    sequential = Experiment.model_validate(_experiment(rollout={**plan, "intervals": "sequential"}))

    assert fixed.rollout is not None and fixed.rollout.intervals == "fixed"
    assert "intervals" not in fixed.model_dump(mode="json")["rollout"]
    assert sequential.model_dump(mode="json")["rollout"]["intervals"] == "sequential"
    for written in (fixed, sequential):
        assert Experiment.model_validate_json(written.model_dump_json()) == written


def test_yaml_numbers_in_exponent_form_are_numbers(tmp_path: Path) -> None:
    """PyYAML reads `1e3` as a string (YAML 1.1 floats need a dot); the schema's numbers refuse strings."""
    path = tmp_path / "x.yaml"
    path.write_text(
        "experiments:\n"
        "  - name: churn\n"
        "    control: current\n"
        "    variants:\n"
        "      - {name: current, weight: 1e3, url: 'http://127.0.0.1:9001/predict'}\n"
        "      - {name: candidate, weight: 2.5E+2, url: 'http://127.0.0.1:9002/predict'}\n"
    )
    [experiment] = load_file(path)
    assert experiment.weights == (1000.0, 250.0)
