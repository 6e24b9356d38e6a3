"""Metrics(registry): names and labels of SPEC section 8, what each recording does, the config gauges."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from router.config.schema import Experiment
from router.errors import UpstreamError
from router.metrics import (
    NO_VARIANT,
    REJECTED,
    Metrics,
    RolloutDecision,
    ShadowResult,
    StoreOperation,
    UpstreamErrorKind,
    status_label,
)

#: SPEC section 8, as written there: sample name -> label names
SPEC_METRICS = {
    "abrouter_requests_total": {"experiment", "variant", "reason", "status"},
    "abrouter_request_duration_seconds": {"experiment", "variant"},
    "abrouter_upstream_duration_seconds": {"experiment", "variant"},
    "abrouter_upstream_errors_total": {"experiment", "variant", "kind"},
    "abrouter_fallbacks_total": {"experiment", "variant"},
    "abrouter_shadow_requests_total": {"experiment", "variant", "result"},
    "abrouter_exposures_total": {"experiment", "variant"},
    "abrouter_outcomes_total": {"experiment", "variant", "metric"},
    "abrouter_variant_weight": {"experiment", "variant"},
    "abrouter_config_version": {"experiment"},
    "abrouter_events_pending": set(),
    "abrouter_events_written_total": set(),
    "abrouter_events_dropped_total": set(),
    "abrouter_store_errors_total": {"operation"},
    "abrouter_rollout_step": {"experiment"},
    "abrouter_rollout_decisions_total": {"experiment", "decision"},
}
#: metrics beyond SPEC section 8, each documented in docs/metrics.md
EXTRA_METRICS = {
    "abrouter_config_stale": set(),
}


def experiment(name: str = "exp", weights: dict[str, float] | None = None) -> Experiment:
    weights = weights or {"a": 50, "b": 50}
    control = next(iter(weights))
    variants = [{"name": v, "weight": w, "url": f"http://127.0.0.1:9/{v}"} for v, w in weights.items()]
    return Experiment.model_validate({"name": name, "control": control, "variants": variants})


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def metrics(registry: CollectorRegistry) -> Metrics:
    return Metrics(registry)


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def record_one_of_each(metrics: Metrics) -> None:
    metrics.request("exp", "a", "hashed", 200, 0.01)
    metrics.upstream_call("exp", "a", 0.005, UpstreamErrorKind.TIMEOUT)
    metrics.fallback("exp", "b")
    metrics.shadow("exp", "b", ShadowResult.OK)
    metrics.exposure("exp", "a")
    metrics.outcomes("exp", "a", "converted", 3)
    metrics.config_in_force(experiment(), 1)
    metrics.set_events_pending(4)
    metrics.events_written(10)
    metrics.events_dropped(0)
    metrics.store_error(StoreOperation.EVENTS)
    metrics.set_rollout_step("exp", 5)
    metrics.rollout_decision("exp", RolloutDecision.ADVANCE)


def test_metrics_exports_the_names_and_labels_of_spec_section_8_and_only_the_documented_extras(
    metrics: Metrics, registry: CollectorRegistry
) -> None:
    record_one_of_each(metrics)
    exported: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            name = family.name if family.type == "histogram" else sample.name
            exported.setdefault(name, set()).update(set(sample.labels) - {"le"})
    assert exported == SPEC_METRICS | EXTRA_METRICS


def test_a_recorded_request_counts_once_under_its_labels_with_its_duration(
    metrics: Metrics, registry: CollectorRegistry
) -> None:
    metrics.request("exp", "b", "hashed", 200, 0.02)
    assert value(registry, "abrouter_requests_total", experiment="exp", variant="b", reason="hashed", status="200") == 1
    assert value(registry, "abrouter_request_duration_seconds_count", experiment="exp", variant="b") == 1
    assert value(registry, "abrouter_request_duration_seconds_sum", experiment="exp", variant="b") == pytest.approx(
        0.02
    )
    assert value(registry, "abrouter_request_duration_seconds_bucket", experiment="exp", variant="b", le="0.01") == 0
    assert value(registry, "abrouter_request_duration_seconds_bucket", experiment="exp", variant="b", le="0.025") == 1


def test_recording_the_same_labels_again_adds_to_the_same_series(metrics: Metrics, registry: CollectorRegistry) -> None:
    for _ in range(3):
        metrics.request("exp", "a", "hashed", 200, 0.001)
    metrics.request("exp", "a", "hashed", 503, 0.001)
    assert value(registry, "abrouter_requests_total", experiment="exp", variant="a", reason="hashed", status="200") == 3
    assert value(registry, "abrouter_requests_total", experiment="exp", variant="a", reason="hashed", status="503") == 1
    assert value(registry, "abrouter_request_duration_seconds_count", experiment="exp", variant="a") == 4


def test_a_call_refused_before_assignment_is_counted_without_a_variant(
    metrics: Metrics, registry: CollectorRegistry
) -> None:
    metrics.request("exp", NO_VARIANT, REJECTED, 400, 0.001)
    text = generate_latest(registry).decode()
    assert 'abrouter_requests_total{experiment="exp",reason="rejected",status="400",variant=""} 1.0' in text


@pytest.mark.parametrize(
    ("status", "label"),
    [
        pytest.param(200, "200", id="ok"),
        pytest.param(418, "418", id="teapot-is-standard"),
        pytest.param(503, "503", id="server-error"),
        pytest.param(299, "2xx", id="non-standard-success"),
        pytest.param(599, "5xx", id="non-standard-error"),
        pytest.param(999, "other", id="out-of-range"),
    ],
)
def test_the_status_label_is_the_standard_code_or_its_class(status: int, label: str) -> None:
    assert status_label(status) == label


def test_an_upstream_call_that_succeeded_counts_no_upstream_error(
    metrics: Metrics, registry: CollectorRegistry
) -> None:
    metrics.upstream_call("exp", "a", 0.003)
    assert value(registry, "abrouter_upstream_duration_seconds_count", experiment="exp", variant="a") == 1
    assert "abrouter_upstream_errors_total{" not in generate_latest(registry).decode()


@pytest.mark.parametrize("kind", [pytest.param(kind, id=kind.value) for kind in UpstreamErrorKind])
def test_a_failed_upstream_call_counts_one_error_of_its_kind(
    metrics: Metrics, registry: CollectorRegistry, kind: UpstreamErrorKind
) -> None:
    metrics.upstream_call("exp", "b", 1.0, kind)
    assert value(registry, "abrouter_upstream_errors_total", experiment="exp", variant="b", kind=kind.value) == 1
    assert value(registry, "abrouter_upstream_duration_seconds_count", experiment="exp", variant="b") == 1


def _subclasses(cls: type[Any]) -> list[type[Any]]:
    return [cls, *(sub for direct in cls.__subclasses__() for sub in _subclasses(direct))]


def test_every_upstream_error_class_has_a_kind_the_metric_accepts() -> None:
    kinds = {cls.__name__: cls.kind for cls in _subclasses(UpstreamError)}
    assert {name: kind for name, kind in kinds.items() if kind not in set(UpstreamErrorKind)} == {}


def test_config_in_force_shows_each_variants_share_of_the_weights_and_the_version(
    metrics: Metrics, registry: CollectorRegistry
) -> None:
    metrics.config_in_force(experiment(weights={"a": 90, "b": 10}), 7)
    assert value(registry, "abrouter_variant_weight", experiment="exp", variant="a") == pytest.approx(0.9)
    assert value(registry, "abrouter_variant_weight", experiment="exp", variant="b") == pytest.approx(0.1)
    assert value(registry, "abrouter_config_version", experiment="exp") == 7


def test_a_variant_dropped_by_a_new_version_loses_its_weight_series(
    metrics: Metrics, registry: CollectorRegistry
) -> None:
    metrics.config_in_force(experiment(weights={"a": 50, "b": 50}), 1)
    metrics.config_in_force(experiment(weights={"a": 50, "c": 50}), 2)
    assert value(registry, "abrouter_variant_weight", experiment="exp", variant="b") is None
    assert value(registry, "abrouter_variant_weight", experiment="exp", variant="c") == pytest.approx(0.5)
    assert metrics.served() == {"exp": frozenset({"a", "c"})}


def test_a_retired_experiment_loses_its_config_gauges_but_keeps_its_counts(
    metrics: Metrics, registry: CollectorRegistry
) -> None:
    metrics.config_in_force(experiment(), 3)
    metrics.set_rollout_step("exp", 25)
    metrics.request("exp", "a", "hashed", 200, 0.01)
    metrics.experiment_retired("exp")
    assert value(registry, "abrouter_variant_weight", experiment="exp", variant="a") is None
    assert value(registry, "abrouter_config_version", experiment="exp") is None
    assert value(registry, "abrouter_rollout_step", experiment="exp") is None
    assert value(registry, "abrouter_requests_total", experiment="exp", variant="a", reason="hashed", status="200") == 1
    assert metrics.served() == {}


def test_counting_after_an_experiment_came_back_continues_its_series(
    metrics: Metrics, registry: CollectorRegistry
) -> None:
    metrics.request("exp", "a", "hashed", 200, 0.01)
    metrics.experiment_retired("exp")
    metrics.config_in_force(experiment(), 4)
    metrics.request("exp", "a", "hashed", 200, 0.01)
    assert value(registry, "abrouter_requests_total", experiment="exp", variant="a", reason="hashed", status="200") == 2


def histogram_samples(registry: CollectorRegistry, family: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for metric in registry.collect()
        if metric.name == family
        for sample in metric.samples
    }


def test_durations_handed_over_in_bulk_give_the_series_observe_gives() -> None:
    """Guards `_Observations.hand_to`, which writes prometheus-client's per-bucket values directly."""
    from prometheus_client import Histogram

    from router.metrics import LATENCY_BUCKETS

    durations = [0.0, 0.0004, *LATENCY_BUCKETS, *(bound * 1.01 for bound in LATENCY_BUCKETS), 45.0, 1e9]
    durations += [bound - 1e-12 for bound in LATENCY_BUCKETS]
    bulk_registry, reference_registry = CollectorRegistry(), CollectorRegistry()
    bulk = Metrics(bulk_registry)
    reference = Histogram(
        "abrouter_request_duration_seconds",
        "",
        ["experiment", "variant"],
        buckets=LATENCY_BUCKETS,
        registry=reference_registry,
    )
    for rounds in range(2):  # twice: a second flush adds to the series, it does not replace them
        for duration in durations:
            bulk.request("exp", "a", "hashed", 200, duration)
            reference.labels("exp", "a").observe(duration)
        got = histogram_samples(bulk_registry, "abrouter_request_duration_seconds")
        want = histogram_samples(reference_registry, "abrouter_request_duration_seconds")
        assert got.keys() == want.keys()
        for key, expected in want.items():
            assert got[key] == pytest.approx(expected, rel=1e-12), (rounds, key)


