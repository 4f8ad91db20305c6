"""Approximate percentiles from the rollups' log-bucketed histograms (migration
telemetry_0007 makes and adds them up in Postgres; the same constants).

Bucket i holds the values in [MIN_MS * GROWTH^i, MIN_MS * GROWTH^(i+1)), i from 0 to
BUCKETS - 1: 0.1 ms to 24.3 hours. A bucket reads as its geometric midpoint, within
sqrt(GROWTH) - 1 (1.98 %) of any value in it; values below the range (0 among them) are
counted in the first bucket and read as its midpoint (0.102 ms), values above it in the
last (read as 23.9 hours). A histogram is a list of count * 1024 + bucket, one per bucket
with values, in bucket order."""

from __future__ import annotations

import math
from collections.abc import Sequence

MIN_MS = 0.1
GROWTH = 1.04
BUCKETS = 525
RELATIVE_ERROR = math.sqrt(GROWTH) - 1  # 0.0198


def bucket_value(bucket: int) -> float:
    """What a bucket reads as: its geometric midpoint."""
    return float(MIN_MS * GROWTH ** (bucket + 0.5))


def percentile(histogram: Sequence[int] | None, q: float) -> float | None:
    """The q-quantile as percentile_cont computes it (the values at ranks floor(h) and
    floor(h) + 1 of n, h = q * (n - 1), interpolated linearly), each value read as its
    bucket's midpoint: within RELATIVE_ERROR of percentile_cont's answer for values in
    range. None for no values."""
    counts = [(entry & 1023, entry >> 10) for entry in histogram or ()]
    total = sum(count for _, count in counts)
    if total <= 0:
        return None
    h = q * (total - 1)
    low = math.floor(h)
    lower, upper = _value_at(counts, low), _value_at(counts, min(low + 1, total - 1))
    return lower + (h - low) * (upper - lower)


def _value_at(counts: Sequence[tuple[int, int]], rank: int) -> float:
    """The value (bucket midpoint) of the rank-th smallest, from 0."""
    seen = 0
    for bucket, count in counts:
        seen += count
        if rank < seen:
            return bucket_value(bucket)
    return bucket_value(counts[-1][0])


def added(first: Sequence[int] | None, second: Sequence[int] | None) -> list[int] | None:
    """Two histograms added up bucket by bucket (None: no values)."""
    if not first or not second:
        return list(first or second or ()) or None
    counts: dict[int, int] = {}
    for entry in (*first, *second):
        counts[entry & 1023] = counts.get(entry & 1023, 0) + (entry >> 10)
    return [count * 1024 + bucket for bucket, count in sorted(counts.items())]
