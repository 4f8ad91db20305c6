"""The per-day usage cache: answers identical to reading every call, any write to a closed
day invalidating it (whichever path wrote), pre-warm, scope keys, never a day it has not
validated. Real Postgres; the calls are committed (the cache lives across requests)."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from common.db import transaction
from common.identity import Identity
from common.llm_events import CallEvent, LlmCallEvent
from common.logging import configure_logging
from telemetry import repository, service
from telemetry.main import prewarm_usage
from telemetry.repository import Scope
from telemetry.runtime import Runtime
from telemetry.schemas import Usage

from .conftest import (
    WAITING_HERE,
    MakeConsumer,
    admin,
    append,
    as_json,
    call,
    eventually,
    member,
)

DAY = timedelta(days=1)
RETENTION = timedelta(days=90)
# What the triggers do to a day's epoch.
NEW_EPOCH = "UPDATE telemetry.usage_day_epoch SET epoch = nextval('telemetry.usage_day_epoch_seq')"
Client = Callable[[Identity], httpx.AsyncClient]


def midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def today() -> date:
    return datetime.now(UTC).date()


async def answer(runtime: Runtime, scope: Scope) -> Usage:
    """The service's answer: closed days from the cache where it is valid."""
    async with transaction(runtime.sessionmaker) as db:
        return await service.usage_in(runtime, db, scope=scope, group_by="day", percentiles="exact")


async def truth(engine: AsyncEngine, scope: Scope) -> Usage:
    """The same question answered from every call, without the cache."""
    async with engine.connect() as conn:
        rows = await repository.usage(conn, scope=scope, group_by="day")
    groups = [service.usage_group(row._mapping) for row in rows]
    return Usage(group_by="day", from_=scope.start, to=scope.end, groups=groups)


async def cached(engine: AsyncEngine, scope: Scope) -> dict[date, int]:
    """The scope's cached days that are valid (their epoch is current): day -> requests."""
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT c.day, c.requests FROM telemetry.usage_day c "
                "JOIN telemetry.usage_day_epoch e ON e.day = c.day AND e.epoch = c.epoch "
                "WHERE c.scope = :scope"
            ),
            {"scope": scope.key()},
        )
        return {row.day: row.requests for row in rows}


async def cached_and_true(runtime: Runtime, engine: AsyncEngine, scope: Scope) -> Usage:
    """The service's answer, checked against every call's; every closed day with calls is
    cached afterwards (one user's days without are not)."""
    found = await answer(runtime, scope)
    assert found.model_dump_json() == (await truth(engine, scope)).model_dump_json()
    assert {group.key for group in found.groups} <= set(await cached(engine, scope))
    return found


async def sql(engine: AsyncEngine, statement: str, **params: Any) -> None:
    async with engine.begin() as conn:
        await conn.execute(text(statement), params)


async def store(runtime: Runtime, events: list[CallEvent]) -> None:
    """Through the ingestion code (service.store), committed."""
    async with transaction(runtime.sessionmaker) as db:
        await service.store(runtime, db, events, source="api")


def with_retention(runtime: Runtime, *, days: int) -> Runtime:
    return replace(runtime, settings=runtime.settings.model_copy(update={"retention_days": days}))


def by_day(usage: Usage) -> dict[Any, int]:
    return {group.key: group.requests for group in usage.groups}


