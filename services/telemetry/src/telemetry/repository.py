"""Every query of the telemetry service."""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    ARRAY,
    Date,
    DateTime,
    Double,
    Row,
    String,
    and_,
    cast,
    func,
    literal,
    select,
    text,
    tuple_,
)
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlmodel import col

from telemetry.models import DeadLetter, LlmCall

Db = AsyncSession | AsyncConnection
SCHEMA = "telemetry"
PARENT = "llm_call"
USAGE_WORK_MEM = "64MB"
PARTITION_NAME = re.compile(r"^llm_call_p(\d{4})(\d{2})$")

# The columns a writer fills, with their Postgres types (received_at is the default).
CALL_COLUMNS: tuple[tuple[str, str], ...] = (
    ("occurred_at", "timestamptz"), ("id", "uuid"), ("user_id", "uuid"),
    ("api_key_id", "text"), ("operation", "text"), ("provider", "text"), ("model", "text"),
    ("alias", "text"), ("status", "text"), ("error_type", "text"), ("prompt_tokens", "int4"),
    ("completion_tokens", "int4"), ("usage_estimated", "bool"), ("cost_usd", "numeric"),
    ("latency_ms", "float8"), ("ttft_ms", "float8"), ("stream", "bool"), ("attempts", "int2"),
    ("fallback", "bool"), ("trace_id", "text"),
)  # fmt: skip
# One statement for any number of rows, from one JSON text: the validated events as
# pydantic writes them (telemetry.service.EVENTS), read by Postgres's json_to_recordset
# (in C, several times cheaper than encoding 20 arrays of Python values). A call already
# stored (same time and id) is skipped. Built from the constants above only.
_INSERT_CALLS = text(
    f"INSERT INTO {SCHEMA}.{PARENT} (source, {', '.join(name for name, _ in CALL_COLUMNS)}) "  # noqa: S608
    f"SELECT CAST(:source AS text), {', '.join(f'e.{name}' for name, _ in CALL_COLUMNS)} "
    "FROM json_to_recordset(CAST(:events AS json)) AS e("
    + ", ".join(f"{name} {kind}" for name, kind in CALL_COLUMNS)
    + ") ON CONFLICT DO NOTHING"
)


async def insert_calls(db: Db, events: bytes, *, source: str) -> int:
    """Store calls given as a JSON array of objects with CALL_COLUMNS; returns how many
    were new."""
    result = await db.execute(_INSERT_CALLS, {"events": events.decode(), "source": source})
    return int(result.rowcount)  # type: ignore[attr-defined]


async def insert_dead_letters(db: Db, letters: Sequence[tuple[str, str, str]]) -> None:
    """(stream id, payload, reason) each; an entry dead-lettered before is skipped."""
    await db.execute(
        pg_insert(DeadLetter)
        .values([{"stream_id": s, "payload": p, "reason": r} for s, p, r in letters])
        .on_conflict_do_nothing(index_elements=["stream_id"])
    )


async def dead_letters(db: Db, *, limit: int = 100) -> Sequence[Row[Any]]:
    """The latest dead letters: stream_id, received_at, reason, payload."""
    query = (
        select(
            col(DeadLetter.stream_id),
            col(DeadLetter.received_at),
            col(DeadLetter.reason),
            col(DeadLetter.payload),
        )
        .order_by(col(DeadLetter.id).desc())
        .limit(limit)
    )
    return (await db.execute(query)).all()


async def delete_dead_letters_before(db: Db, *, horizon: datetime) -> None:
    await db.execute(
        DeadLetter.__table__.delete().where(col(DeadLetter.received_at) < horizon)  # type: ignore[attr-defined]
    )


# ---------------------------------------------------------------- partitions


def partition_name(month: date) -> str:
    return f"{PARENT}_p{month.year:04d}{month.month:02d}"


async def lock_partitions(db: Db) -> None:
    """Partition DDL of all replicas one at a time, and never waiting long for the table."""
    await db.execute(text("SELECT pg_advisory_xact_lock(hashtext('telemetry:partitions'))"))
    await db.execute(text("SET LOCAL lock_timeout = '5s'"))


