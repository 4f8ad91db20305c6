"""Configuration of the telemetry service (environment variables prefixed `TELEMETRY_`)."""

from __future__ import annotations

import os
import socket
from typing import ClassVar

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from common.settings import DatabaseSettings


class TelemetrySettings(DatabaseSettings):
    model_config = SettingsConfigDict(env_prefix="TELEMETRY_")

    service_name: ClassVar[str] = "telemetry"
    default_port: ClassVar[int] = 8004

    # Calls are kept at least this long; whole monthly partitions are dropped past it.
    retention_days: int = Field(90, ge=1, le=36_500)
    # The stream consumer runs in every replica unless turned off (API-only replicas).
    consumer_enabled: bool = True
    consumer_group: str = "telemetry"
    # Unique per replica: two consumers with one name would share one pending list.
    consumer_name: str = Field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    # Consumers per replica (named consumer_name-1, -2, ...): while one waits for Postgres
    # or Redis, another parses its batch.
    consumers: int = Field(2, ge=1, le=16)
    # Entries read (and written to Postgres) at a time, and how long one read waits.
    batch_size: int = Field(2000, ge=1, le=20_000)
    read_block_ms: int = Field(1000, ge=1, le=4000)  # below the Redis socket timeout (5 s)
    # With spans recorded, the first this many sampled calls of a batch get a span in their
    # trace. A larger batch is a backlog draining: a span per call would double its CPU and
    # overflow the span exporter's queue (2,048 spans; a warning logged per span dropped).
    traced_calls_per_batch: int = Field(128, ge=0, le=20_000)
    # An entry another consumer has held unacknowledged this long is taken over (XAUTOCLAIM).
    claim_idle_seconds: float = Field(30.0, gt=0)
    # How often the stream is trimmed below what every group has acknowledged (and the lag
    # gauge refreshed), and how often partitions are created ahead and retention applied.
    trim_interval_seconds: float = Field(1.0, gt=0)
    maintenance_interval_seconds: float = Field(3600.0, gt=0)
    # How often everyone's usage of the closed days of the last 31 days is computed into
    # the per-day cache where it is missing or stale (one replica at a time); 0: never
    # (this replica leaves it to others, or to the queries themselves).
    usage_cache_refresh_seconds: float = Field(30.0, ge=0)
    # Auth, asked whether a caller owns the team whose calls they ask for (`team=`).
    auth_url: str = "http://127.0.0.1:8001"
