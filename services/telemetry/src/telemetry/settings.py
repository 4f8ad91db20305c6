"""Configuration of the telemetry service (environment variables prefixed `TELEMETRY_`)."""

from __future__ import annotations

from typing import ClassVar

from pydantic_settings import SettingsConfigDict

from common.settings import DatabaseSettings


class TelemetrySettings(DatabaseSettings):
    model_config = SettingsConfigDict(env_prefix="TELEMETRY_")

    service_name: ClassVar[str] = "telemetry"
    default_port: ClassVar[int] = 8004
