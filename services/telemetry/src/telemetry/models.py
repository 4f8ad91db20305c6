"""Tables of the telemetry service, all in the `telemetry` schema."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    ARRAY,
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    Double,
    Identity,
    Index,
    Integer,
    Numeric,
    SmallInteger,
    String,
    Table,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.types import UserDefinedType
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
        # A key's and a team's spend since a time (POST /internal/spend, read with the cost
        # from the index alone), a team's usage and call list (migration telemetry_0004).
        Index(
            "ix_llm_call_api_key_id_occurred_at",
            "api_key_id",
            "occurred_at",
            postgresql_include=["cost_usd"],
            postgresql_where=text("api_key_id IS NOT NULL"),
        ),
        Index(
            "ix_llm_call_team_id_occurred_at",
            "team_id",
            "occurred_at",
            "id",
            postgresql_include=["cost_usd"],
            postgresql_where=text("team_id IS NOT NULL"),
        ),
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
    # The team of the API key the call was made with (auth's team id; no foreign key).
    team_id: uuid.UUID | None = Field(default=None, sa_column=Column(UUID(as_uuid=True)))
    operation: str = Field(sa_column=Column(String(32), nullable=False))
    provider: str = Field(sa_column=Column(String(32), nullable=False))
    model: str = Field(sa_column=Column(String(300), nullable=False))
    alias: str | None = Field(default=None, sa_column=Column(String(200)))
    status: str = Field(sa_column=Column(String(32), nullable=False))
    error_type: str | None = Field(default=None, sa_column=Column(String(100)))
    prompt_tokens: int | None = Field(default=None, sa_column=Column(Integer))
    completion_tokens: int | None = Field(default=None, sa_column=Column(Integer))
    # Parts of the two above (migration telemetry_0005): null when the provider did not
    # report them, and for the calls stored before.
    cached_prompt_tokens: int | None = Field(default=None, sa_column=Column(Integer))
    reasoning_tokens: int | None = Field(default=None, sa_column=Column(Integer))
    usage_estimated: bool = Field(sa_column=Column(Boolean, nullable=False))
    cost_usd: Decimal | None = Field(default=None, sa_column=Column(Numeric(18, 9)))
    latency_ms: float = Field(sa_column=Column(Double, nullable=False))
    ttft_ms: float | None = Field(default=None, sa_column=Column(Double))
    stream: bool = Field(sa_column=Column(Boolean, nullable=False))
    attempts: int = Field(sa_column=Column(SmallInteger, nullable=False))
    fallback: bool = Field(sa_column=Column(Boolean, nullable=False))
    trace_id: str | None = Field(default=None, sa_column=Column(String(32)))
    # A response-cache hit (migration telemetry_0006): "exact" or "semantic", and what the
    # provider would have charged for the replayed answer (its own cost_usd is 0). Null: not
    # a hit, and the calls stored before.
    cache: str | None = Field(default=None, sa_column=Column(String(16)))
    saved_usd: Decimal | None = Field(default=None, sa_column=Column(Numeric(18, 9)))


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


class Xid8(UserDefinedType[str]):
    """Postgres `xid8`: a 64-bit transaction id (compared in SQL only)."""

    cache_ok = True

    def get_col_spec(self, **_: Any) -> str:
        return "xid8"


class UsageDayEpoch(TelemetryBase, table=True):
    """The version of one UTC day's calls: a new one (from the sequence usage_day_epoch_seq,
    so never a value seen before) whenever a statement writes rows of that day after it
    ended (triggers on `llm_call`, migration telemetry_0003)."""

    __tablename__ = "usage_day_epoch"

    day: date = Field(sa_column=Column(Date, primary_key=True, nullable=False))
    epoch: int = Field(sa_column=Column(BigInteger, nullable=False))
    # A transaction id taken after the day ended (by the database clock): a snapshot whose
    # xmin is above it has seen every writer that skipped the bump finish.
    closed_xid: str | None = Field(default=None, sa_column=Column(Xid8()))


class UsageDay(TelemetryBase, table=True):
    """One closed UTC day's `group_by=day` usage for one scope, valid while `epoch` is the
    day's current epoch. `requests` 0: the day has no calls in that scope."""

    __tablename__ = "usage_day"

    scope: str = Field(sa_column=Column(Text, primary_key=True, nullable=False))
    day: date = Field(sa_column=Column(Date, primary_key=True, nullable=False, index=True))
    epoch: int = Field(sa_column=Column(BigInteger, nullable=False))
    requests: int = Field(sa_column=Column(BigInteger, nullable=False))
    errors: int = Field(sa_column=Column(BigInteger, nullable=False))
    prompt_tokens: int = Field(sa_column=Column(BigInteger, nullable=False))
    completion_tokens: int = Field(sa_column=Column(BigInteger, nullable=False))
    cached_prompt_tokens: int = Field(sa_column=Column(BigInteger, nullable=False))
    reasoning_tokens: int = Field(sa_column=Column(BigInteger, nullable=False))
    cost_usd: Decimal = Field(sa_column=Column(Numeric, nullable=False))
    unpriced_calls: int = Field(sa_column=Column(BigInteger, nullable=False))
    cache_hits: int = Field(sa_column=Column(BigInteger, nullable=False))
    saved_usd: Decimal = Field(sa_column=Column(Numeric, nullable=False))
    latency_ms_p50: float | None = Field(default=None, sa_column=Column(Double))
    latency_ms_p95: float | None = Field(default=None, sa_column=Column(Double))
    ttft_ms_p50: float | None = Field(default=None, sa_column=Column(Double))
    computed_at: datetime | None = Field(
        default=None,
        sa_column=Column(DateTime(timezone=True), nullable=False, server_default=func.now()),
    )


