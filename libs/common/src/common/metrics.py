"""Prometheus: one registry per service in the process, HTTP metrics by route template."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)


@dataclass(frozen=True)
class HttpMetrics:
    requests: Counter
    duration: Histogram
    in_flight: Gauge


_lock = threading.Lock()
_registries: dict[str, CollectorRegistry] = {}
_http: dict[str, HttpMetrics] = {}


def registry_for(service: str) -> CollectorRegistry:
    """The service's registry: its own metrics plus process and platform facts."""
    with _lock:
        registry = _registries.get(service)
        if registry is None:
            registry = CollectorRegistry()
            ProcessCollector(registry=registry)
            PlatformCollector(registry=registry)
            _registries[service] = registry
        return registry


def http_metrics(service: str) -> HttpMetrics:
    registry = registry_for(service)
    with _lock:
        metrics = _http.get(service)
        if metrics is None:
            labels = ("route", "method", "status")
            metrics = HttpMetrics(
                requests=Counter(
                    f"{service}_http_requests_total",
                    "HTTP requests handled, by route template, method and status.",
                    labels,
                    registry=registry,
                ),
                duration=Histogram(
                    f"{service}_http_request_duration_seconds",
                    "Time to the end of the response, by route template, method and status.",
                    labels,
                    buckets=LATENCY_BUCKETS,
                    registry=registry,
                ),
                # Per replica; inference's HorizontalPodAutoscaler scales on it (deploy/k8s).
                in_flight=Gauge(
                    f"{service}_http_requests_in_flight",
                    "Requests being handled (open streams included), probes and scrapes excluded.",
                    registry=registry,
                ),
            )
            _http[service] = metrics
        return metrics


def render(service: str) -> tuple[bytes, str]:
    return generate_latest(registry_for(service)), CONTENT_TYPE_LATEST
