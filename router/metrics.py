"""Every Prometheus metric of SPEC section 8, owned by one `Metrics(registry)` object per app.

Label values are bounded: experiment, variant and outcome-metric names come from the config in
force; reasons, kinds, results, decisions and operations from the closed sets below; the status
is the HTTP code (its class for a non-standard one). Unit ids, paths and the names of unknown
experiments never become label values.

With several worker processes, prometheus-client's multiprocess mode keeps each worker's values
in memory-mapped files under ``PROMETHEUS_MULTIPROC_DIR`` (set by `abrouter serve` before the
workers start) and `scrape_collector` adds them up on every scrape. Each gauge says what the sum
over workers means for it: buffers add up, the config in force does not.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import shutil
import threading
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Mapping
from enum import StrEnum
from http import HTTPStatus
from pathlib import Path
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

from router.config.schema import Experiment

MULTIPROC_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"

# Multiprocess mode has no `*_created` series; without them one worker and N workers export the
# same series (half as many). A process-wide switch of prometheus-client, read when a series is made.
disable_created_metrics()  # type: ignore[no-untyped-call]

#: seconds; finer below 100 ms, where a gateway and most models live, up to the longest upstream timeout
LATENCY_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

#: `variant` of a call refused before a variant was chosen (Prometheus treats it as no label)
NO_VARIANT: Final = ""
#: `reason` of such a call (missing unit with `on_missing_unit: reject`, bad override, unreadable body);
#: not an assignment `Reason`, since there was no assignment
REJECTED: Final = "rejected"


class UpstreamErrorKind(StrEnum):
    """`kind` of abrouter_upstream_errors_total: how a variant failed to answer usefully."""

    TIMEOUT = "timeout"  # no answer within the variant's timeout_s
    CONNECT = "connect"  # refused, reset or closed connection
    STATUS = "status"  # the model server answered 5xx
    MODEL = "model"  # a local model raised


class ShadowResult(StrEnum):
    """`result` of abrouter_shadow_requests_total."""

    OK = "ok"  # the shadow variant answered (its answer is discarded)
    ERROR = "error"  # it failed: 5xx, refused connection, model error
    TIMEOUT = "timeout"
    DROPPED = "dropped"  # not sent: ABROUTER_SHADOW_MAX_IN_FLIGHT mirrors were already in flight


class StoreOperation(StrEnum):
    """`operation` of abrouter_store_errors_total: which kind of Redis work failed."""

    EVENTS = "events"  # writing exposure/outcome events and their statistics
    CONFIG = "config"  # reading or writing config versions
    STICKY = "sticky"  # reading or writing sticky assignments
    STATS = "stats"  # reading aggregates for reports and rollout gates
    ROLLOUT = "rollout"  # the rollout lease and state


class RolloutDecision(StrEnum):
    """`decision` of abrouter_rollout_decisions_total: the controller's verdicts and operators' actions."""

    ADVANCE = "advance"
    HOLD = "hold"
    ROLLBACK = "rollback"
    PAUSE = "pause"
    PROMOTE = "promote"
    RESUME = "resume"
    ABORT = "abort"


_STANDARD_STATUSES: Final = frozenset(int(status) for status in HTTPStatus)


def status_label(status: int) -> str:
    """The `status` label: the code when it is a standard one, else its class, so upstreams cannot add series."""
    if status in _STANDARD_STATUSES:
        return str(status)
    if 100 <= status <= 599:
        return f"{status // 100}xx"
    return "other"


def multiprocess_dir() -> str | None:
    """Where the workers' metric files live, or None in single-process mode (as prometheus-client decides)."""
    return os.environ.get(MULTIPROC_ENV) or None


#: seconds between two hand-overs of the prediction path's counts to prometheus-client (`Metrics.flush`)
FLUSH_INTERVAL_S: Final = 1.0


