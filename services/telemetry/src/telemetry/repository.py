"""Every query of the telemetry service."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    ARRAY,
    BigInteger,
    Date,
    DateTime,
    Double,
    Row,
    String,
    and_,
    any_,
    case,
    cast,
    func,
    literal,
    or_,
    select,
    text,
    tuple_,
    type_coerce,
    union_all,
)
from sqlalchemy.dialects.postgresql import UUID, aggregate_order_by, array
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession
from sqlalchemy.sql import Subquery
from sqlmodel import col

from telemetry.models import (
    ROLLUP_DAY,
    ROLLUP_HISTOGRAMS,
    ROLLUP_HOUR,
    DeadLetter,
    LlmCall,
    UsageDay,
    UsageDayEpoch,
)

Db = AsyncSession | AsyncConnection
SCHEMA = "telemetry"
PARENT = "llm_call"
USAGE_WORK_MEM = "64MB"
PARTITION_NAME = re.compile(r"^llm_call_p(\d{4})(\d{2})$")

# The columns a writer fills, with their Postgres types (received_at is the default).
CALL_COLUMNS: tuple[tuple[str, str], ...] = (
    ("occurred_at", "timestamptz"), ("id", "uuid"), ("user_id", "uuid"),
    ("api_key_id", "text"), ("team_id", "uuid"), ("operation", "text"), ("provider", "text"),
    ("model", "text"), ("alias", "text"), ("status", "text"), ("error_type", "text"),
    ("prompt_tokens", "int4"), ("completion_tokens", "int4"), ("usage_estimated", "bool"),
    ("cost_usd", "numeric"), ("latency_ms", "float8"), ("ttft_ms", "float8"),
    ("stream", "bool"), ("attempts", "int2"), ("fallback", "bool"), ("trace_id", "text"),
    ("cached_prompt_tokens", "int4"), ("reasoning_tokens", "int4"), ("cache", "text"),
    ("saved_usd", "numeric"),
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


@asynccontextmanager
async def autocommit(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A connection on which every statement commits on its own, for a unit of work that
    is one statement: a batch of calls from the stream without dead letters (insert_calls).

    The one exception to common.db.transaction in this service, for ingestion speed: no
    BEGIN and COMMIT round trips, nor a Session. Measured (service.store of a batch, the
    consumer's CPU per batch, best of 3, load 6-8): 1 event 0.49 ms here against 0.70 ms
    in common.db.transaction, 100 events 0.68 against 0.96 ms. At low rates most batches
    hold one or two events (bench/README.md, "Telemetry")."""
    async with engine.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        yield conn


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


async def drop_partition(db: Db, *, month: date, until: date) -> None:
    """Drop a month's calls, and their hours and days from the rollups (no trigger fires
    on DROP)."""
    for rollup in (ROLLUP_HOUR, ROLLUP_DAY):
        await db.execute(
            rollup.delete().where(
                rollup.c.period >= datetime(month.year, month.month, month.day, tzinfo=UTC),
                rollup.c.period < datetime(until.year, until.month, until.day, tzinfo=UTC),
            )
        )
    await db.execute(text(f"DROP TABLE IF EXISTS {SCHEMA}.{partition_name(month)}"))


# ---------------------------------------------------------------- queries


@dataclass(frozen=True)
class Scope:
    """Which calls a query sees: a time range [start, end), one user's or everyone's, one
    team's or any team's (telemetry.service.scope_for decides)."""

    start: datetime
    end: datetime
    user_id: uuid.UUID | None  # None: every user's (telemetry:read_all, or a team's owner)
    model: str | None = None
    status: str | None = None
    team_id: uuid.UUID | None = None  # None: whatever team (or none)

    def conditions(self) -> list[Any]:
        return [
            col(LlmCall.occurred_at) >= self.start,
            col(LlmCall.occurred_at) < self.end,
            *self.filters(),
        ]

    def filters(self) -> list[Any]:
        """Whose calls and which: the conditions but the time range."""
        found = []
        if self.user_id is not None:
            found.append(col(LlmCall.user_id) == self.user_id)
        if self.team_id is not None:
            found.append(col(LlmCall.team_id) == self.team_id)
        if self.model is not None:
            found.append(col(LlmCall.model) == self.model)
        if self.status is not None:
            found.append(col(LlmCall.status) == self.status)
        return found

    def key(self) -> str:
        """Whose calls and which filters, not when, as canonical text: the `scope` of the
        cached per-day results (null: no filter, so no model name can collide with it).
        Every condition of `filters` is in it, so two scopes with one key see the same
        calls: an owner's and an admin's view of one team share their days, a member's
        view of the team (their own calls in it) has a key of its own."""
        fields = {
            "user": None if self.user_id is None else str(self.user_id),
            "team": None if self.team_id is None else str(self.team_id),
            "model": self.model,
            "status": self.status,
        }
        return json.dumps(fields, sort_keys=True, separators=(",", ":"))