def random_calls(
    rng: random.Random, users: list[uuid.UUID], models: list[str], n: int, days: int
) -> list[CallEvent]:
    """Calls over the last `days` days and today: odd costs, some without, errors, some
    streamed, cached prompt and reasoning tokens reported or not, some answers replayed from
    the response cache (cost 0, an odd saving)."""
    now = time.time()
    events = []
    for _ in range(n):
        streamed = rng.random() < 0.5
        prompt, completion = rng.randrange(1, 5000), rng.randrange(0, 900)
        raw = call(
            rng.choice(users),
            occurred_at=now - rng.uniform(0, days * 86400),
            model=rng.choice(models),
            status="ok" if rng.random() < 0.9 else "upstream_error",
            prompt_tokens=prompt,
            completion_tokens=completion,
            cached_prompt_tokens=rng.randrange(0, prompt) if rng.random() < 0.6 else None,
            reasoning_tokens=rng.randrange(0, completion + 1) if rng.random() < 0.3 else None,
            cost_usd=f"{rng.randrange(0, 10**6) / 10**9:.9f}" if rng.random() < 0.9 else None,
            latency_ms=rng.uniform(5, 3000),
            stream=streamed,
            ttft_ms=rng.uniform(1, 400) if streamed else None,
        )
        if rng.random() < 0.15:  # replayed from the response cache, as inference records it
            raw = replace(
                raw, status="ok", attempts=0, prompt_tokens=0, completion_tokens=0,
                cached_prompt_tokens=None, reasoning_tokens=None, cost_usd="0.000000000",
                cache=rng.choice(("exact", "semantic")),
                saved_usd=f"{rng.randrange(1, 10**6) / 10**9:.9f}",
            )  # fmt: skip
        events.append(CallEvent.model_validate(as_json(raw)))
    return events


def test_ranges_are_read_one_utc_day_at_a_time() -> None:
    paris = timezone(timedelta(hours=1))
    start = datetime(2026, 3, 1, 23, 30, tzinfo=paris)  # 22:30 UTC on 1 March
    end = datetime(2026, 3, 3, 6, 0, tzinfo=UTC)
    later = (datetime(2026, 3, 5, tzinfo=UTC), datetime(2026, 3, 6, tzinfo=UTC))
    assert repository.day_parts([(start, end), later, (end, end)]) == [
        (date(2026, 3, 1), start, datetime(2026, 3, 2, tzinfo=UTC)),
        (date(2026, 3, 2), datetime(2026, 3, 2, tzinfo=UTC), datetime(2026, 3, 3, tzinfo=UTC)),
        (date(2026, 3, 3), datetime(2026, 3, 3, tzinfo=UTC), end),
        (date(2026, 3, 5), *later),
    ]


def test_ranges_are_split_at_the_per_day_window() -> None:
    lo, hi = datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 6, 1, tzinfo=UTC)
    before, inside = datetime(2020, 1, 1, tzinfo=UTC), datetime(2026, 4, 1, tzinfo=UTC)
    after = datetime(2030, 1, 1, tzinfo=UTC)
    assert repository.split_ranges([(before, after)], lo, hi) == (
        [(lo, hi)],
        [(before, lo), (hi, after)],
    )
    assert repository.split_ranges([(inside, after), (before, lo)], lo, hi) == (
        [(inside, hi)],
        [(hi, after), (before, lo)],
    )
    assert repository.split_ranges([(inside, inside)], lo, hi) == ([], [])


async def test_cached_answers_are_identical_to_reading_every_call(
    engine: AsyncEngine, runtime: Runtime
) -> None:
    rng = random.Random(6)
    users = [uuid.uuid4() for _ in range(3)]
    models = [f"test/cache-{uuid.uuid4().hex[:8]}", f"test/cache-{uuid.uuid4().hex[:8]}"]
    await store(runtime, random_calls(rng, users, models, 1500, days=6))
    now = datetime.now(UTC)
    first = today() - 5 * DAY
    ranges = {
        "partial first day, today included": (
            midnight(first) + timedelta(hours=7, minutes=13),
            now + timedelta(hours=1),
        ),
        "whole past days only": (midnight(first), midnight(today() - DAY)),
        "in the past, partial at both ends": (
            midnight(first) + timedelta(hours=3),
            midnight(today() - DAY) + timedelta(hours=5),
        ),
    }
    scopes = {
        "everyone": {"user_id": None},
        "one user": {"user_id": users[0]},
        "one model": {"user_id": None, "model": models[1]},
        "one user's model": {"user_id": users[1], "model": models[0]},
    }
    for range_name, (start, end) in ranges.items():
        for scope_name, filters in scopes.items():
            scope = Scope(start=start, end=end, **filters)
            expected_usage = await truth(engine, scope)
            expected = expected_usage.model_dump_json()
            where = f"{scope_name}, {range_name}"
            # Every kind of figure is there to compare, the response cache's too.
            assert expected_usage.totals.cache_hits > 0, where
            assert expected_usage.totals.saved_usd > 0, where
            assert (await answer(runtime, scope)).model_dump_json() == expected, where
            # The closed whole days of the range are cached now, and served from there.
            whole = [
                d
                for d in (first - DAY + n * DAY for n in range(8))
                if midnight(d) >= start and midnight(d) + DAY <= end and d < today()
            ]
            assert whole or range_name.startswith("partial first day"), where
            assert set(whole) <= set(await cached(engine, scope)), where
            assert (await answer(runtime, scope)).model_dump_json() == expected, where


