"""The rules of the telemetry service: storing call events, partitions and retention,
who sees which calls, usage and the call list."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

import structlog
from pydantic import TypeAdapter
from pydantic_core import TzInfo
from sqlalchemy import Row
from sqlalchemy.exc import SQLAlchemyError

from common.cursors import decode_cursor, encode_cursor
from common.db import transaction
from common.errors import NotAUser
from common.identity import Identity
from common.llm_events import CallEvent
from telemetry import histograms, repository
from telemetry.errors import Invalid, OthersUsage
from telemetry.metrics import BATCH_SIZE, DUPLICATES, INGESTED, WRITE_DURATION
from telemetry.models import ROLLUP_HISTOGRAMS
from telemetry.repository import USAGE_DAY_COLUMNS, Db, Scope
from telemetry.runtime import Runtime
from telemetry.schemas import (
    CallFilter,
    CallPage,
    CallRead,
    EventBatch,
    GroupBy,
    IngestResult,
    Spend,
    SpendRequest,
    Usage,
    UsageGroup,
    exact,
)

log = structlog.get_logger(__name__)
READ_ALL = "telemetry:read_all"
# A call reported this far ahead of our clock is refused (clock skew is smaller).
FUTURE_SLACK = timedelta(days=1)
PYDANTIC_UTC = TzInfo(0)  # one object: what pydantic gives every UTC time it parses
DEFAULT_RANGE = timedelta(days=30)
# GET /v1/usage's percentiles: from the rollups' histograms, from every call, or none.
PercentileMode = Literal["approximate", "exact", "none"]


def utcnow() -> datetime:
    return datetime.now(UTC)


def month_of(moment: datetime) -> date:
    utc = moment.astimezone(UTC)
    return date(utc.year, utc.month, 1)


def next_month(month: date) -> date:
    return date(month.year + month.month // 12, month.month % 12 + 1, 1)


def months_from(first: date, last: date) -> list[date]:
    """The first days of the months from `first`'s to `last`'s, both included."""
    months = [first]
    while months[-1] < last:
        months.append(next_month(months[-1]))
    return months


def _midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


# ---------------------------------------------------------------- storing calls
#
# The monthly partitions of llm_call from the retention horizon to next month exist (made
# at start, then hourly, and on demand for a batch that needs one); older ones are dropped
# whole. Runtime.partition_months remembers which exist.


def refusals(retention: timedelta, now: datetime) -> Callable[[CallEvent], str | None]:
    """Why an otherwise valid event cannot be stored at `now`, if it cannot (the bounds
    computed once for a whole batch)."""
    # In pydantic's own UTC object: the events' times carry it, and two datetimes with the
    # very same tzinfo compare field by field, without calling utcoffset() on both (a tenth
    # of the cost; this runs for every event ingested).
    oldest = (now - retention).astimezone(PYDANTIC_UTC)
    newest = (now + FUTURE_SLACK).astimezone(PYDANTIC_UTC)

    def refusal(event: CallEvent) -> str | None:
        if event.occurred_at < oldest:
            return "occurred_at is older than the retention period"
        if event.occurred_at > newest:
            return "occurred_at is more than a day in the future"
        return None

    return refusal


async def ensure_partitions(runtime: Runtime, months: Iterable[date]) -> None:
    """Create the missing monthly partitions, in a transaction of their own: the DDL's
    locks (the advisory lock of every replica's partition DDL, the parent table's) are
    released at once, not held for the batch's unit of work."""
    missing = set(months) - runtime.partition_months
    if not missing:
        return
    async with transaction(runtime.sessionmaker) as db:
        await repository.lock_partitions(db)
        existing = set(await repository.partition_months(db))
        for month in sorted(missing - existing):
            await repository.create_partition(db, month=month, until=next_month(month))
            log.info("partition created", partition=repository.partition_name(month))
    runtime.partition_months = existing | missing