# The UTC day of a call: what group_by=day groups by, and what the usage_day triggers use.
CALL_DAY = cast(func.timezone("UTC", col(LlmCall.occurred_at)), Date)


GROUP_KEYS: dict[str, Any] = {
    "day": CALL_DAY,
    "user": col(LlmCall.user_id),
    "model": col(LlmCall.model),
    "provider": col(LlmCall.provider),
    "key": col(LlmCall.api_key_id),
    "team": col(LlmCall.team_id),
}


def _aggregates() -> list[Any]:
    """Per group: requests, errors, tokens (and the cached prompt and reasoning tokens among
    them), exact cost, the successful calls without a cost (their model has no price), the
    response-cache hits and the exact sum of what they saved, latency p50/p95, TTFT p50."""
    # One sort for both latency percentiles: percentile_cont over an array of fractions.
    latency = func.percentile_cont(cast([0.5, 0.95], ARRAY(Double))).within_group(
        col(LlmCall.latency_ms)
    )
    return [
        func.count().label("requests"),
        func.count().filter(col(LlmCall.status) != "ok").label("errors"),
        func.coalesce(func.sum(col(LlmCall.prompt_tokens)), 0).label("prompt_tokens"),
        func.coalesce(func.sum(col(LlmCall.completion_tokens)), 0).label("completion_tokens"),
        func.coalesce(func.sum(col(LlmCall.cached_prompt_tokens)), 0).label("cached_prompt_tokens"),
        func.coalesce(func.sum(col(LlmCall.reasoning_tokens)), 0).label("reasoning_tokens"),
        func.coalesce(func.sum(col(LlmCall.cost_usd)), 0).label("cost_usd"),
        func.count()
        .filter(col(LlmCall.status) == "ok", col(LlmCall.cost_usd).is_(None))
        .label("unpriced_calls"),
        func.count(col(LlmCall.cache)).label("cache_hits"),
        func.coalesce(func.sum(col(LlmCall.saved_usd)), 0).label("saved_usd"),
        latency.label("latency_ms_p50_p95"),
        func.percentile_cont(0.5).within_group(col(LlmCall.ttft_ms)).label("ttft_ms_p50"),
    ]


async def _sort_in_memory(db: Db) -> None:
    """The rows are sorted by group, then each group's latencies: enough memory for that
    to stay off disk (for this transaction only)."""
    await db.execute(text(f"SET LOCAL work_mem = '{USAGE_WORK_MEM}'"))


async def usage(db: Db, *, scope: Scope, group_by: str) -> Sequence[Row[Any]]:
    """Per group: the figures of `_aggregates`, from the calls themselves."""
    await _sort_in_memory(db)
    key = GROUP_KEYS[group_by].label("key")
    query = select(key, *_aggregates()).where(*scope.conditions()).group_by(key)
    if group_by == "day":
        query = query.order_by(key)
    else:
        query = query.order_by(func.count().desc(), cast(key, String))
    return (await db.execute(query)).all()


# ---------------------------------------------------------------- the rollups
#
# rollup_hour and rollup_day hold, per UTC hour and per UTC day and (user, key, team,
# model, provider, status), what adds up of the calls: kept by triggers in every writer's
# transaction (migration telemetry_0007), so in any snapshot they equal the aggregate of
# the calls seen. A range is read as its whole days from rollup_day, the whole hours
# around them from rollup_hour and the partial hours at either end (at most two) from the
# calls: exact, the same sums, scale included (each cell holds its calls'
# coalesce(sum(x), 0)), with at most two hours of calls read whatever the range.