def test_upstream_durations_are_handed_over_too(metrics: Metrics, registry: CollectorRegistry) -> None:
    for duration in (0.003, 0.003, 2.0):
        metrics.upstream_call("exp", "b", duration)
    labels = {"experiment": "exp", "variant": "b"}
    assert value(registry, "abrouter_upstream_duration_seconds_count", **labels) == 3
    assert value(registry, "abrouter_upstream_duration_seconds_bucket", **labels, le="0.005") == 2
    assert value(registry, "abrouter_upstream_duration_seconds_sum", **labels) == pytest.approx(2.006)


def test_a_collection_on_another_thread_leaves_the_tallies_to_the_owning_thread(
    metrics: Metrics, registry: CollectorRegistry
) -> None:
    """The /metrics handler renders in a worker thread; it flushes on the event loop before handing over."""
    import threading

    metrics.request("exp", "a", "hashed", 200, 0.01)
    seen: list[float | None] = []
    reader = threading.Thread(
        target=lambda: seen.append(
            value(registry, "abrouter_requests_total", experiment="exp", variant="a", reason="hashed", status="200")
        )
    )
    reader.start()
    reader.join()
    assert seen == [None]  # not flushed there
    metrics.flush()
    assert value(registry, "abrouter_requests_total", experiment="exp", variant="a", reason="hashed", status="200") == 1