def _rollup(unit: str) -> Table:
    """What adds up of one UTC `unit`'s (hour's or day's) calls of one (user, key, team,
    model, provider, status): kept by triggers on `llm_call` in the writer's transaction
    (migration telemetry_0007), so in any snapshot it equals the aggregate of the calls:
    each figure is the cell's calls' count or `coalesce(sum(x), 0)`, exactly (`cost_usd`:
    of the `priced_calls`, `saved_usd`: of the `saved_calls`, scale kept). `period` is the
    hour's or the day's start. With the histograms of the calls' latencies and TTFTs
    (telemetry.histograms), added up the same way. No primary key: the unique index
    (nulls not distinct) is the cell's identity."""
    table = f"rollup_{unit}"
    return Table(
        table,
        TelemetryBase.metadata,
        Column("period", DateTime(timezone=True), nullable=False),
        Column("user_id", UUID(as_uuid=True)),
        Column("api_key_id", String(64)),
        Column("team_id", UUID(as_uuid=True)),
        Column("model", String(300), nullable=False),
        Column("provider", String(32), nullable=False),
        Column("status", String(32), nullable=False),
        *(Column(name, BigInteger, nullable=False) for name in ROLLUP_COUNTS),
        Column("cost_usd", Numeric, nullable=False),
        Column("saved_usd", Numeric, nullable=False),
        *(
            Column(name, ARRAY(BigInteger), nullable=False, server_default=text("'{}'"))
            for name in ROLLUP_HISTOGRAMS
        ),
        Index(
            f"ux_{table}_cell",
            *ROLLUP_DIMENSIONS,
            unique=True,
            postgresql_nulls_not_distinct=True,
        ),
        Index(f"ix_{table}_user_id_period", "user_id", "period"),
        *(
            Index(
                f"ix_{table}_{column}_period",
                column,
                "period",
                postgresql_where=text(f"{column} IS NOT NULL"),
            )
            for column in ("api_key_id", "team_id")
        ),
    )


ROLLUP_DIMENSIONS = ("period", "user_id", "api_key_id", "team_id", "model", "provider", "status")
ROLLUP_COUNTS = (
    "requests", "unpriced_calls", "priced_calls", "prompt_tokens", "completion_tokens",
    "cached_prompt_tokens", "reasoning_tokens", "cache_hits", "saved_calls",
)  # fmt: skip
# Log-bucketed histograms of the latencies and the TTFTs (telemetry.histograms).
ROLLUP_HISTOGRAMS = ("latency_ms_histogram", "ttft_ms_histogram")
ROLLUP_HOUR = _rollup("hour")
ROLLUP_DAY = _rollup("day")