async def partition_months(db: Db) -> list[date]:
    """The first day of each month that has a partition (ours: named llm_call_pYYYYMM)."""
    rows = await db.execute(
        text(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = CAST(:parent AS regclass)"
        ),
        {"parent": f"{SCHEMA}.{PARENT}"},
    )
    months = []
    for (name,) in rows:
        match = PARTITION_NAME.match(name)
        if match:
            months.append(date(int(match[1]), int(match[2]), 1))
    return sorted(months)


async def create_partition(db: Db, *, month: date, until: date) -> None:
    # DDL takes no parameters; both bounds are dates we computed, never caller input.
    await db.execute(
        text(
            f"CREATE TABLE IF NOT EXISTS {SCHEMA}.{partition_name(month)} "
            f"PARTITION OF {SCHEMA}.{PARENT} "
            f"FOR VALUES FROM ('{month.isoformat()} 00:00:00+00') "
            f"TO ('{until.isoformat()} 00:00:00+00')"
        )
    )


async def drop_partition(db: Db, *, month: date) -> None:
    await db.execute(text(f"DROP TABLE IF EXISTS {SCHEMA}.{partition_name(month)}"))


# ---------------------------------------------------------------- queries


@dataclass(frozen=True)
class Scope:
    """Which calls a query sees: a time range [start, end), one user's or everyone's."""

    start: datetime
    end: datetime
    user_id: uuid.UUID | None  # None: everyone's (only for telemetry:read_all)
    model: str | None = None
    status: str | None = None

    def conditions(self) -> list[Any]:
        found = [col(LlmCall.occurred_at) >= self.start, col(LlmCall.occurred_at) < self.end]
        if self.user_id is not None:
            found.append(col(LlmCall.user_id) == self.user_id)
        if self.model is not None:
            found.append(col(LlmCall.model) == self.model)
        if self.status is not None:
            found.append(col(LlmCall.status) == self.status)
        return found


def _group_key(group_by: str) -> Any:
    if group_by == "day":
        return cast(func.timezone("UTC", col(LlmCall.occurred_at)), Date)
    if group_by == "user":
        return col(LlmCall.user_id)
    return col(LlmCall.model) if group_by == "model" else col(LlmCall.provider)


async def usage(db: Db, *, scope: Scope, group_by: str) -> Sequence[Row[Any]]:
    """Per group: requests, errors, tokens, exact cost, latency p50/p95, TTFT p50.

    The rows are sorted by group, then each group's latencies: enough memory for that
    to stay off disk (for this transaction only)."""
    await db.execute(text(f"SET LOCAL work_mem = '{USAGE_WORK_MEM}'"))
    key = _group_key(group_by).label("key")
    # One sort for both latency percentiles: percentile_cont over an array of fractions.
    latency = func.percentile_cont(cast([0.5, 0.95], ARRAY(Double))).within_group(
        col(LlmCall.latency_ms)
    )
    query = (
        select(
            key,
            func.count().label("requests"),
            func.count().filter(col(LlmCall.status) != "ok").label("errors"),
            func.coalesce(func.sum(col(LlmCall.prompt_tokens)), 0).label("prompt_tokens"),
            func.coalesce(func.sum(col(LlmCall.completion_tokens)), 0).label("completion_tokens"),
            func.coalesce(func.sum(col(LlmCall.cost_usd)), 0).label("cost_usd"),
            latency.label("latency_ms_p50_p95"),
            func.percentile_cont(0.5).within_group(col(LlmCall.ttft_ms)).label("ttft_ms_p50"),
        )
        .where(*scope.conditions())
        .group_by(key)
    )
    if group_by == "day":
        query = query.order_by(key)
    else:
        query = query.order_by(func.count().desc(), cast(key, String))
    return (await db.execute(query)).all()


async def calls_page(
    db: Db, *, scope: Scope, before: tuple[datetime, uuid.UUID] | None, limit: int
) -> Sequence[LlmCall]:
    """Newest first, strictly older than `before` (keyset: time, then id)."""
    conditions = scope.conditions()
    if before is not None:
        conditions.append(
            tuple_(col(LlmCall.occurred_at), col(LlmCall.id))
            < tuple_(literal(before[0], DateTime(timezone=True)), literal(before[1], UUID))
        )
    query = (
        select(LlmCall)
        .where(and_(*conditions))
        .order_by(col(LlmCall.occurred_at).desc(), col(LlmCall.id).desc())
        .limit(limit)
    )
    return (await db.execute(query)).scalars().all()