ONE_HOUR = timedelta(hours=1)
ONE_DAY = timedelta(days=1)
_SUMMED = (
    "requests", "errors", "prompt_tokens", "completion_tokens", "cached_prompt_tokens",
    "reasoning_tokens", "cost_usd", "unpriced_calls", "cache_hits", "saved_usd",
)  # fmt: skip
_ROLLUPS = {"hour": ROLLUP_HOUR, "day": ROLLUP_DAY}


def _floor(moment: datetime, unit: str) -> datetime:
    utc = moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    return utc.replace(hour=0) if unit == "day" else utc


def _ceil(moment: datetime, unit: str) -> datetime:
    floor = _floor(moment, unit)
    return floor if floor == moment else floor + (ONE_HOUR if unit == "hour" else ONE_DAY)


def rollup_parts(start: datetime, end: datetime) -> list[tuple[str, datetime, datetime]]:
    """[start, end) cut into parts read from "day" (whole UTC days), "hour" (whole UTC
    hours) or "calls" (the partial hours at either end), in time order."""
    first_hour, last_hour = _ceil(start, "hour"), _floor(end, "hour")
    if first_hour >= last_hour:
        return [("calls", start, end)] if start < end else []
    first_day, last_day = _ceil(first_hour, "day"), _floor(last_hour, "day")
    if first_day < last_day:
        middle = [("hour", first_hour, first_day), ("day", first_day, last_day),
                  ("hour", last_day, last_hour)]  # fmt: skip
    else:
        middle = [("hour", first_hour, last_hour)]
    parts = [("calls", start, first_hour), *middle, ("calls", last_hour, end)]
    return [(source, lo, hi) for source, lo, hi in parts if lo < hi]


def _rollup_cells(
    scope: Scope,
    group_by: str,
    unit: str,
    lo: datetime,
    hi: datetime,
    histograms: bool,
    skipped: Any = None,
) -> Any:
    """A rollup's cells of the periods in [lo, hi) in the scope: the group and the figures
    of `_SUMMED` (and the histograms); but the cells of the UTC days `skipped` (a
    subquery of days) gives."""
    r = _ROLLUPS[unit].c
    keys = {
        "day": cast(func.timezone("UTC", r.period), Date),
        "user": r.user_id,
        "model": r.model,
        "provider": r.provider,
        "key": r.api_key_id,
        "team": r.team_id,
    }
    filters = {"user_id": scope.user_id, "team_id": scope.team_id, "model": scope.model,
               "status": scope.status}  # fmt: skip
    return select(
        keys[group_by].label("key"),
        r.requests,
        case((r.status != "ok", r.requests), else_=0).label("errors"),
        *(r[name] for name in _SUMMED[2:]),
        *(r[name] for name in ROLLUP_HISTOGRAMS if histograms),
    ).where(
        r.period >= lo,
        r.period < hi,
        *(r[name] == value for name, value in filters.items() if value is not None),
        *([] if skipped is None else [keys["day"].not_in(skipped)]),
    )


def _call_sums(
    scope: Scope, group_by: str, ranges: Sequence[tuple[datetime, datetime]], histograms: bool
) -> Any:
    """The same figures from the calls of `ranges` (the partial hours), per group."""
    key = GROUP_KEYS[group_by]
    aggregates = {row.name: row for row in _aggregates() if row.name in _SUMMED}
    made = {
        "latency_ms_histogram": func.telemetry.histogram(
            func.array_agg(col(LlmCall.latency_ms)), 1
        ),
        "ttft_ms_histogram": func.telemetry.histogram(func.array_agg(col(LlmCall.ttft_ms)), 1),
    }
    return (
        select(
            key.label("key"),
            *(aggregates[name] for name in _SUMMED),
            *(made[name].label(name) for name in ROLLUP_HISTOGRAMS if histograms),
        )
        .where(
            or_(
                *(
                    and_(col(LlmCall.occurred_at) >= lo, col(LlmCall.occurred_at) < hi)
                    for lo, hi in ranges
                )
            ),
            *scope.filters(),
        )
        .group_by(key)
    )