async def maintain(runtime: Runtime, now: datetime | None = None) -> list[date]:
    """Partitions from the retention horizon to next month; drop those wholly older than
    the horizon, and dead letters and cached usage days older than it. Returns the months
    dropped."""
    now = now or utcnow()
    horizon = now - runtime.retention
    wanted = months_from(month_of(horizon), next_month(month_of(now)))
    async with transaction(runtime.sessionmaker) as db:
        await repository.lock_partitions(db)
        existing = await repository.partition_months(db)
        for month in sorted(set(wanted) - set(existing)):
            await repository.create_partition(db, month=month, until=next_month(month))
        expired = [m for m in existing if _midnight(next_month(m)) <= horizon]
        for month in expired:
            await repository.drop_partition(db, month=month, until=next_month(month))
            log.info("partition dropped", partition=repository.partition_name(month))
        await repository.delete_dead_letters_before(db, horizon=horizon)
        await repository.delete_usage_days_before(db, day=horizon.astimezone(UTC).date())
    runtime.partition_months = (set(existing) | set(wanted)) - set(expired)
    return expired


async def store(runtime: Runtime, db: Db, events: Sequence[CallEvent], *, source: str) -> int:
    """Insert the calls not stored yet, in the caller's unit of work; returns how many
    were new."""
    if not events:
        return 0
    first = min(e.occurred_at for e in events)
    last = max(e.occurred_at for e in events)
    await ensure_partitions(runtime, months_from(month_of(first), month_of(last)))
    start = time.perf_counter()
    inserted = await repository.insert_calls(db, EVENTS.dump_json(list(events)), source=source)
    WRITE_DURATION.labels(source).observe(time.perf_counter() - start)
    BATCH_SIZE.labels(source).observe(len(events))
    INGESTED.labels(source).inc(inserted)
    DUPLICATES.labels(source).inc(len(events) - inserted)
    return inserted


def forget_partitions(runtime: Runtime) -> None:
    """After an insert found no partition: ask the database again next time."""
    runtime.partition_months.clear()


# Validated events as canonical JSON (ISO times with offsets, decimal strings, UUID text):
# what Postgres reads back, column by column, when it stores them.
EVENTS: TypeAdapter[list[CallEvent]] = TypeAdapter(list[CallEvent])


# ---------------------------------------------------------------- who sees what


def caller_id(identity: Identity) -> uuid.UUID:
    try:
        return uuid.UUID(identity.user_id or "")
    except ValueError:
        raise NotAUser("Telemetry is read and reported for a user.") from None


async def scope_for(runtime: Runtime, identity: Identity, wanted: CallFilter) -> Scope:
    """Who sees which calls: `telemetry:read_all` everyone's (or one user's, one team's);
    the owner of a team who asks for it (`team=`) all of that team's calls (auth says who
    owns it, asked each time: a lost ownership is lost at once); anyone else their own
    calls only (with `team=`, their own calls in that team). When auth cannot say, 503
    (AuthUnavailable): never a wider view, nor a silently narrower one."""
    end = _aware(wanted.end) if wanted.end else utcnow()
    start = _aware(wanted.start) if wanted.start else end - DEFAULT_RANGE
    if start > end:
        raise Invalid("`from` must not be after `to`.")
    user_id, team = wanted.user, wanted.team
    if not identity.has(READ_ALL):
        me = caller_id(identity)
        owner = team is not None and await runtime.auth.team_role(team, me) == "owner"
        if not owner:
            if user_id is not None and user_id != me:
                raise OthersUsage(
                    f"Reading another user's calls needs the {READ_ALL} permission, or "
                    "owning the team named with `team=`."
                )
            user_id = me
    return Scope(
        start=start,
        end=end,
        user_id=user_id,
        team_id=team,
        model=wanted.model,
        status=wanted.status,
    )