async def one_cached_day(
    runtime: Runtime,
    engine: AsyncEngine,
    calls: Callable[[uuid.UUID, float], list[LlmCallEvent]],
    columns: str,
) -> tuple[Usage, tuple[Any, ...]]:
    """A user's calls of a closed day (`calls(user, noon)`), stored, then their usage asked
    for twice: computed (and checked against every call), then served from the cache,
    identical. That answer, and the cached day's `columns` as stored."""
    user = uuid.uuid4()
    day = today() - 2 * DAY
    noon = midnight(day).timestamp() + 43200
    await store(runtime, [CallEvent.model_validate(as_json(c)) for c in calls(user, noon)])
    scope = Scope(start=midnight(day), end=midnight(today()), user_id=user)
    first = await cached_and_true(runtime, engine, scope)  # computed, then stored
    async with engine.connect() as conn:
        stored = (
            await conn.execute(
                text(
                    f"SELECT {columns} FROM telemetry.usage_day WHERE scope = :scope AND day = :day"
                ),
                {"scope": scope.key(), "day": day},
            )
        ).one()
    again = await cached_and_true(runtime, engine, scope)  # served from the cache
    assert again.model_dump_json() == first.model_dump_json()
    return again, tuple(stored)


async def test_a_cached_day_holds_the_token_details_and_unpriced_calls(
    engine: AsyncEngine, runtime: Runtime
) -> None:
    """The figures added in telemetry_0005 come from the cache as from the calls."""

    def calls(user: uuid.UUID, noon: float) -> list[LlmCallEvent]:
        return [
            call(user, occurred_at=noon, cached_prompt_tokens=5, reasoning_tokens=2),
            call(user, occurred_at=noon + 1, cached_prompt_tokens=7, cost_usd=None),
            call(user, occurred_at=noon + 2, cost_usd=None, status="upstream_error"),
            call(user, occurred_at=noon + 3),  # neither reported
        ]

    columns = "cached_prompt_tokens, reasoning_tokens, unpriced_calls"
    answer, stored = await one_cached_day(runtime, engine, calls, columns)
    assert stored == (12, 2, 1)
    figures = answer.groups[0]
    assert (figures.cached_prompt_tokens, figures.reasoning_tokens, figures.unpriced_calls) == (
        12, 2, 1
    )  # fmt: skip
    assert answer.totals.unpriced_calls == 1


async def test_a_cached_day_is_served_only_while_its_epoch_is_current(
    engine: AsyncEngine,
    runtime: Runtime,
) -> None:
    user = uuid.uuid4()
    day = today() - 2 * DAY
    noon = midnight(day).timestamp() + 43200
    await store(
        runtime,
        [CallEvent.model_validate(as_json(call(user, occurred_at=noon + i))) for i in range(5)],
    )
    scope = Scope(start=midnight(day - DAY), end=midnight(today()), user_id=user)
    assert by_day(await answer(runtime, scope)) == {day: 5}
    assert (await cached(engine, scope))[day] == 5

    # Corrupt the cached figure, epoch untouched: the cache is what answers.
    await sql(
        engine,
        "UPDATE telemetry.usage_day SET requests = 424242 WHERE scope = :scope AND day = :day",
        scope=scope.key(),
        day=day,
    )
    assert by_day(await answer(runtime, scope)) == {day: 424242}

    # A new epoch for the day: the corrupted row is no longer valid, the true figure returns.
    await sql(engine, NEW_EPOCH + " WHERE day = :day", day=day)
    assert by_day(await answer(runtime, scope)) == {day: 5}
    assert (await cached(engine, scope))[day] == 5  # computed again and stored


