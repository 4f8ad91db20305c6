"""Prometheus metrics of the inference service (per replica).

Label values are bounded whatever callers send: `model` is a priced model, one that
answered (INFERENCE_METRICS_MAX_MODELS of them at most) or `other`, and `provider` one of
the providers or `other` (events.MetricLabels)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from common.metrics import LATENCY_BUCKETS, registry_for

REGISTRY = registry_for("inference")

LLM_REQUESTS = Counter(
    "inference_llm_requests_total",
    "LLM calls, by provider, model and outcome.",
    ("provider", "model", "status"),
    registry=REGISTRY,
)
LLM_TOKENS = Counter(
    "inference_llm_tokens_total",
    "Tokens of LLM calls, by type (prompt or completion).",
    ("provider", "model", "type"),
    registry=REGISTRY,
)
LLM_COST = Counter(
    "inference_llm_cost_usd_total",
    "Cost of LLM calls in USD (models with a known price).",
    ("provider", "model"),
    registry=REGISTRY,
)
LLM_UNPRICED = Counter(
    "inference_llm_unpriced_requests_total",
    "Successful LLM calls whose model has no price (their cost is unknown: give it one with "
    "PUT /v1/providers/prices/{model}), by provider and model.",
    ("provider", "model"),
    registry=REGISTRY,
)
LLM_DURATION = Histogram(
    "inference_llm_request_duration_seconds",
    "Duration of LLM calls, retries and fallbacks included.",
    ("provider", "model"),
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
LLM_TTFT = Histogram(
    "inference_llm_time_to_first_token_seconds",
    "Time to the first streamed chunk.",
    ("provider", "model"),
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
CIRCUIT_SKIPS = Counter(
    "inference_circuit_skips_total",
    "Targets skipped because the circuit of their model and credential was open, by provider.",
    ("provider",),
    registry=REGISTRY,
)
TELEMETRY_BUFFERED = Gauge(
    "inference_telemetry_buffered_events",
    "Call events waiting in memory for Redis.",
    registry=REGISTRY,
)
TELEMETRY_DROPPED = Counter(
    "inference_telemetry_dropped_events_total",
    "Call events dropped because the in-memory buffer was full while Redis was away.",
    registry=REGISTRY,
)
CACHE_ANSWERS = Counter(
    "inference_cache_answers_total",
    "Chat answers by what the response cache did (the X-Cache header): hit-exact, "
    "hit-semantic, miss, bypass.",
    ("result",),
    registry=REGISTRY,
)
CACHE_FAILURES = Counter(
    "inference_cache_failures_total",
    "Response-cache operations that failed or ran out of time (each a miss or an unstored "
    "answer, never an error), by operation (lookup, store, clear).",
    ("operation",),
    registry=REGISTRY,
)
CACHE_EVICTIONS = Counter(
    "inference_cache_evictions_total",
    "Exact-cache entries evicted to keep a scope under INFERENCE_CACHE_MAX_SCOPE_BYTES.",
    registry=REGISTRY,
)