def _aware(moment: datetime) -> datetime:
    """A time without an offset is taken as UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


# ---------------------------------------------------------------- queries


async def usage(
    runtime: Runtime,
    db: Db,
    identity: Identity,
    *,
    wanted: CallFilter,
    group_by: GroupBy,
    percentiles: PercentileMode = "approximate",
) -> Usage:
    """Usage per group of the calls the caller may see (scope_for)."""
    scope = await scope_for(runtime, identity, wanted)
    return await usage_in(runtime, db, scope=scope, group_by=group_by, percentiles=percentiles)


async def usage_in(
    runtime: Runtime,
    db: Db,
    *,
    scope: Scope,
    group_by: GroupBy,
    percentiles: PercentileMode = "approximate",
) -> Usage:
    """Usage per group. Every figure but the percentiles exact, from the rollups (whole
    days and hours) and the calls (partial hours): never more than two hours of calls
    read. The percentiles: "approximate" from the rollups' histograms (within
    histograms.RELATIVE_ERROR of the exact ones for values in range), "none" left out,
    "exact" from every call of the range: by day, closed days within retention from the
    per-day cache when it holds them at their current epoch (see usage_by_day); other
    groupings read the calls (their percentiles span every day and cannot be composed from
    days or hours). Approximate, the closed days' part is kept in memory (approximate_by_day,
    approximate_grouped)."""
    if percentiles == "exact":
        if group_by == "day":
            groups = await usage_by_day(runtime, db, scope=scope)
        else:
            rows = await repository.usage(db, scope=scope, group_by=group_by)
            groups = [usage_group(row._mapping) for row in rows]
    elif percentiles == "approximate" and group_by == "day":
        groups = await approximate_by_day(runtime, db, scope=scope)
    elif percentiles == "approximate":
        groups = await approximate_grouped(runtime, db, scope=scope, group_by=group_by)
    else:  # no percentiles: the sums alone
        rows = await repository.usage_sums(db, scope=scope, group_by=group_by)
        groups = [usage_group(_approximated(row._mapping, False)) for row in rows]
    return Usage(group_by=group_by, from_=scope.start, to=scope.end, groups=groups)


# Per day status columns of repository.usage_sums, not figures.
_DAY_STATUS = ("day", "epoch", "marked", "storable", "served")


async def approximate_by_day(runtime: Runtime, db: Db, *, scope: Scope) -> list[UsageGroup]:
    """Usage per UTC day with approximate percentiles, each closed day within retention
    from this process's memory (runtime.approximate_days) while its epoch is the one it
    was computed at, as usage_by_day serves the exact ones: a write to a closed day gives
    it a new epoch (telemetry_0003), and a day's figures are kept only from a snapshot
    that sees every transaction that could have written it without one (`storable`). The
    epochs are checked and the other days read in one statement (one snapshot); a served
    day's rollup_day cells are not read. Days not marked closed yet are marked after, for
    the next query (mark_closed)."""
    days = cacheable_days(scope, now=utcnow(), retention=runtime.retention)
    key = scope.key()
    memory = runtime.approximate_days
    held = {day: memory[(key, day)] for day in days if (key, day) in memory}
    rows = await repository.usage_sums(
        db,
        scope=scope,
        group_by="day",
        histograms=True,
        days=days,
        held={day: epoch for day, (epoch, _) in held.items()},
    )
    groups, unmarked = [], []
    for row in rows:
        found = row._mapping
        if days and found["day"] is not None and not found["marked"]:
            unmarked.append(found["day"])
        if days and found["served"]:
            values = held[found["day"]][1]
        elif found["key"] is None:
            continue  # a closed day without calls
        else:
            figures = {name: found[name] for name in found if name not in _DAY_STATUS}
            values = _approximated(figures, True)
            if days and found["day"] is not None and found["storable"]:
                _remember(memory, (key, found["day"]), (found["epoch"], values), DAYS_KEPT)
        groups.append(usage_group(values))
    await mark_closed(runtime, unmarked)
    return groups


async def approximate_grouped(
    runtime: Runtime, db: Db, *, scope: Scope, group_by: GroupBy
) -> list[UsageGroup]:
    """Usage per model, key, user, team (anything but day) with approximate percentiles,
    the closed days' part from this process's memory (runtime.approximate_groups) while
    every one of those days has the epoch it was computed at.

    The range's closed days within retention (cacheable_days: contiguous) are summed per
    group with their merged histograms, kept as one entry per scope, grouping and span of
    days; the rest of the range (a partial first day, today) is read each time, and both
    are added up here, histograms bucket by bucket, before the percentiles are read. The
    days' epochs are read first, in a statement of their own: a write landing after that
    read leaves the entry with an older epoch than the day's, so it is computed again next
    time, never served stale. As approximate_by_day, an entry is kept only when every day
    was `storable` in that read, and days not marked closed yet are marked for the next
    query (mark_closed). Memory is bounded: GROUPINGS_KEPT entries, none holding more than
    GROUPED_ENTRIES_MAX histogram entries."""
    days = cacheable_days(scope, now=utcnow(), retention=runtime.retention)
    if not days:
        rows = await repository.usage_sums(db, scope=scope, group_by=group_by, histograms=True)
        return [usage_group(_approximated(row._mapping, True)) for row in rows]
    status = await repository.day_epochs(db, days=days)
    epochs = tuple(row.epoch for row in status)
    await mark_closed(runtime, [row.day for row in status if not row.marked])
    key = (scope.key(), group_by, days[0], days[-1])
    memory = runtime.approximate_groups
    held = memory.get(key)
    if held is not None and held[0] == epochs:
        closed = held[1]
    else:
        span = replace(scope, start=_midnight(days[0]), end=_midnight(days[-1] + ONE_DAY))
        rows = await repository.usage_sums(db, scope=span, group_by=group_by, histograms=True)
        closed = [dict(row._mapping) for row in rows]
        if all(row.storable for row in status) and _entries(closed) <= GROUPED_ENTRIES_MAX:
            _remember(memory, key, (epochs, closed), GROUPINGS_KEPT)
    parts = list(closed)
    for start, end in uncached_ranges(scope, days):
        rest = replace(scope, start=start, end=end)
        rows = await repository.usage_sums(db, scope=rest, group_by=group_by, histograms=True)
        parts += [dict(row._mapping) for row in rows]
    return [usage_group(_approximated(values, True)) for values in _added_up(parts)]


def _added_up(parts: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Groups of usage_sums rows (with histograms) added up by key, ordered as usage_sums
    orders them (most requests first, then by key)."""
    groups: dict[Any, dict[str, Any]] = {}
    for part in parts:
        group = groups.get(part["key"])
        if group is None:
            groups[part["key"]] = dict(part)
            continue
        for name, value in part.items():
            if name in ROLLUP_HISTOGRAMS:
                group[name] = histograms.added(group[name], value)
            elif name != "key" and value is not None:
                group[name] = value if group[name] is None else group[name] + value
    return sorted(
        groups.values(),
        key=lambda g: (-g["requests"], g["key"] is None, "" if g["key"] is None else str(g["key"])),
    )