async def test_a_late_call_from_the_stream_changes_the_next_answer(
    engine: AsyncEngine, runtime: Runtime, redis: Redis, consumers: MakeConsumer
) -> None:
    user = uuid.uuid4()
    day = today() - 3 * DAY
    noon = midnight(day).timestamp() + 43200
    await store(runtime, [CallEvent.model_validate(as_json(call(user, occurred_at=noon)))])
    scope = Scope(start=midnight(day), end=midnight(today()), user_id=user)
    assert by_day(await answer(runtime, scope)) == {day: 1}
    assert day in await cached(engine, scope)

    async with consumers():
        await append(redis, [call(user, occurred_at=noon + 60)])

        async def counted() -> bool:
            return by_day(await answer(runtime, scope)) == {day: 2}

        await eventually(counted)
    assert (await answer(runtime, scope)).model_dump_json() == (
        await truth(engine, scope)
    ).model_dump_json()


async def test_a_late_call_reported_over_http_changes_the_next_answer(
    client: Client, app: FastAPI
) -> None:
    """Through POST /v1/events and GET /v1/usage (one rolled-back transaction)."""
    who = member()
    day = today() - 2 * DAY
    noon = midnight(day).timestamp() + 43200
    params = {
        "group_by": "day",
        "percentiles": "exact",
        "from": midnight(day).isoformat(),
        "to": midnight(today()).isoformat(),
    }
    async with client(who) as http:
        first = [as_json(call(who, occurred_at=noon + i)) for i in range(3)]
        assert (await http.post("/v1/events", json={"events": first})).is_success
        usage = (await http.get("/v1/usage", params=params)).json()["groups"]
        assert [(g["key"], g["requests"]) for g in usage] == [(day.isoformat(), 3)]
        async with app.state.sessionmaker() as session:
            stored = await session.execute(
                text("SELECT requests FROM telemetry.usage_day WHERE scope LIKE :who ORDER BY day"),
                {"who": f'%"{who.sub}"%'},
            )
            # The day after had no calls: one user's scope keeps only the days with calls.
            assert stored.scalars().all() == [3]

        late = [as_json(call(who, occurred_at=noon + 99, latency_ms=9999.0))]
        assert (await http.post("/v1/events", json={"events": late})).is_success
        usage = (await http.get("/v1/usage", params=params)).json()["groups"]
    assert [(g["key"], g["requests"]) for g in usage] == [(day.isoformat(), 4)]
    assert usage[0]["latency_ms_p95"] > 5000


async def test_direct_sql_inserts_updates_and_deletes_invalidate_the_days_they_touch(
    engine: AsyncEngine,
    runtime: Runtime,
) -> None:
    user = uuid.uuid4()
    day, other = today() - 4 * DAY, today() - 2 * DAY
    events = [  # 01:00 to 04:00 of both days
        CallEvent.model_validate(as_json(call(user, occurred_at=at, latency_ms=100.0 + i)))
        for d in (day, other)
        for i, at in enumerate(midnight(d).timestamp() + 3600 * hour for hour in range(1, 5))
    ]
    await store(runtime, events)
    scope = Scope(start=midnight(day), end=midnight(today()), user_id=user)

    async def agrees() -> Usage:
        return await cached_and_true(runtime, engine, scope)

    assert by_day(await agrees()) == {day: 4, other: 4}

    # An INSERT that is not the service's (a bench, an operator).
    await sql(
        engine,
        "INSERT INTO telemetry.llm_call (occurred_at, id, source, user_id, operation, provider, "
        "model, status, usage_estimated, latency_ms, stream, attempts, fallback) VALUES "
        "(:at, gen_random_uuid(), 'api', :user, 'chat', 'openai', 'm', 'ok', false, 5000, "
        "false, 1, false)",
        at=midnight(day) + timedelta(hours=20),
        user=user,
    )
    assert by_day(await agrees()) == {day: 5, other: 4}

    before = {g.key: g.latency_ms_p50 for g in (await agrees()).groups}
    await sql(
        engine,
        "UPDATE telemetry.llm_call SET latency_ms = latency_ms * 10 "
        "WHERE user_id = :user AND occurred_at >= :start AND occurred_at < :end",
        user=user,
        start=midnight(other),
        end=midnight(other) + DAY,
    )
    after = {g.key: g.latency_ms_p50 for g in (await agrees()).groups}
    assert after[day] == before[day]
    assert after[other] == pytest.approx(before[other] * 10)

    # A call moved from one day to the other: both change.
    await sql(
        engine,
        "UPDATE telemetry.llm_call SET occurred_at = occurred_at + :shift "
        "WHERE user_id = :user AND occurred_at = :at",
        user=user,
        shift=other - day,
        at=midnight(day) + timedelta(hours=1),
    )
    assert by_day(await agrees()) == {day: 4, other: 5}

    await sql(
        engine,
        "DELETE FROM telemetry.llm_call WHERE user_id = :user AND "
        "occurred_at >= :start AND occurred_at < :end",
        user=user,
        start=midnight(other),
        end=midnight(other) + DAY,
    )
    assert by_day(await agrees()) == {day: 4}


