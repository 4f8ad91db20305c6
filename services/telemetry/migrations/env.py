"""Alembic environment of the telemetry service."""

from common.migrations import run_env
from telemetry import models
from telemetry.settings import TelemetrySettings

run_env(models.TelemetryBase.metadata, default_url=TelemetrySettings().database_url)