def _remember(memory: dict[Any, Any], key: Any, value: Any, kept: int) -> None:
    """Keep a result, the oldest kept forgotten past `kept` results."""
    memory.pop(key, None)
    memory[key] = value
    while len(memory) > kept:
        del memory[next(iter(memory))]


def _entries(groups: Iterable[Mapping[str, Any]]) -> int:
    """How many histogram entries the groups hold (what their memory grows with)."""
    return sum(len(group[name] or ()) for group in groups for name in ROLLUP_HISTOGRAMS)


# Days' approximate results kept per process (a few hundred bytes each): 31 days of ~300
# scopes.
DAYS_KEPT = 10_000
# The other groupings' closed parts kept per process, each at most GROUPED_ENTRIES_MAX
# histogram entries (~36 bytes each: ~180 kB): at most ~36 MB. A grouping with more (an
# admin's usage by key over thousands of keys) is computed in full each time.
GROUPINGS_KEPT = 200
GROUPED_ENTRIES_MAX = 5_000


def _approximated(row: Mapping[Any, Any], approximate: bool) -> dict[str, Any]:
    """A group of the rollups with its percentiles: from its histograms, or none."""
    values = {name: row[name] for name in row if name not in ROLLUP_HISTOGRAMS}
    if not approximate:
        return {**values, **dict.fromkeys(PERCENTILES)}
    latency, ttft = (row[name] for name in ROLLUP_HISTOGRAMS)
    return {
        **values,
        "latency_ms_p50": histograms.percentile(latency, 0.5),
        "latency_ms_p95": histograms.percentile(latency, 0.95),
        "ttft_ms_p50": histograms.percentile(ttft, 0.5),
    }