async def test_todays_writes_bump_no_epoch(engine: AsyncEngine, runtime: Runtime) -> None:
    """Today is never cached, and no writer waits on its row."""
    await store(runtime, [CallEvent.model_validate(as_json(call(uuid.uuid4())))])
    async with engine.connect() as conn:
        epochs = await conn.execute(
            text("SELECT count(*) FROM telemetry.usage_day_epoch WHERE day >= :today"),
            {"today": today()},
        )
        assert epochs.scalar() == 0


async def test_prewarm_fills_everyones_closed_days_one_replica_at_a_time(
    engine: AsyncEngine,
    runtime: Runtime,
) -> None:
    rng = random.Random(7)
    await store(runtime, random_calls(rng, [uuid.uuid4()], ["test/prewarm"], 300, days=4))
    async with engine.connect() as holder:  # another replica, refreshing
        await holder.execute(text("SELECT pg_advisory_lock(hashtext('telemetry:usage-cache'))"))
        try:
            assert await service.refresh_usage_cache(runtime) is None
        finally:
            await holder.execute(
                text("SELECT pg_advisory_unlock(hashtext('telemetry:usage-cache'))")
            )

    assert await service.refresh_usage_cache(runtime) >= 3
    window = Scope(start=midnight(today() - 31 * DAY), end=midnight(today()), user_id=None)
    last_31 = {today() - n * DAY for n in range(1, 32)}
    assert last_31 <= set(await cached(engine, window))
    assert (await answer(runtime, window)).model_dump_json() == (
        await truth(engine, window)
    ).model_dump_json()
    assert await service.refresh_usage_cache(runtime) == 0
    # Bounded by retention: with 2 days kept, only yesterday is (re)considered.
    await sql(engine, NEW_EPOCH)
    assert await service.refresh_usage_cache(with_retention(runtime, days=2)) == 1


async def test_members_never_see_anothers_cached_days(
    engine: AsyncEngine, runtime: Runtime, client: Client, app: FastAPI
) -> None:
    alice, bob, root = member(), member(), admin()
    day = today() - 2 * DAY
    noon = midnight(day).timestamp() + 43200
    await store(
        runtime,
        [
            CallEvent.model_validate(as_json(call(who, occurred_at=noon + i)))
            for i, who in enumerate([alice, bob, bob])
        ],
    )
    params = {
        "group_by": "day",
        "percentiles": "exact",
        "from": midnight(day).isoformat(),
        "to": midnight(day + DAY).isoformat(),
    }

    async def requests(who: Identity, **extra: str) -> list[tuple[str, int]]:
        async with client(who) as http:
            response = await http.get("/v1/usage", params={**params, **extra})
        assert response.status_code == 200, response.text
        return [(g["key"], g["requests"]) for g in response.json()["groups"]]

    # Everyone's and bob's days cached, then made unmistakable.
    everyone = (await requests(root))[0][1]
    assert await requests(root, user=bob.sub) == [(day.isoformat(), 2)]
    async with app.state.sessionmaker() as session:  # the API's (rolled-back) transaction
        await session.execute(
            text("UPDATE telemetry.usage_day SET requests = 777 WHERE day = :day"), {"day": day}
        )
        await session.commit()
    assert await requests(root) == [(day.isoformat(), 777)]
    assert await requests(bob) == [(day.isoformat(), 777)]  # his key: the same as user=bob
    assert await requests(alice) == [(day.isoformat(), 1)]
    assert everyone >= 3


