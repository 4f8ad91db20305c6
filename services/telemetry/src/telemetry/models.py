"""Tables of the telemetry service, all in the `telemetry` schema."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Double,
    Identity,
    Index,
    Integer,
    Numeric,
    SmallInteger,
    String,
    Text,
    func,
)
from sqlalchemy.dialects.postgresql import UUID
from sqlmodel import Field, SQLModel

from common.db import schema_registry


class TelemetryBase(SQLModel, registry=schema_registry("telemetry")):
    """Base of every telemetry table: `schema="telemetry"` and our naming convention."""


class LlmCall(TelemetryBase, table=True):
    """One LLM call. Partitioned by month on `occurred_at` (partitions are made by the
    service, see partitions.py); the partition key is part of the primary key, and an event
    keeps its id and time, so a redelivered event conflicts and is skipped."""

    __tablename__ = "llm_call"
    __table_args__ = (
        # Members' usage and call list: their rows in a time range, newest first.
        Index("ix_llm_call_user_id_occurred_at", "user_id", "occurred_at", "id"),
        {"postgresql_partition_by": "RANGE (occurred_at)"},
    )

    occurred_at: datetime = Field(
        sa_column=Column(DateTime(timezone=True), primary_key=True, nullable=False)
    )
    id: uuid.UUID = Field(sa_column=Column(UUID(as_uuid=True), primary_key=True, nullable=False))
    received_at: datetime | None = Field(
        default=None,
        sa_column=Column(DateTime(timezone=True), nullable=False, server_default=func.now()),
    )
    source: str = Field(sa_column=Column(String(8), nullable=False))  # "stream" or "api"
    user_id: uuid.UUID | None = Field(default=None, sa_column=Column(UUID(as_uuid=True)))
    api_key_id: str | None = Field(default=None, sa_column=Column(String(64)))
    operation: str = Field(sa_column=Column(String(32), nullable=False))
    provider: str = Field(sa_column=Column(String(32), nullable=False))
    model: str = Field(sa_column=Column(String(300), nullable=False))
    alias: str | None = Field(default=None, sa_column=Column(String(200)))
    status: str = Field(sa_column=Column(String(32), nullable=False))
    error_type: str | None = Field(default=None, sa_column=Column(String(100)))
    prompt_tokens: int | None = Field(default=None, sa_column=Column(Integer))
    completion_tokens: int | None = Field(default=None, sa_column=Column(Integer))
    usage_estimated: bool = Field(sa_column=Column(Boolean, nullable=False))
    cost_usd: Decimal | None = Field(default=None, sa_column=Column(Numeric(18, 9)))
    latency_ms: float = Field(sa_column=Column(Double, nullable=False))
    ttft_ms: float | None = Field(default=None, sa_column=Column(Double))
    stream: bool = Field(sa_column=Column(Boolean, nullable=False))
    attempts: int = Field(sa_column=Column(SmallInteger, nullable=False))
    fallback: bool = Field(sa_column=Column(Boolean, nullable=False))
    trace_id: str | None = Field(default=None, sa_column=Column(String(32)))


class DeadLetter(TelemetryBase, table=True):
    """A stream entry that failed validation: kept with the reason, acknowledged, skipped."""

    __tablename__ = "dead_letter"

    id: int | None = Field(
        default=None, sa_column=Column(BigInteger, Identity(always=True), primary_key=True)
    )
    received_at: datetime | None = Field(
        default=None,
        sa_column=Column(DateTime(timezone=True), nullable=False, server_default=func.now()),
    )
    # The stream entry id: one row per entry however often it is delivered.
    stream_id: str = Field(sa_column=Column(String(41), nullable=False, unique=True))
    payload: str = Field(sa_column=Column(Text, nullable=False))
    reason: str = Field(sa_column=Column(Text, nullable=False))