async def usage_sums(
    db: Db,
    *,
    scope: Scope,
    group_by: str,
    histograms: bool = False,
    days: Sequence[date] = (),
    held: Mapping[date, int] | None = None,
) -> Sequence[Row[Any]]:
    """Per group, what adds up (`_SUMMED`), and with `histograms` the group's latency and
    TTFT histograms (`latency_ms_histogram`, `ttft_ms_histogram`: telemetry.histograms;
    null: no value): the range's whole days and hours from the rollups, its partial hours
    from the calls (rollup_parts), in one statement (one snapshot). The same groups,
    figures and order as `usage` gives.

    By day, `days` (closed UTC days wholly inside the range) are given a status each, in
    that snapshot: `day`, its `epoch` and `marked` (as usage_cache_probe), `storable` (as
    usage_days) and `served`: `held` (the caller's results of days, each with the epoch
    it was computed at) has the day at its current epoch, so its rollup_day cells are not
    read (its figures are null) and the caller answers it from what it holds. A row per
    group and per day of `days` (a day without calls has null figures), in day order."""
    pieces = rollup_parts(scope.start, scope.end)
    calls = [(lo, hi) for source, lo, hi in pieces if source == "calls"]
    status = _day_status(days, held or {}) if group_by == "day" and days else None
    skipped = None
    if status is not None and held:
        skipped = select(status.c.day).where(status.c.served).scalar_subquery()
    parts = [
        _rollup_cells(
            scope, group_by, source, lo, hi, histograms, skipped if source == "day" else None
        )
        for source, lo, hi in pieces
        if source != "calls"
    ]
    if calls or not parts:
        parts.append(_call_sums(scope, group_by, calls or [(scope.start, scope.start)], histograms))
    every = union_all(*parts).cte("parts")
    counts = {"cost_usd", "saved_usd"}
    summed = [
        (
            func.sum(every.c[name]) if name in counts else cast(func.sum(every.c[name]), BigInteger)
        ).label(name)
        for name in _SUMMED
    ]
    sums = select(every.c.key, *summed).group_by(every.c.key).subquery("sums")
    columns: list[Any] = [sums]
    joined: Any = sums
    if histograms:
        merged = _merged_histograms(every).subquery("merged")
        columns += [merged.c[name] for name in ROLLUP_HISTOGRAMS]
        # ARRAY[key] = ARRAY[key] holds for two null keys too (array equality), and hashes.
        joined = joined.outerjoin(merged, array([sums.c.key]) == array([merged.c.key]))
    if status is not None:
        columns += [status.c[name] for name in ("day", "epoch", "marked", "storable", "served")]
        joined = joined.outerjoin(status, sums.c.key == status.c.day, full=True)
    query = select(*columns).select_from(joined)
    if status is not None:
        query = query.order_by(func.coalesce(sums.c.key, status.c.day))
    elif group_by == "day":
        query = query.order_by(sums.c.key)
    else:
        query = query.order_by(sums.c.requests.desc(), cast(sums.c.key, String))
    return (await db.execute(query)).all()


def _day_status(days: Sequence[date], held: Mapping[date, int]) -> Subquery:
    """`status` of usage_sums: per day of `days`, its epoch, marked, storable, served."""
    d = _days(days)
    h = (
        func.unnest(cast(list(held), ARRAY(Date)), cast(list(held.values()), ARRAY(BigInteger)))
        .table_valued("day", "epoch")
        .render_derived("h")
    )
    xmin = func.pg_snapshot_xmin(func.pg_current_snapshot())
    return (
        select(
            d.c.day,
            _EPOCHS.c.epoch,
            _EPOCHS.c.closed_xid.is_not(None).label("marked"),
            func.coalesce(_EPOCHS.c.closed_xid < xmin, False).label("storable"),
            h.c.day.is_not(None).label("served"),
        )
        .select_from(
            d.outerjoin(_EPOCHS, _EPOCHS.c.day == d.c.day).outerjoin(
                h, and_(h.c.day == d.c.day, h.c.epoch == _EPOCHS.c.epoch)
            )
        )
        .subquery("status")
    )


