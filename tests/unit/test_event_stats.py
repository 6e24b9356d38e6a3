"""The pure parts of the stored statistics: latency buckets, quantiles and the parsing of the stats hash."""

from __future__ import annotations

import pytest

from router.store.stats import LATENCY_BUCKETS_MS, latency_bucket, latency_quantile, parse_stats

EMPTY = [0] * (len(LATENCY_BUCKETS_MS) + 1)


def histogram(**counts: int) -> list[int]:
    """Counts by bucket upper bound, e.g. histogram(b10=3) puts 3 in the bucket ending at 10 ms."""
    buckets = list(EMPTY)
    for name, count in counts.items():
        bound = float(name[1:].replace("_", "."))
        buckets[LATENCY_BUCKETS_MS.index(bound)] = count
    return buckets


@pytest.mark.parametrize(
    ("latency_ms", "upper_bound"),
    [
        pytest.param(0.0, 0.5, id="zero-in-the-first"),
        pytest.param(10.0, 10, id="a-bound-belongs-to-its-bucket"),
        pytest.param(10.01, 12.5, id="just-above-a-bound"),
        pytest.param(59_999.0, 60_000, id="the-last-finite"),
    ],
)
def test_a_latency_falls_in_the_bucket_whose_upper_bound_is_the_first_at_or_above_it(
    latency_ms: float, upper_bound: float
) -> None:
    assert LATENCY_BUCKETS_MS[latency_bucket(latency_ms)] == upper_bound


def test_a_latency_above_every_bound_falls_in_the_overflow_bucket() -> None:
    assert latency_bucket(61_000.0) == len(LATENCY_BUCKETS_MS)


def test_a_quantile_is_interpolated_inside_its_bucket() -> None:
    counts = histogram(b8=50, b10=50)  # 50 calls in (6, 8] ms, 50 in (8, 10] ms
    assert latency_quantile(counts, 0.5) == pytest.approx(8.0)
    assert latency_quantile(counts, 0.75) == pytest.approx(9.0)
    assert latency_quantile(counts, 0.25) == pytest.approx(7.0)


def test_a_quantile_in_the_overflow_bucket_reads_as_the_last_bound() -> None:
    counts = histogram(b1=1)
    counts[-1] = 99  # slower than every bound
    assert latency_quantile(counts, 0.99) == LATENCY_BUCKETS_MS[-1]


def test_a_histogram_without_calls_has_no_quantile() -> None:
    assert latency_quantile(EMPTY, 0.5) is None


def test_a_quantile_outside_zero_to_one_is_refused() -> None:
    with pytest.raises(ValueError, match="between 0 and 1"):
        latency_quantile(EMPTY, 95)


def test_the_stats_hash_is_read_per_variant_and_metric() -> None:
    stats = parse_stats(
        "exp",
        {
            "a:units": "10",
            "a:requests": "25",
            "a:errors": "2",
            "a:latency:3": "25",
            "a:metric:revenue:sum": "12.5",
            "a:metric:revenue:sum_squares": "40.25",
            "a:metric:revenue:outcomes": "7",
            "b:units": "4",
            "*:unattributed:revenue": "3",
            "*:overflow:revenue": "1",
        },
        variants=["a", "b", "c"],
        metrics=["revenue", "converted"],
    )
    a = stats.variant("a")
    assert (a.units, a.requests, a.errors, a.latency_counts[3]) == (10, 25, 2, 25)
    assert (a.metric("revenue").n, a.metric("revenue").sum, a.metric("revenue").sum_squares) == (10, 12.5, 40.25)
    assert (a.metric("converted").n, a.metric("converted").sum) == (10, 0.0)
    assert stats.variant("b").metric("revenue").n == 4
    assert stats.variant("c").units == 0
    assert stats.unattributed == {"revenue": 3, "converted": 0}
    assert stats.overflow == {"revenue": 1, "converted": 0}