def test_two_metrics_objects_in_separate_registries_do_not_share_counts() -> None:
    first, second = CollectorRegistry(), CollectorRegistry()
    Metrics(first).request("exp", "a", "hashed", 200, 0.01)
    Metrics(second)
    assert value(first, "abrouter_requests_total", experiment="exp", variant="a", reason="hashed", status="200") == 1
    assert (
        value(second, "abrouter_requests_total", experiment="exp", variant="a", reason="hashed", status="200") is None
    )


def test_the_event_writer_methods_count_written_dropped_and_pending(
    metrics: Metrics, registry: CollectorRegistry
) -> None:
    metrics.events_written(5)
    metrics.events_written(2)
    metrics.events_dropped(1)
    metrics.set_events_pending(9)
    metrics.set_events_pending(3)
    assert value(registry, "abrouter_events_written_total") == 7
    assert value(registry, "abrouter_events_dropped_total") == 1
    assert value(registry, "abrouter_events_pending") == 3


def test_outcomes_are_counted_per_variant_and_metric(metrics: Metrics, registry: CollectorRegistry) -> None:
    metrics.outcomes("exp", "a", "converted", 2)
    metrics.outcomes("exp", "a", "revenue")
    assert value(registry, "abrouter_outcomes_total", experiment="exp", variant="a", metric="converted") == 2
    assert value(registry, "abrouter_outcomes_total", experiment="exp", variant="a", metric="revenue") == 1