async def test_made_up_filters_do_not_grow_the_cache(
    engine: AsyncEngine, runtime: Runtime, client: Client, app: FastAPI
) -> None:
    """A viewer asking for 90 days of a model name that matches nothing, again and again
    with new names, stores nothing: a scope keeps only the days it had calls on (everyone's
    unfiltered days excepted), so the cache is bounded by the calls, not by the requests."""
    viewer = member()
    day = today() - 3 * DAY
    model = f"test/real-{uuid.uuid4().hex[:8]}"
    noon = midnight(day).timestamp() + 43200
    await store(runtime, [CallEvent.model_validate(as_json(call(viewer, occurred_at=noon,
                                                               model=model)))])  # fmt: skip
    window = {
        "group_by": "day",
        "percentiles": "exact",
        "from": midnight(today() - 90 * DAY).isoformat(),
    }

    async with client(viewer) as http:
        made_up = [
            await http.get("/v1/usage", params={**window, "model": f"junk-{n}"}) for n in range(5)
        ]
        mine = await http.get("/v1/usage", params=window)
        real = await http.get("/v1/usage", params={**window, "model": model})

    assert [r.status_code for r in made_up] == [200] * 5
    assert all(r.json()["groups"] == [] for r in made_up)
    assert [(g["key"], g["requests"]) for g in mine.json()["groups"]] == [(day.isoformat(), 1)]
    assert [(g["key"], g["requests"]) for g in real.json()["groups"]] == [(day.isoformat(), 1)]
    async with app.state.sessionmaker() as session:  # the API's (rolled-back) transaction
        rows = await session.execute(
            text("SELECT scope, day FROM telemetry.usage_day WHERE scope LIKE :mine"),
            {"mine": f'%"user":"{viewer.sub}"%'},
        )
        stored = sorted((json.loads(row.scope)["model"] or "", row.day) for row in rows)
    assert stored == [("", day), (model, day)]


async def a_call_of_an_unmarked_day(runtime: Runtime, engine: AsyncEngine, day: date) -> Scope:
    """A new user's call of `day`, stored; then the day as if it had just ended: nobody has
    marked it closed yet (nothing cached either). That user's scope of the day."""
    user = uuid.uuid4()
    await store(
        runtime,
        [CallEvent.model_validate(as_json(call(user, occurred_at=midnight(day).timestamp() + 60)))],
    )
    await sql(engine, "DELETE FROM telemetry.usage_day_epoch WHERE day = :day", day=day)
    await sql(engine, "DELETE FROM telemetry.usage_day WHERE day = :day", day=day)
    return Scope(start=midnight(day), end=midnight(day + DAY), user_id=user)


async def test_no_day_is_cached_from_a_snapshot_that_missed_a_writer_still_in_flight(
    engine: AsyncEngine,
    runtime: Runtime,
) -> None:
    """A writer whose trigger ran before midnight skipped the bump; the day may be cached
    only from a snapshot that saw every transaction older than the day's close finish."""
    day = today() - 20 * DAY
    scope = await a_call_of_an_unmarked_day(runtime, engine, day)
    async with engine.connect() as in_flight:  # holds a transaction id, not committed
        await in_flight.execute(text("SELECT pg_current_xact_id()"))
        assert by_day(await answer(runtime, scope)) == {day: 1}
        assert await cached(engine, scope) == {}
        await in_flight.rollback()
    assert by_day(await answer(runtime, scope)) == {day: 1}
    assert await cached(engine, scope) == {day: 1}