def _merged_histograms(every: Any) -> Any:
    """Per group of the parts: each histogram column's entries added up bucket by bucket
    (one GROUP BY over all the entries, not a merge per cell; each histogram named by its
    index, an integer: 12 % faster to group by than its name)."""
    entries = union_all(
        *(
            # FROM parts, unnest(parts.<name>) AS e(entry): implicitly lateral.
            select(every.c.key, literal(index).label("histogram"), entry.c.entry).select_from(
                every, entry
            )
            for index, name in enumerate(ROLLUP_HISTOGRAMS)
            for entry in [
                func.unnest(every.c[name])
                .table_valued("entry", joins_implicitly=True)
                .render_derived("e")
            ]
        )
    ).subquery("entries")
    bucket = entries.c.entry.op("&")(1023)
    buckets = (
        select(
            entries.c.key,
            entries.c.histogram,
            bucket.label("bucket"),
            cast(func.sum(entries.c.entry.op(">>")(10)), BigInteger).label("n"),
        )
        .group_by(entries.c.key, entries.c.histogram, bucket)
        .subquery("buckets")
    )
    encoded = buckets.c.n * 1024 + buckets.c.bucket
    return select(
        buckets.c.key,
        *(
            func.array_agg(aggregate_order_by(encoded, buckets.c.bucket))
            .filter(buckets.c.histogram == index)
            .label(name)
            for index, name in enumerate(ROLLUP_HISTOGRAMS)
        ),
    ).group_by(buckets.c.key)


# ---------------------------------------------------------------- usage per day, cached
#
# usage_day holds closed UTC days' group_by=day results per scope, each with the epoch of
# its day when computed; usage_day_epoch the current epochs (bumped by triggers on
# llm_call) and each closed day's closed_xid. See services/telemetry/README.md.

_EPOCHS = UsageDayEpoch.__table__  # type: ignore[attr-defined]
_CACHE = UsageDay.__table__  # type: ignore[attr-defined]
# The figures of a cached day, with their Postgres types (as stored: exact, unrounded).
_USAGE_DAY_TYPES = {
    "requests": "int8", "errors": "int8", "prompt_tokens": "int8", "completion_tokens": "int8",
    "cached_prompt_tokens": "int8", "reasoning_tokens": "int8", "cost_usd": "numeric",
    "unpriced_calls": "int8", "cache_hits": "int8", "saved_usd": "numeric",
    "latency_ms_p50": "float8", "latency_ms_p95": "float8", "ttft_ms_p50": "float8",
}  # fmt: skip
USAGE_DAY_COLUMNS = tuple(_USAGE_DAY_TYPES)


def _days(days: Sequence[date]) -> Any:
    """The days as a one-column table `d(day)` (one array parameter)."""
    return func.unnest(cast(list(days), ARRAY(Date))).table_valued("day").render_derived("d")


async def day_epochs(db: Db, *, days: Sequence[date]) -> Sequence[Row[Any]]:
    """Per day of `days`, in day order: its `epoch`, `marked` and `storable`, as usage_sums
    gives them by day (_day_status)."""
    status = _day_status(days, {})
    query = select(status.c.day, status.c.epoch, status.c.marked, status.c.storable)
    return (await db.execute(query.order_by(status.c.day))).all()


async def usage_cache_probe(db: Db, *, key: str, days: Sequence[date]) -> Sequence[Row[Any]]:
    """Per day: `marked` (it has a closed_xid) and `cached` (a result for this scope key
    computed at the day's current epoch)."""
    d = _days(days)
    query = select(
        d.c.day,
        _EPOCHS.c.closed_xid.is_not(None).label("marked"),
        _CACHE.c.day.is_not(None).label("cached"),
    ).select_from(
        d.outerjoin(_EPOCHS, _EPOCHS.c.day == d.c.day).outerjoin(
            _CACHE,
            and_(
                _CACHE.c.scope == key,
                _CACHE.c.day == d.c.day,
                _CACHE.c.epoch == _EPOCHS.c.epoch,
            ),
        )
    )
    return (await db.execute(query)).all()


# Give each day that has ended by the database clock (read once, before any row is written)
# a closed_xid: this transaction's id, assigned after that check, so after the day ended.
# A transaction that wrote rows of the day but skipped the epoch bump (its trigger ran
# before midnight) got its own id before then: a smaller one. A day without an epoch row
# gets one (from the epochs' sequence, as the triggers do).
_MARK_CLOSED = text(
    f"INSERT INTO {SCHEMA}.usage_day_epoch AS e (day, epoch, closed_xid) "  # noqa: S608
    f"SELECT day, nextval('{SCHEMA}.usage_day_epoch_seq'), pg_current_xact_id() "
    "FROM unnest(CAST(:days AS date[])) AS d(day) "
    "WHERE day < (SELECT (clock_timestamp() AT TIME ZONE 'UTC')::date) "
    "ORDER BY day "
    "ON CONFLICT (day) DO UPDATE SET closed_xid = excluded.closed_xid "
    "WHERE e.closed_xid IS NULL"
)


