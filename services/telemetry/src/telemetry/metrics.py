"""Prometheus metrics of the telemetry service (per replica)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from common.metrics import LATENCY_BUCKETS, registry_for

REGISTRY = registry_for("telemetry")

INGESTED = Counter(
    "telemetry_ingested_events_total",
    "Call events stored (new rows), by source: the Redis stream or POST /v1/events.",
    ("source",),
    registry=REGISTRY,
)
DUPLICATES = Counter(
    "telemetry_duplicate_events_total",
    "Call events delivered again (or reported twice) and skipped: already stored.",
    ("source",),
    registry=REGISTRY,
)
DEAD_LETTERS = Counter(
    "telemetry_dead_letters_total",
    "Stream entries that failed validation, kept in telemetry.dead_letter and acknowledged.",
    registry=REGISTRY,
)
STREAM_LAG = Gauge(
    "telemetry_stream_lag_events",
    "Stream entries not yet stored: pending (delivered, unacknowledged) plus undelivered.",
    registry=REGISTRY,
)
BATCH_SIZE = Histogram(
    "telemetry_batch_size",
    "Events per write to Postgres.",
    ("source",),
    buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 5000, 10_000, 20_000),
    registry=REGISTRY,
)
WRITE_DURATION = Histogram(
    "telemetry_write_duration_seconds",
    "Time to store one batch (the transaction, commit included).",
    ("source",),
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