async def test_a_failed_store_is_logged_and_the_answer_still_given(
    engine: AsyncEngine, runtime: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    user = uuid.uuid4()
    day = today() - 3 * DAY
    await store(
        runtime,
        [CallEvent.model_validate(as_json(call(user, occurred_at=midnight(day).timestamp() + 60)))],
    )
    scope = Scope(start=midnight(day), end=midnight(today()), user_id=user)
    await sql(
        engine,
        "ALTER TABLE telemetry.usage_day ADD CONSTRAINT refuse_all CHECK (requests < 0) NOT VALID",
    )
    configure_logging("telemetry")  # as the service's process: structlog through logging
    logger = logging.getLogger("telemetry.service")
    logger.addHandler(caplog.handler)  # configure_logging replaced the root's handlers
    try:
        assert by_day(await answer(runtime, scope)) == {day: 1}
    finally:
        logger.removeHandler(caplog.handler)
        await sql(engine, "ALTER TABLE telemetry.usage_day DROP CONSTRAINT refuse_all")
    failures = [r.getMessage() for r in caplog.records if "usage cache write failed" in str(r.msg)]
    assert len(failures) == 1
    assert "store usage days" in failures[0]
    assert "refuse_all" in failures[0]
    assert await cached(engine, scope) == {}


async def test_retention_deletes_cached_days_and_epochs_past_the_horizon(
    engine: AsyncEngine,
    runtime: Runtime,
) -> None:
    old, recent = today() - 200 * DAY, today() - 2 * DAY
    for day in (old, recent):
        await sql(
            engine,
            "INSERT INTO telemetry.usage_day_epoch (day, epoch) VALUES (:day, 7) "
            "ON CONFLICT (day) DO NOTHING",
            day=day,
        )
        await sql(
            engine,
            "INSERT INTO telemetry.usage_day (scope, day, epoch, requests, errors, "
            "prompt_tokens, completion_tokens, cached_prompt_tokens, reasoning_tokens, "
            "cost_usd, unpriced_calls, cache_hits, saved_usd) VALUES ('retention-test', :day, 7, "
            "1, 0, 0, 0, 0, 0, 0, 0, 0, 0)",
            day=day,
        )
    await service.maintain(runtime)
    async with engine.connect() as conn:
        days = await conn.execute(
            text("SELECT day FROM telemetry.usage_day WHERE scope = 'retention-test'")
        )
        assert days.scalars().all() == [recent]
        epochs = await conn.execute(
            text("SELECT day FROM telemetry.usage_day_epoch WHERE day IN (:old, :recent)"),
            {"old": old, "recent": recent},
        )
        assert epochs.scalars().all() == [recent]


async def test_a_prewarm_cancelled_inside_a_query_stops_and_frees_its_lock(
    engine: AsyncEngine, runtime: Runtime
) -> None:
    """A service stopping while its pre-warm waits on the database: the loop ends (it does
    not take the cancellation for one more failure to log), and the lock is free."""
    yesterday = today() - DAY
    await sql(
        engine,
        "INSERT INTO telemetry.usage_day_epoch (day, epoch) VALUES "
        "(:day, nextval('telemetry.usage_day_epoch_seq')) "
        "ON CONFLICT (day) DO UPDATE SET closed_xid = NULL",
        day=yesterday,
    )
    async with engine.connect() as blocker:  # the pre-warm will wait to mark yesterday
        await blocker.execute(
            text("SELECT 1 FROM telemetry.usage_day_epoch WHERE day = :day FOR UPDATE"),
            {"day": yesterday},
        )
        loop = asyncio.create_task(prewarm_usage(runtime, 3600))

        async def waiting() -> bool:
            async with engine.connect() as conn:
                found = await conn.execute(WAITING_HERE)
                return bool(found.scalar())

        await eventually(waiting)
        loop.cancel()
        done, _ = await asyncio.wait({loop}, timeout=10)
        if not done:  # still looping: stop it for good before failing
            loop.cancel()
            await asyncio.gather(loop, return_exceptions=True)
        assert done, "the pre-warm loop went on after it was cancelled"
        assert loop.cancelled()
        await blocker.rollback()
    assert await service.refresh_usage_cache(runtime) is not None