def usage_group(row: Mapping[Any, Any]) -> UsageGroup:
    """One group's figures, from the calls (`key`, p50 and p95 in one array) or from a
    day's row (`day`, `latency_ms_p50` and `latency_ms_p95`)."""
    values = dict(row)
    key = values.pop("key") if "key" in values else values.pop("day")
    if "latency_ms_p50_p95" in values:
        values["latency_ms_p50"], values["latency_ms_p95"] = values.pop("latency_ms_p50_p95")
    return UsageGroup.model_validate(
        {
            **values,
            "key": str(key) if isinstance(key, uuid.UUID) else key,
            "error_rate": values["errors"] / values["requests"],
        }
    )


# ---------------------------------------------------------------- usage per day, cached

ONE_DAY = timedelta(days=1)
PERCENTILES = ("latency_ms_p50", "latency_ms_p95", "ttft_ms_p50")
# Everyone's usage of the closed days of this many last days is computed ahead of asking.
PREWARM_DAYS = 31


def cacheable_days(scope: Scope, *, now: datetime, retention: timedelta) -> list[date]:
    """The UTC days wholly inside [start, end) that have ended, after the retention
    horizon's day (retention deletes the cached days up to that one)."""
    first = max(scope.start, _midnight((now - retention).astimezone(UTC).date() + ONE_DAY))
    end = min(scope.end, _midnight(now.astimezone(UTC).date()))
    day = first.astimezone(UTC).date()
    if _midnight(day) < first:
        day += ONE_DAY
    found = []
    while _midnight(day + ONE_DAY) <= end:
        found.append(day)
        day += ONE_DAY
    return found


def uncached_ranges(scope: Scope, cached: Iterable[date]) -> list[tuple[datetime, datetime]]:
    """[start, end) without the (whole) days of `cached`: the contiguous time ranges whose
    calls must be read."""
    ranges = []
    cursor = scope.start
    for day in sorted(cached):
        if _midnight(day) > cursor:
            ranges.append((cursor, _midnight(day)))
        cursor = max(cursor, _midnight(day + ONE_DAY))
    if cursor < scope.end:
        ranges.append((cursor, scope.end))
    return ranges


async def usage_by_day(runtime: Runtime, db: Db, *, scope: Scope) -> list[UsageGroup]:
    """Usage per UTC day, exact, with closed days from the per-day cache when valid.

    The days wholly inside the range that have ended (and are within retention) may come
    from `usage_day` (for this scope key) when their result was computed at the day's
    current epoch; every other part of the range (partial first and last days, today,
    days not cached or no longer valid) is read from the calls, restricted to those time
    ranges. The cached rows and the calls are read in ONE statement, so in one snapshot;
    the epochs stored with the days just computed come from that snapshot too. Those days
    are then stored in a savepoint of `db`'s unit of work; a failure there is logged and
    the answer still given. Days not marked closed yet are marked first, in a transaction
    of their own (mark_closed)."""
    closed = cacheable_days(scope, now=utcnow(), retention=runtime.retention)
    key = scope.key()
    cached: set[date] = set()
    if closed:
        probe = await repository.usage_cache_probe(db, key=key, days=closed)
        cached = {row.day for row in probe if row.cached}
        await mark_closed(runtime, [row.day for row in probe if not row.marked])
    rows = await _read_days(db, scope=scope, key=key, closed=closed, cached=cached)
    keep_empty = _keeps_days_without_calls(scope)
    fresh = [
        _day_values(row)
        for row in rows
        if row.day in closed and not row.cached and row.storable and (row.requests or keep_empty)
    ]
    if fresh:
        await _store_days(db, key=key, rows=fresh)
    return [usage_group(values) for row in rows if (values := _day_values(row))["requests"]]