class _Observations:
    """Durations observed into one histogram series since the last flush: per-bucket counts and their sum."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        # one more than the bounds: +Inf; index i counts values v with bounds[i-1] < v <= bounds[i]
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.total = 0.0

    def hand_to(self, histogram: Histogram) -> None:
        """Add the observations to a labelled histogram series, as that many `observe()` calls would, and reset.

        prometheus-client has no public call that adds many observations at once. A series keeps
        a value per bucket, not cumulative (`observe` increments the first bucket whose bound
        holds the value), and their sum; tests/unit/test_metrics.py checks that this gives what
        `observe` gives, so a change of those internals fails the tests rather than the numbers.
        """
        buckets = histogram._buckets  # see the docstring
        for index, count in enumerate(self.counts):
            if count:
                buckets[index].inc(count)
                self.counts[index] = 0
        histogram._sum.inc(self.total)
        self.total = 0.0


class _FlushFirst:
    """A collector of no metrics that `flush`es its `Metrics` when the registry is collected on their thread.

    Collections on other threads (the /metrics handler renders in one) leave the tallies alone,
    as the event loop may be adding to them: the handler flushes on the loop before it hands over.
    """

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._thread = threading.get_ident()

    def collect(self) -> Iterable[Metric]:
        if threading.get_ident() == self._thread:
            self._metrics.flush()
        return ()


#: gauges describing the config in force: their series follow the experiments a worker serves
_CONFIG_GAUGES: Final = frozenset({"abrouter_variant_weight", "abrouter_config_version", "abrouter_rollout_step"})


class Metrics:
    """Every metric of SPEC section 8, registered in `registry`; one per app, so tests never share counts.

    The prediction path calls `request`, `upstream_call` and `fallback`, which cache labelled
    children; other components call the method named after their metric (`exposure`, `outcomes`,
    `shadow`, `events_written`, ...). The metric objects are public for reading.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        # First in the registry: whoever collects it (a scrape, a test) reads counts flushed just before.
        registry.register(_FlushFirst(self))
        self.multiprocess = multiprocess_dir() is not None
        variant = ["experiment", "variant"]
        self.requests_total = Counter(
            "abrouter_requests_total",
            "Prediction calls answered, by the variant that served them, why it was chosen and the HTTP status.",
            [*variant, "reason", "status"],
            registry=registry,
        )
        self.request_duration_seconds = Histogram(
            "abrouter_request_duration_seconds",
            "Whole prediction call through the gateway, from arrival to the answer, in seconds.",
            variant,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.upstream_duration_seconds = Histogram(
            "abrouter_upstream_duration_seconds",
            "Time in one variant per attempt: the HTTP exchange of a remote one, the model call of a local one.",
            variant,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.upstream_errors_total = Counter(
            "abrouter_upstream_errors_total",
            "Variant failures by kind: timeout, connect, status (5xx answer), model (a local model raised).",
            [*variant, "kind"],
            registry=registry,
        )
        self.fallbacks_total = Counter(
            "abrouter_fallbacks_total",
            "Calls the variant failed that control then served (fallback: control); variant is the failing one.",
            variant,
            registry=registry,
        )
        self.shadow_requests_total = Counter(
            "abrouter_shadow_requests_total",
            "Calls mirrored to a shadow variant, by result: ok, error, timeout, dropped.",
            [*variant, "result"],
            registry=registry,
        )
        self.exposures_total = Counter(
            "abrouter_exposures_total",
            "Exposures logged: a unit's assignment counted in the analysis.",
            variant,
            registry=registry,
        )
        self.outcomes_total = Counter(
            "abrouter_outcomes_total",
            "Outcomes accepted and attributed to the variant of the unit's first exposure.",
            [*variant, "metric"],
            registry=registry,
        )
        # The config gauges: every worker holds the same config, so a sum over workers would
        # multiply it. Weights are not monotonic: the value set last wins; versions only grow.
        self.variant_weight = Gauge(
            "abrouter_variant_weight",
            "Share of traffic the config in force gives the variant (its weight over the sum of weights).",
            variant,
            multiprocess_mode="livemostrecent",
            registry=registry,
        )
        self.config_version = Gauge(
            "abrouter_config_version",
            "The experiment's config version in force.",
            ["experiment"],
            multiprocess_mode="livemax",
            registry=registry,
        )
        # Any worker that cannot check its config makes the gateway's answer uncertain: the max over workers.
        self.config_stale = Gauge(
            "abrouter_config_stale",
            "1 while this gateway cannot reach Redis to check its config: it serves the last config it loaded.",
            multiprocess_mode="livemax",
            registry=registry,
        )
        # Each worker buffers its own events: the total waiting is the sum over live workers.
        self.events_pending = Gauge(
            "abrouter_events_pending",
            "Exposure and outcome events buffered (in memory or spilled to disk), waiting to be written to Redis.",
            multiprocess_mode="livesum",
            registry=registry,
        )
        self.events_written_total = Counter(
            "abrouter_events_written_total", "Events written to Redis.", registry=registry
        )
        self.events_dropped_total = Counter(
            "abrouter_events_dropped_total", "Events lost for any reason; the target is none.", registry=registry
        )
        self.store_errors_total = Counter(
            "abrouter_store_errors_total",
            "Failed Redis operations, by kind: events, config, sticky, stats, rollout.",
            ["operation"],
            registry=registry,
        )
        # Set by the one worker holding the rollout lease; the lease may move, so the latest value wins.
        self.rollout_step = Gauge(
            "abrouter_rollout_step",
            "Percent of traffic the progressive rollout currently gives the canary.",
            ["experiment"],
            multiprocess_mode="livemostrecent",
            registry=registry,
        )
        self.rollout_decisions_total = Counter(
            "abrouter_rollout_decisions_total",
            "Rollout decisions: advance, hold, rollback, pause, promote, and operators' resume and abort.",
            ["experiment", "decision"],
            registry=registry,
        )
        # What the prediction path counted since the last `flush`, by label values.
        self._pending_requests: dict[tuple[str, str, str, int], int] = {}
        self._pending_request_durations: dict[tuple[str, str], _Observations] = {}
        self._pending_upstream_durations: dict[tuple[str, str], _Observations] = {}
        # Labelled children by label values: `.labels()` takes a lock and converts every value on each call.
        self._requests: dict[tuple[str, str, str, int], Counter] = {}
        self._request_durations: dict[tuple[str, str], Histogram] = {}
        self._upstream_durations: dict[tuple[str, str], Histogram] = {}
        #: experiment -> its variants, as in force in this process
        self._served: dict[str, frozenset[str]] = {}

    # --- the prediction path ------------------------------------------------------------------------------------

    def request(self, experiment: str, variant: str, reason: str, status: int, duration_s: float) -> None:
        """Count one answered prediction call and its duration through the gateway (handed over by `flush`)."""
        key = (experiment, variant, reason, status)
        pending = self._pending_requests
        pending[key] = pending.get(key, 0) + 1
        durations = self._pending_request_durations.get((experiment, variant))
        if durations is None:
            durations = self._pending_request_durations[(experiment, variant)] = _Observations()
        durations.counts[bisect_left(LATENCY_BUCKETS, duration_s)] += 1
        durations.total += duration_s

    def upstream_call(
        self, experiment: str, variant: str, duration_s: float, error: UpstreamErrorKind | None = None
    ) -> None:
        """Record one attempt at a variant: its duration (handed over by `flush`) and, when it failed, how."""
        durations = self._pending_upstream_durations.get((experiment, variant))
        if durations is None:
            durations = self._pending_upstream_durations[(experiment, variant)] = _Observations()
        durations.counts[bisect_left(LATENCY_BUCKETS, duration_s)] += 1
        durations.total += duration_s
        if error is not None:
            self.upstream_errors_total.labels(experiment, variant, error).inc()

    def flush(self) -> None:
        """Hand the prediction path's pending counts and durations to prometheus-client.

        Every call counted through prometheus-client costs about 4 us (a lock and a loop over the
        buckets per histogram, a memory-mapped write each with several workers), so calls are
        tallied in plain dicts and handed over in bulk: by the /metrics handler before it scrapes,
        by `flush_periodically` (other workers' scrapes read this worker's files), and at shutdown.
        Call it on the event loop: the tallies are not locked.
        """
        requests, self._pending_requests = self._pending_requests, {}
        for key, count in requests.items():
            counter = self._requests.get(key)
            if counter is None:
                experiment, variant, reason, status = key
                counter = self._requests[key] = self.requests_total.labels(
                    experiment, variant, reason, status_label(status)
                )
            counter.inc(count)
        for pending, family, children in (
            (self._pending_request_durations, self.request_duration_seconds, self._request_durations),
            (self._pending_upstream_durations, self.upstream_duration_seconds, self._upstream_durations),
        ):
            for series, observations in pending.items():
                if not any(observations.counts):
                    continue
                histogram = children.get(series)
                if histogram is None:
                    histogram = children[series] = family.labels(*series)
                observations.hand_to(histogram)

    async def flush_periodically(self, interval_s: float = FLUSH_INTERVAL_S) -> None:
        """`flush` every `interval_s`, so a scrape answered by another worker is at most that far behind."""
        while True:
            await asyncio.sleep(interval_s)
            self.flush()

    def fallback(self, experiment: str, variant: str) -> None:
        """Count a call that `variant` failed and control served instead."""
        self.fallbacks_total.labels(experiment, variant).inc()

    # --- for the event writer, the outcomes endpoint, shadowing and the rollout controller ----------------------

    def exposure(self, experiment: str, variant: str, count: int = 1) -> None:
        """Count logged exposures (exposing reasons only: hashed, sticky)."""
        self.exposures_total.labels(experiment, variant).inc(count)

    def outcomes(self, experiment: str, variant: str, metric: str, count: int = 1) -> None:
        """Count accepted outcomes of a declared `metric`, under the variant they are attributed to."""
        self.outcomes_total.labels(experiment, variant, metric).inc(count)

    def shadow(self, experiment: str, variant: str, result: ShadowResult) -> None:
        """Count one call mirrored (or not, `DROPPED`) to a shadow variant."""
        self.shadow_requests_total.labels(experiment, variant, result).inc()

    def set_events_pending(self, count: int) -> None:
        """This process's buffered events; with several workers the scrape shows the sum over live ones."""
        self.events_pending.set(count)

    def events_written(self, count: int) -> None:
        self.events_written_total.inc(count)

    def events_dropped(self, count: int) -> None:
        self.events_dropped_total.inc(count)

    def store_error(self, operation: StoreOperation) -> None:
        self.store_errors_total.labels(operation).inc()

    def set_rollout_step(self, experiment: str, percent: float) -> None:
        """The canary's share of traffic, in percent, at the rollout's current step."""
        self.rollout_step.labels(experiment).set(percent)

    def rollout_decision(self, experiment: str, decision: RolloutDecision) -> None:
        self.rollout_decisions_total.labels(experiment, decision).inc()

    # --- the config in force ------------------------------------------------------------------------------------

    def set_config_stale(self, stale: bool) -> None:
        """Whether the config in force could not be checked against Redis lately."""
        self.config_stale.set(1 if stale else 0)

    def config_in_force(self, experiment: Experiment, version: int) -> None:
        """Show a version that came into force: its version and each variant's share of the weights."""
        name = experiment.name
        for variant, share in experiment.shares.items():
            self.variant_weight.labels(name, variant).set(share)
        self.config_version.labels(name).set(version)
        variants = frozenset(experiment.variant_names)
        for dropped in self._served.get(name, frozenset()) - variants:
            self._remove(self.variant_weight, name, dropped)
        self._served[name] = variants

    def experiment_retired(self, name: str) -> None:
        """Stop showing the config gauges of an experiment no longer served.

        Its counters and histograms stay: they are true history, bounded by the experiments the
        process has served, and removing them would lose increments no scrape has seen yet.
        """
        self.flush()  # its last calls are counted before its cached series are let go
        for variant in self._served.pop(name, frozenset()):
            self._remove(self.variant_weight, name, variant)
        self._remove(self.config_version, name)
        self._remove(self.rollout_step, name)
        self._requests = {key: child for key, child in self._requests.items() if key[0] != name}
        self._request_durations = {key: child for key, child in self._request_durations.items() if key[0] != name}
        self._upstream_durations = {key: child for key, child in self._upstream_durations.items() if key[0] != name}
        for pending in (self._pending_request_durations, self._pending_upstream_durations):
            for key in [key for key in pending if key[0] == name]:
                del pending[key]

    def served(self) -> dict[str, frozenset[str]]:
        """A copy of experiment -> variants in force in this process."""
        return dict(self._served)

    def _remove(self, gauge: Gauge, *labels: str) -> None:
        # prometheus-client cannot delete a series from a worker's file (it warns and keeps it);
        # in multiprocess mode `scrape_collector` hides it instead.
        if not self.multiprocess:
            gauge.remove(*labels)


class NullMetrics(Metrics):
    """`ABROUTER_METRICS_ENABLED=false`: the same interface, and every recording method does nothing.

    Its metric objects live in a registry of their own that nothing exports (/metrics answers 503),
    so a method added to `Metrics` later and not overridden here is harmless, only not free.
    """

    def __init__(self) -> None:
        super().__init__(CollectorRegistry())

    def request(self, experiment: str, variant: str, reason: str, status: int, duration_s: float) -> None:
        pass

    def upstream_call(
        self, experiment: str, variant: str, duration_s: float, error: UpstreamErrorKind | None = None
    ) -> None:
        pass

    def fallback(self, experiment: str, variant: str) -> None:
        pass

    def flush(self) -> None:
        pass

    async def flush_periodically(self, interval_s: float = FLUSH_INTERVAL_S) -> None:
        """Nothing is ever pending: no task needs to wake up."""

    def exposure(self, experiment: str, variant: str, count: int = 1) -> None:
        pass

    def outcomes(self, experiment: str, variant: str, metric: str, count: int = 1) -> None:
        pass

    def shadow(self, experiment: str, variant: str, result: ShadowResult) -> None:
        pass

    def set_events_pending(self, count: int) -> None:
        pass

    def events_written(self, count: int) -> None:
        pass

    def events_dropped(self, count: int) -> None:
        pass

    def store_error(self, operation: StoreOperation) -> None:
        pass

    def set_rollout_step(self, experiment: str, percent: float) -> None:
        pass

    def rollout_decision(self, experiment: str, decision: RolloutDecision) -> None:
        pass

    def set_config_stale(self, stale: bool) -> None:
        pass

    def config_in_force(self, experiment: Experiment, version: int) -> None:
        pass

    def experiment_retired(self, name: str) -> None:
        pass


class _InForce:
    """Passes the merged families of every worker through, less config-gauge series no longer in force."""

    def __init__(self, source: Collector, served: Mapping[str, frozenset[str]]) -> None:
        self._source = source
        self._served = served

    def collect(self) -> Iterable[Metric]:
        for family in self._source.collect():
            if family.name in _CONFIG_GAUGES:
                family.samples = [sample for sample in family.samples if self._in_force(sample.labels)]
            yield family

    def _in_force(self, labels: Mapping[str, str]) -> bool:
        variants = self._served.get(labels.get("experiment", ""))
        if variants is None:
            return False
        return "variant" not in labels or labels["variant"] in variants


def scrape_collector(metrics: Metrics, path: str | None) -> Collector:
    """What one scrape exports: the app's registry, or with `path` a fresh merge of every worker's files.

    The merge is rebuilt on every scrape (as prometheus-client requires), so a worker started or
    stopped since the last scrape is counted right.
    """
    if path is None:
        return metrics.registry
    registry = CollectorRegistry()
    merged = MultiProcessCollector(None, path=path)  # type: ignore[no-untyped-call]  # the library has no annotations here
    registry.register(_InForce(merged, metrics.served()))
    return registry


# --- the files of multiprocess mode -----------------------------------------------------------------------------


def prepare_multiprocess_dir(data_dir: Path, *, pid: int | None = None) -> Path:
    """An empty directory for this launcher's workers' metric files, under `data_dir/prometheus/<pid>`.

    Files left by an earlier run would add stale counts, so ours starts empty; directories of
    launchers that no longer run are removed. One directory per launcher lets two gateways share
    a data directory (two ports, one host) without mixing their numbers.
    """
    pid = os.getpid() if pid is None else pid
    parent = data_dir.resolve() / "prometheus"
    parent.mkdir(parents=True, exist_ok=True)
    for entry in parent.iterdir():
        if entry.name.isdigit() and (int(entry.name) == pid or not _alive(int(entry.name))):
            shutil.rmtree(entry, ignore_errors=True)
    path = parent / str(pid)
    path.mkdir()
    return path


@contextlib.contextmanager
def worker_lifetime(path: str | None) -> Iterator[None]:
    """Around one worker process: forget workers that died without saying so, and say so on exit.

    `live*` gauges (events pending, the config in force) count only live workers; prometheus-client
    learns that a worker is gone from `mark_process_dead`, which a worker killed by a signal never
    calls, so the next worker to start does it for it.
    """
    if path is None:
        yield
        return
    for pid in _pids_with_live_gauges(path) - {os.getpid()}:
        if not _alive(pid):
            mark_process_dead(pid, path)  # type: ignore[no-untyped-call]
    try:
        yield
    finally:
        mark_process_dead(os.getpid(), path)  # type: ignore[no-untyped-call]


def _pids_with_live_gauges(path: str) -> set[int]:
    # files are named gauge_<mode>_<pid>.db
    pids = set()
    for file in glob.glob(os.path.join(path, "gauge_live*_*.db")):
        tail = Path(file).stem.rsplit("_", 1)[-1]
        if tail.isdigit():
            pids.add(int(tail))
    return pids


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, but someone else's
        return True
    return True
