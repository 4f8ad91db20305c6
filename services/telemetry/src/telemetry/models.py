"""Tables of the telemetry service, all in the `telemetry` schema."""

from __future__ import annotations

from sqlmodel import SQLModel

from common.db import schema_registry


class TelemetryBase(SQLModel, registry=schema_registry("telemetry")):
    """Base of every telemetry table: `schema="telemetry"` and our naming convention."""