async def _read_days(
    db: Db, *, scope: Scope, key: str, closed: Sequence[date], cached: set[date]
) -> Sequence[Row[Any]]:
    """The scope's days (repository.usage_days): the days of `cached` from the cache, the
    rest of the range from the calls. A cached day invalidated between the probe and this
    read (a late call landed) is read again from the calls; `cached` shrinks each time
    round, so this ends."""
    while True:
        rows = await repository.usage_days(
            db,
            scope=scope,
            key=key,
            closed=closed,
            cached=sorted(cached),
            ranges=uncached_ranges(scope, cached),
        )
        lost = cached - {row.day for row in rows if row.cached}
        if not lost:
            return rows
        cached = cached - lost


def _keeps_days_without_calls(scope: Scope) -> bool:
    """A day without calls is stored for everyone's unfiltered usage only (the pre-warmed
    scope, one row a day). Any other scope keeps just the days it had calls on, so what it
    stores is bounded by the calls themselves, never by filter values a caller makes up: a
    model name that matches nothing would otherwise store a row for every day asked, on
    every request. Such a day is read again instead: for one user, an index range on
    (user_id, occurred_at) that finds nothing."""
    return (
        scope.user_id is None
        and scope.team_id is None
        and scope.model is None
        and scope.status is None
    )


def _day_values(row: Row[Any]) -> dict[str, Any]:
    """A day's columns; a day without calls has zeros (and no percentiles)."""
    values = {name: getattr(row, name) for name in ("day", "epoch", *USAGE_DAY_COLUMNS)}
    if values["requests"] is None:
        values.update({name: 0 for name in USAGE_DAY_COLUMNS if name not in PERCENTILES})
        values.update(cost_usd=Decimal(0), saved_usd=Decimal(0))
    return values


async def mark_closed(runtime: Runtime, days: Sequence[date]) -> None:
    """Give the days a closed_xid, in a transaction of their own committed before the calls
    are read: a day marked in the reading transaction could not be stored from it (its
    closed_xid would be that transaction's own id, not below its snapshot's xmin). A
    failure is logged, never the caller's failure (the answer is computed either way)."""
    if not days:
        return
    try:
        async with transaction(runtime.sessionmaker) as db:
            await repository.mark_closed_days(db, days)
    except SQLAlchemyError as exc:
        log.warning("usage cache write failed", what="mark closed days", error=repr(exc))


async def _store_days(db: Db, *, key: str, rows: Sequence[dict[str, Any]]) -> None:
    """Store the closed days just computed, in a savepoint of `db`'s unit of work: a failure
    is logged and rolled back to it, never the caller's failure (the answer is computed
    either way)."""
    try:
        async with db.begin_nested():
            await repository.store_usage_days(db, key=key, rows=rows)
    except SQLAlchemyError as exc:
        log.warning("usage cache write failed", what="store usage days", error=repr(exc))