async def mark_closed_days(db: Db, days: Sequence[date]) -> None:
    await db.execute(_MARK_CLOSED, {"days": list(days)})


# Days read one by one (a branch each) lie within this window around now; the rest of a
# range (only where a query reaches far back or ahead: no partition holds calls there,
# short of a hand-made one) is read as one GROUP BY per stretch, so a range of any length
# makes a statement of bounded size.
PER_DAY_BEFORE = timedelta(days=93)
PER_DAY_AFTER = timedelta(days=2)


def split_ranges(
    ranges: Sequence[tuple[datetime, datetime]], lo: datetime, hi: datetime
) -> tuple[list[tuple[datetime, datetime]], list[tuple[datetime, datetime]]]:
    """The parts of the ranges inside [lo, hi), and the parts outside it."""
    inside, outside = [], []
    for start, end in ranges:
        if max(start, lo) < min(end, hi):
            inside.append((max(start, lo), min(end, hi)))
        if start < min(end, lo):
            outside.append((start, min(end, lo)))
        if max(start, hi) < end:
            outside.append((max(start, hi), end))
    return inside, outside


def day_parts(ranges: Sequence[tuple[datetime, datetime]]) -> list[tuple[date, datetime, datetime]]:
    """The ranges cut at UTC midnights: (day, start, end) with [start, end) inside the day."""
    parts = []
    for start, end in ranges:
        lo = start
        while lo < end:
            day = lo.astimezone(UTC).date()
            hi = min(end, datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(days=1))
            parts.append((day, lo, hi))
            lo = hi
    return parts


async def usage_days(
    db: Db,
    *,
    scope: Scope,
    key: str,
    closed: Sequence[date],
    cached: Sequence[date],
    ranges: Sequence[tuple[datetime, datetime]],
) -> Sequence[Row[Any]]:
    """Usage per day from ONE statement, so one snapshot, in day order: the cached result
    of each day of `cached` (among `closed`) still valid there (`cached` true); the
    aggregates of the calls in `ranges` for the days with calls; a row without figures for
    each other day of `closed` (no calls). Each row has the day's epoch and `storable`:
    the day has a closed_xid below this snapshot's xmin (every transaction that could have
    written the day without bumping its epoch is visible here, or gone)."""
    await _sort_in_memory(db)
    d = _days(closed)
    raw = _calls_per_day(scope, ranges)
    hit = _valid_cached_days(key, cached)
    day = func.coalesce(d.c.day, raw.c.day)
    latency = type_coerce(raw.c.latency_ms_p50_p95, ARRAY(Double))
    computed = {
        **{name: raw.c[name] for name in USAGE_DAY_COLUMNS if name in raw.c},
        "latency_ms_p50": latency[1],
        "latency_ms_p95": latency[2],
    }
    xmin = func.pg_snapshot_xmin(func.pg_current_snapshot())
    query = (
        select(
            day.label("day"),
            # A day is either cached or read from the calls, never both.
            *(func.coalesce(hit.c[n], computed[n]).label(n) for n in USAGE_DAY_COLUMNS),
            hit.c.day.is_not(None).label("cached"),
            _EPOCHS.c.epoch,
            func.coalesce(_EPOCHS.c.closed_xid < xmin, False).label("storable"),
        )
        .select_from(
            d.outerjoin(hit, hit.c.day == d.c.day)
            .outerjoin(raw, raw.c.day == d.c.day, full=True)
            .outerjoin(_EPOCHS, _EPOCHS.c.day == day)
        )
        .order_by(day)
    )
    return (await db.execute(query)).all()


