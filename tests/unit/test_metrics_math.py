"""The metrics' arithmetic: percentiles from fixed buckets, one request's fields, the aggregator, and
the charts' gaps (no Redis: llmapp/runtime/metrics.py and llmapp/charts.py as functions)."""

from collections import Counter

import pytest

from llmapp import charts
from llmapp.runtime import metrics


def test_percentiles_from_buckets_match_a_hand_computation():
    bounds = (0.1, 0.5, 1.0)
    # 10 requests: 2 at ≤ 0.1 s, 6 in (0.1, 0.5], 2 in (0.5, 1.0], none above.
    counts = [2, 6, 2, 0]
    # p50: rank 5 is the 3rd of the 6 in (0.1, 0.5] → 0.1 + 0.4 × 3/6 = 0.3
    assert metrics.percentile(bounds, counts, 0.5) == pytest.approx(0.3)
    # p95: rank 9.5 is 1.5 into the 2 of (0.5, 1.0] → 0.5 + 0.5 × 1.5/2 = 0.875
    assert metrics.percentile(bounds, counts, 0.95) == pytest.approx(0.875)
    # p10: rank 1 is halfway through the first bucket, which starts at 0 → 0.05
    assert metrics.percentile(bounds, counts, 0.10) == pytest.approx(0.05)
    assert metrics.percentile(bounds, [0, 0, 0, 3], 0.5) == 1.0  # in +Inf: its lower bound
    assert metrics.percentile(bounds, [0, 0, 0, 0], 0.5) is None  # no data is not zero
    # Knowing the slowest: never above it, and the +Inf bucket ends there (3 above 1 s, the slowest 4 s).
    assert metrics.percentile(bounds, [2, 6, 2, 0], 0.95, slowest=0.6) == pytest.approx(0.6)
    assert metrics.percentile(bounds, [0, 0, 0, 3], 0.5, slowest=4.0) == pytest.approx(1.0 + 3.0 * 1.5 / 3)
    assert metrics.percentile(bounds, [0, 0, 0, 3], 0.99, slowest=4.0) <= 4.0


def test_one_requests_fields_and_the_aggregator():
    fields = metrics.request_fields(
        200, 0.3, "laptop", 12, 5, cache="MISS", ttft_s=0.02, tpot_s=0.004, stages={"parse": 0.001}
    )
    assert fields["n|2xx"] == 1 and fields[f"lat|{metrics.bucket_index(metrics.LATENCY_S, 0.3)}"] == 1
    assert fields["tok|in"] == 12 and fields["tok|out"] == 5 and fields["cache|miss"] == 1
    assert fields["key|laptop|n"] == 1 and fields["key|laptop|err"] == 0 and fields["stage|parse|n"] == 1
    refused = metrics.request_fields(429, 0.001, None)
    assert refused["n|429"] == 1 and "tok|out" not in refused and not any(k.startswith("key|") for k in refused)
    assert metrics.outcome(413) == "4xx" and metrics.outcome(503) == "5xx" and metrics.outcome(504) == "504"
    assert metrics.is_error("404") and not metrics.is_error("499") and not metrics.is_error("2xx")

    aggregator = metrics.Aggregator()
    aggregator.add({"n|2xx": 1, "lat|sum": 0.25}, at=1000.0)
    aggregator.add({"n|2xx": 1, "lat|sum": 0.5}, at=1009.9)
    aggregator.add({"n|2xx": 1}, at=1010.0)
    taken = aggregator.take()
    assert taken == {1000: Counter({"n|2xx": 2, "lat|sum": 0.75}), 1010: Counter({"n|2xx": 1})}
    aggregator.add({"n|2xx": 1}, at=1010.0)
    aggregator.give_back(taken)  # a failed flush: counted once, later
    assert aggregator.take()[1010]["n|2xx"] == 2


def test_charts_leave_gaps_where_there_is_no_data():
    points = [
        {"at": 0, "data": True, "requests_per_s": 1.0},
        {"at": 10, "data": False},
        {"at": 20, "data": True, "requests_per_s": 3.0},
        {"at": 30, "data": True, "requests_per_s": 0.0},
    ]
    chart = charts.line_chart("Requests", points, [("answered", "requests_per_s", "series-a")], charts.rate, 10)
    assert chart.lines[0].d.count("M") == 2  # broken at the point without data, not drawn down to zero
    assert [label for _, label in chart.y_ticks] == ["0/s", "2.5/s", "5/s"]
    assert chart.hovers[1][2].endswith("no data (not running)") and "answered 3/s" in chart.hovers[2][2]
    assert [charts.nice_ceiling(v) for v in (0.7, 3, 7, 120)] == [1, 5, 10, 200]