async def refresh_usage_cache(runtime: Runtime, *, now: datetime | None = None) -> int | None:
    """Compute everyone's usage of each closed day of the last PREWARM_DAYS (within
    retention) that has no valid cached result, one day per transaction. One replica at a
    time: returns None when another holds the lock, else how many days were computed."""
    now = now or utcnow()
    today = _midnight(now.astimezone(UTC).date())
    window = Scope(start=today - PREWARM_DAYS * ONE_DAY, end=today, user_id=None)
    days = cacheable_days(window, now=now, retention=runtime.retention)
    async with repository.usage_cache_lock(runtime.engine) as granted:
        if not granted:
            return None
        async with transaction(runtime.sessionmaker) as db:
            probe = await repository.usage_cache_probe(db, key=window.key(), days=days)
        # All at once, so that writers in flight are long done when the days are read.
        await mark_closed(runtime, [row.day for row in probe if not row.marked])
        missing = [row.day for row in probe if not row.cached]
        for day in missing:
            one = Scope(start=_midnight(day), end=_midnight(day + ONE_DAY), user_id=None)
            async with transaction(runtime.sessionmaker) as db:
                await usage_by_day(runtime, db, scope=one)
        return len(missing)


async def calls(
    runtime: Runtime,
    db: Db,
    identity: Identity,
    *,
    wanted: CallFilter,
    cursor: str | None,
    limit: int,
) -> CallPage:
    """A page of the calls the caller may see (scope_for), newest first; the cursor is the
    last row's (time, id), so rows inserted meanwhile never shift a page (newer ones are
    above the first page)."""
    scope = await scope_for(runtime, identity, wanted)
    before = decode_cursor(cursor, datetime, uuid.UUID) if cursor else None
    rows = await repository.calls_page(db, scope=scope, before=before, limit=limit + 1)
    page = [CallRead.model_validate(row, from_attributes=True) for row in rows[:limit]]
    last = page[-1] if len(rows) > limit else None
    return CallPage(
        data=page, next_cursor=encode_cursor(last.occurred_at, last.id) if last else None
    )


# ---------------------------------------------------------------- reported calls


async def report(runtime: Runtime, db: Db, identity: Identity, batch: EventBatch) -> IngestResult:
    """All or nothing: one event telemetry cannot store refuses the batch (422, with its
    index). A user's events are theirs: `user_id` is the caller, `api_key_id` the key used
    and `team_id` that key's team (none for a browser session or a personal key), as for
    the calls they make through inference: a team's calls are those of its keys."""
    refusal = refusals(runtime.retention, utcnow())
    errors = [
        {"loc": ["body", "events", index, "occurred_at"], "msg": reason, "type": "value_error"}
        for index, event in enumerate(batch.events)
        if (reason := refusal(event))
    ]
    if errors:
        raise Invalid("The batch has events that cannot be stored; see errors.",
                            errors=errors)  # fmt: skip
    events = batch.events
    if identity.kind != "service":
        owner = {
            "user_id": caller_id(identity),
            "api_key_id": identity.kid,
            "team_id": _team_of(identity),
        }
        events = [event.model_copy(update=owner) for event in events]
    inserted = await store(runtime, db, events, source="api")
    return IngestResult(received=len(events), inserted=inserted, duplicates=len(events) - inserted)


def _team_of(identity: Identity) -> uuid.UUID | None:
    """The team of the caller's key (the gateway signs auth's id: a UUID)."""
    try:
        return uuid.UUID(identity.team) if identity.team else None
    except ValueError:
        return None


# ---------------------------------------------------------------- spend


async def spend(db: Db, request: SpendRequest) -> Spend:
    """The exact cost of each query's scope's calls since its time, in order, as decimal
    strings (never an exponent: `0.000006000`, not `6.000E-6`)."""
    queries = [
        repository.SpendOf(
            scope=q.scope,
            key_id=q.id if q.scope == "key" else None,
            scope_id=uuid.UUID(q.id) if q.scope != "key" else None,
            since=_aware(q.since) if q.since else None,
        )
        for q in request.queries
    ]
    amounts = await repository.spend(db, queries)
    return Spend(spend_usd=[exact(amount) for amount in amounts])