def _calls_per_day(scope: Scope, ranges: Sequence[tuple[datetime, datetime]]) -> Subquery:
    """`raw`: the aggregates of the calls in `ranges` (and the scope's filters), a row per
    UTC day with calls.

    Everyone's calls: each day's part of the ranges (near now: PER_DAY_*) aggregated on its
    own, one UNION ALL branch per day (the day and its bounds as parameters), each reading
    that day's calls through the (occurred_at, id) primary key: no sort of every call in
    the range by day before the per-day percentile sorts, and Postgres may hand whole
    branches to parallel workers (Parallel Append). Calls are stored in about the order
    they happen, so each day's rows are close together. Nothing for a day without calls
    (HAVING), as the GROUP BY of the far stretches gives. One user's or one team's calls
    are few: one GROUP BY per range, through (user_id, occurred_at) or (team_id,
    occurred_at), costs less than 31 branches that would each read all of a day's calls."""
    now = datetime.now(UTC)
    if scope.user_id is None and scope.team_id is None:
        near, far = split_ranges(ranges, now - PER_DAY_BEFORE, now + PER_DAY_AFTER)
    else:
        near, far = [], list(ranges)
    by_day = [
        select(cast(literal(day), Date).label("day"), *_aggregates())
        .where(col(LlmCall.occurred_at) >= lo, col(LlmCall.occurred_at) < hi, *scope.filters())
        .having(func.count() > 0)
        for day, lo, hi in day_parts(near)
    ]
    if not (by_day or far):  # no calls to read: one empty range keeps the statement's shape
        far = [(scope.start, scope.start)]
    grouped = [
        select(CALL_DAY.label("day"), *_aggregates())
        .where(*replace(scope, start=start, end=end).conditions())
        .group_by(CALL_DAY)
        for start, end in far
    ]
    return union_all(*by_day, *grouped).subquery("raw")


def _valid_cached_days(key: str, cached: Sequence[date]) -> Subquery:
    """`hit`: the cached results for the scope `key` of the days of `cached` that were
    computed at their day's current epoch."""
    return (
        select(_CACHE.c.day, *(_CACHE.c[name] for name in USAGE_DAY_COLUMNS))
        .join(
            _EPOCHS,
            and_(_EPOCHS.c.day == _CACHE.c.day, _EPOCHS.c.epoch == _CACHE.c.epoch),
        )
        .where(_CACHE.c.scope == key, _CACHE.c.day == any_(cast(list(cached), ARRAY(Date))))
        .subquery("hit")
    )


# A result is stored only while the epoch it was computed at is still the day's (else it
# would never be served); an existing result is replaced only by one at least as new (a
# day's epoch only grows).
_STORE_DAYS = text(
    f"INSERT INTO {SCHEMA}.usage_day AS c (scope, day, epoch, "  # noqa: S608
    + ", ".join(USAGE_DAY_COLUMNS)
    + ") SELECT :scope, v.day, v.epoch, "
    + ", ".join(f"v.{name}" for name in USAGE_DAY_COLUMNS)
    + " FROM unnest(CAST(:day AS date[]), CAST(:epoch AS int8[]), "
    + ", ".join(f"CAST(:{name} AS {kind}[])" for name, kind in _USAGE_DAY_TYPES.items())
    + ") AS v(day, epoch, "
    + ", ".join(USAGE_DAY_COLUMNS)
    + f") JOIN {SCHEMA}.usage_day_epoch AS e ON e.day = v.day AND e.epoch = v.epoch "
    "ORDER BY v.day "
    "ON CONFLICT (scope, day) DO UPDATE SET epoch = excluded.epoch, "
    + ", ".join(f"{name} = excluded.{name}" for name in USAGE_DAY_COLUMNS)
    + ", computed_at = now() WHERE c.epoch <= excluded.epoch"
)


async def store_usage_days(db: Db, *, key: str, rows: Sequence[dict[str, Any]]) -> None:
    """Store closed days' results (day, epoch and USAGE_DAY_COLUMNS each) for a scope."""
    params: dict[str, Any] = {
        name: [row[name] for row in rows] for name in ("day", "epoch", *USAGE_DAY_COLUMNS)
    }
    await db.execute(_STORE_DAYS, {"scope": key, **params})


