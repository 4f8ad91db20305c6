"""Prometheus metrics of the gateway (per replica), beside the common HTTP ones."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from common.metrics import registry_for

REGISTRY = registry_for("gateway")

# 429s of the gateway's own budgets; a 429 passed through from a service (auth's login
# throttling) is only in gateway_http_requests_total.
RATE_LIMITED = Counter(
    "gateway_rate_limited_requests_total",
    "Requests refused by the gateway's rate limits, by budget: default, model (a role's "
    "limit or the rpm_limit of a key, user or team), anonymous, invalid_api_keys (per "
    "client address) or in_flight (a caller's share of an upstream's connections).",
    ("budget",),
    registry=REGISTRY,
)

# Refreshed by the gateway's background probe (gateway/upstream_health.py), not per request.
UPSTREAM_UP = Gauge(
    "gateway_upstream_up",
    "Whether the upstream (auth, inference, embeddings, telemetry) answered its last "
    "readiness probe from this replica: 1 yes, 0 no.",
    ("upstream",),
    registry=REGISTRY,
)