@asynccontextmanager
async def usage_cache_lock(engine: AsyncEngine) -> AsyncIterator[bool]:
    """The pre-warm of one replica at a time: yields whether this one has the lock.

    A session lock, so on a connection of its own, held for the whole refresh: it outlives
    the refresh's transactions (one per day). Autocommit: the lock and the unlock are one
    statement each, no transaction around them."""
    async with engine.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        granted = bool((await conn.execute(_TRY_LOCK_USAGE_CACHE)).scalar())
        try:
            yield granted
        finally:
            # The lock is the connection's: gone with it if it broke, or was cancelled in
            # the middle of a call (then an unlock would only hide the cancellation).
            if granted and not conn.invalidated:
                await conn.execute(_UNLOCK_USAGE_CACHE)


_TRY_LOCK_USAGE_CACHE = text("SELECT pg_try_advisory_lock(hashtext('telemetry:usage-cache'))")
_UNLOCK_USAGE_CACHE = text("SELECT pg_advisory_unlock(hashtext('telemetry:usage-cache'))")


async def delete_usage_days_before(db: Db, *, day: date) -> None:
    """Retention. (A result stored meanwhile for a day whose epoch row is gone can never be
    served: an epoch value never comes back.)"""
    await db.execute(_EPOCHS.delete().where(_EPOCHS.c.day < day))
    await db.execute(_CACHE.delete().where(_CACHE.c.day < day))


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


# ---------------------------------------------------------------- spend
#
# Each query sums the cost of one scope's calls since a time: the whole hours from `since`
# on from rollup_hour (through its (user_id | api_key_id | team_id, period) index), the
# partial hour before them from the calls, through that scope's index with the cost in it
# (an index-only scan): (api_key_id, occurred_at) and (team_id, occurred_at, id) INCLUDE
# (cost_usd), (user_id, occurred_at, id) for a user. So a budget's spend reads a few
# hundred cells a month, not every call. All of them in one statement: a CASE runs only
# the branch of each query's scope. Exact: `sum` of numeric, each cell holding its calls'
# coalesce(sum(cost_usd), 0) (scale kept).
_SPEND_OF = {
    "key": ("c.api_key_id = q.key_id", "h.api_key_id = q.key_id"),
    "user": ("c.user_id = q.scope_id", "h.user_id = q.scope_id"),
    "team": ("c.team_id = q.scope_id", "h.team_id = q.scope_id"),
}
_SPEND = text(
    "SELECT CASE q.scope "  # noqa: S608 (constants)
    + " ".join(
        f"WHEN '{scope}' THEN (SELECT coalesce(sum(c.cost_usd), 0) "  # noqa: S608 (constants)
        f"FROM {SCHEMA}.{PARENT} c "
        f"WHERE {calls} AND c.occurred_at >= q.since AND c.occurred_at < q.hours) "
        f"+ (SELECT coalesce(sum(h.cost_usd), 0) FROM {SCHEMA}.rollup_hour h "
        f"WHERE {hours} AND h.period >= q.hours)"
        for scope, (calls, hours) in _SPEND_OF.items()
    )
    + " END AS spend "
    # q.hours: the first whole UTC hour at or after `since` (timestamps are microseconds).
    "FROM (SELECT *, coalesce(date_trunc('hour', since + interval '1 hour' "
    "- interval '1 microsecond', 'UTC'), '-infinity') AS hours "
    "FROM unnest(CAST(:scopes AS text[]), CAST(:key_ids AS text[]), "
    "CAST(:scope_ids AS uuid[]), CAST(:since AS timestamptz[])) "
    "WITH ORDINALITY AS u(scope, key_id, scope_id, since, ord)) AS q ORDER BY q.ord"
)


@dataclass(frozen=True)
class SpendOf:
    """One question: the cost of a key's (`key_id`), a user's or a team's (`scope_id`)
    calls that occurred at or after `since` (None: ever)."""

    scope: str
    key_id: str | None
    scope_id: uuid.UUID | None
    since: datetime | None


async def spend(db: Db, queries: Sequence[SpendOf]) -> list[Decimal]:
    """The exact cost of each query's calls, in order."""
    result = await db.execute(
        _SPEND,
        {
            "scopes": [q.scope for q in queries],
            "key_ids": [q.key_id for q in queries],
            "scope_ids": [q.scope_id for q in queries],
            "since": [q.since for q in queries],
        },
    )
    return [Decimal(row.spend) for row in result]
