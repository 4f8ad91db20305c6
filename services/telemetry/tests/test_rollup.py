"""The rollups (rollup_hour, rollup_day): whatever writes the calls, in any order and
however often, their answers equal those of reading every call, for any range, filter and
grouping, and so does every key's, user's and team's spend. Real Postgres; the calls are
committed (the rollup is kept by triggers in the writers' transactions)."""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from common.db import transaction
from common.identity import Identity
from common.llm_events import STREAM, CallEvent
from telemetry import histograms, repository, service
from telemetry.histograms import RELATIVE_ERROR
from telemetry.repository import Scope, SpendOf
from telemetry.runtime import Runtime
from telemetry.schemas import GroupBy, Usage

from .conftest import (
    MakeConsumer,
    admin,
    append,
    as_json,
    call,
    eventually,
    member,
    usage_of,
    wait_stored,
)
from .test_usage_cache import random_calls, sql, store

GROUPINGS: tuple[GroupBy, ...] = ("day", "model", "provider", "user", "key", "team")
Client = Callable[[Identity], httpx.AsyncClient]


async def from_rollup(runtime: Runtime, scope: Scope, group_by: GroupBy) -> Usage:
    """The service's answer without percentiles: whole hours from the rollup."""
    async with transaction(runtime.sessionmaker) as db:
        return await service.usage_in(
            runtime, db, scope=scope, group_by=group_by, percentiles="none"
        )


async def from_calls(engine: AsyncEngine, scope: Scope, group_by: GroupBy) -> Usage:
    """The same question answered by reading every call, its percentiles left out."""
    async with engine.connect() as conn:
        rows = await repository.usage(conn, scope=scope, group_by=group_by)
    groups = [
        service.usage_group(row._mapping).model_copy(update=dict.fromkeys(service.PERCENTILES))
        for row in rows
    ]
    return Usage(group_by=group_by, from_=scope.start, to=scope.end, groups=groups)


async def approximate_and_exact(
    runtime: Runtime, engine: AsyncEngine, scope: Scope, group_by: GroupBy
) -> tuple[Usage, Usage]:
    """The default answer (approximate percentiles, from the rollups) and percentile_cont's
    over every call."""
    async with transaction(runtime.sessionmaker) as db:
        found = await service.usage_in(runtime, db, scope=scope, group_by=group_by)
    async with engine.connect() as conn:
        rows = await repository.usage(conn, scope=scope, group_by=group_by)
    exact = [service.usage_group(row._mapping) for row in rows]
    return found, Usage(group_by=group_by, from_=scope.start, to=scope.end, groups=exact)


async def assert_same(runtime: Runtime, engine: AsyncEngine, scope: Scope, where: str) -> None:
    """Without percentiles, the same answer as every call gives; with the approximate ones,
    the same but for them, and they are within the stated error of percentile_cont's."""
    for group_by in GROUPINGS:
        expected = await from_calls(engine, scope, group_by)
        found = await from_rollup(runtime, scope, group_by)
        assert found.model_dump_json() == expected.model_dump_json(), f"{where}, by {group_by}"
        near, exact = await approximate_and_exact(runtime, engine, scope, group_by)
        for approximate, right in zip(near.groups, exact.groups, strict=True):
            for name in service.PERCENTILES:
                assert_near(getattr(approximate, name), getattr(right, name))
        blank = dict.fromkeys(service.PERCENTILES)
        assert [g.model_copy(update=blank) for g in near.groups] == expected.groups, where


def assert_near(found: float | None, exact: float | None) -> None:
    """An approximate percentile is within the stated error of the exact one (both None
    when there is no value)."""
    if exact is None:
        assert found is None
    else:
        assert found == pytest.approx(exact, rel=RELATIVE_ERROR)


async def spend_from_calls(engine: AsyncEngine, query: SpendOf) -> Decimal:
    column = {"key": "api_key_id", "user": "user_id", "team": "team_id"}[query.scope]
    async with engine.connect() as conn:
        found = await conn.scalar(
            text(
                f"SELECT coalesce(sum(cost_usd), 0) FROM telemetry.llm_call "
                f"WHERE {column} = :id "
                "AND occurred_at >= coalesce(CAST(:since AS timestamptz), '-infinity')"
            ),
            {"id": query.key_id or query.scope_id, "since": query.since},
        )
    return Decimal(found)


async def cells(engine: AsyncEngine, user: uuid.UUID, unit: str = "hour") -> list[tuple[Any, ...]]:
    """A user's cells in a rollup, figures and all."""
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                f"SELECT * FROM telemetry.rollup_{unit} WHERE user_id = :u "
                "ORDER BY 1, 3, 4, 5, 6, 7"
            ),
            {"u": user},
        )
        return [tuple(row) for row in rows]


def owned(rng: random.Random, events: list[CallEvent], keys: list[str],
          teams: list[uuid.UUID]) -> list[CallEvent]:  # fmt: skip
    """The calls spread over API keys (some from a browser session: none) and teams (some
    personal: none)."""
    return [
        event.model_copy(
            update={
                "api_key_id": rng.choice([*keys, None]),
                "team_id": rng.choice([*teams, None]),
            }
        )
        for event in events
    ]


async def test_the_rollup_answers_as_every_call_does_for_any_range_and_filter(
    engine: AsyncEngine, runtime: Runtime
) -> None:
    rng = random.Random(22)
    users = [uuid.uuid4() for _ in range(3)]
    models = [f"test/rollup-{uuid.uuid4().hex[:8]}" for _ in range(2)]
    keys = [f"key-{uuid.uuid4().hex[:8]}" for _ in range(3)]
    teams = [uuid.uuid4() for _ in range(2)]
    events = owned(rng, random_calls(rng, users, models, 1200, days=4), keys, teams)
    # In batches of any size and order, as the stream and POST /v1/events write them.
    rng.shuffle(events)
    while events:
        size = rng.randrange(1, 200)
        batch, events = events[:size], events[size:]
        await store(runtime, batch)
    now = datetime.now(UTC)
    hour = now.replace(minute=0, second=0, microsecond=0)
    ranges = [
        (now - timedelta(days=5), now + timedelta(hours=1)),  # every call
        (hour - timedelta(days=2), hour),  # whole hours only
        (hour - timedelta(minutes=20), hour + timedelta(minutes=40)),  # two partial hours
        (hour + timedelta(minutes=5), hour + timedelta(minutes=30)),  # inside one hour
        (now, now),  # empty
    ]
    for _ in range(6):  # and random ones, to the microsecond
        start = now - timedelta(seconds=rng.uniform(0, 5 * 86400))
        ranges.append((start, start + timedelta(seconds=rng.uniform(0, 3 * 86400))))
    scopes = [
        {"user_id": None},
        {"user_id": users[0]},
        {"user_id": None, "model": models[1]},
        {"user_id": users[1], "model": models[0]},
        {"user_id": None, "team_id": teams[0]},
        {"user_id": users[2], "team_id": teams[1]},
    ]
    for start, end in ranges:
        for filters in scopes:
            scope = Scope(start=start, end=end, **filters)
            await assert_same(runtime, engine, scope, f"{filters}, {start} to {end}")

    # Spend: each key's, user's and team's since random times (and ever), exact.
    sinces = [None, now - timedelta(days=6), hour, hour - timedelta(seconds=1)]
    sinces += [now - timedelta(seconds=rng.uniform(0, 5 * 86400)) for _ in range(4)]
    queries = [
        SpendOf(scope=scope, key_id=key, scope_id=scope_id, since=since)
        for since in sinces
        for scope, key, scope_id in (
            *(("key", key, None) for key in keys),
            *(("user", None, user) for user in users),
            *(("team", None, team) for team in teams),
        )
    ]
    async with engine.connect() as conn:
        found = await repository.spend(conn, queries)
    expected = [await spend_from_calls(engine, query) for query in queries]
    assert [str(amount) for amount in found] == [str(amount) for amount in expected]
    assert all(amount > 0 for amount, query in zip(found, queries, strict=True) if not query.since)


async def test_approximate_percentiles_are_within_two_percent_for_any_distribution(
    engine: AsyncEngine, runtime: Runtime
) -> None:
    """Latencies and TTFTs drawn from wide, narrow, constant and two-peaked distributions
    (one user each), some groups without a streamed call (no TTFT), read over random ranges
    and every grouping: each approximate p50, p95 and TTFT p50 is within 1.98 % of
    percentile_cont's."""
    rng = random.Random(2222)
    draws: list[Callable[[], float]] = [
        lambda: rng.lognormvariate(5.7, 1.5),  # ~1 ms to ~100 s
        lambda: 250.0,
        lambda: rng.choice((40.0, 4000.0)) * rng.uniform(1, 1.1),
        lambda: rng.uniform(0.2, 20),
        lambda: rng.expovariate(1 / 800),
    ]
    users = [uuid.uuid4() for _ in draws]
    models = [f"test/pct-{uuid.uuid4().hex[:8]}" for _ in range(2)]  # models[1]: no streams
    now = datetime.now(UTC)
    events = []
    for user, draw in zip(users, draws, strict=True):
        for _ in range(150):
            model = rng.choice(models)
            streamed = model == models[0] and rng.random() < 0.7
            at = now - timedelta(seconds=rng.uniform(0, 3 * 86400))
            raw = call(user, occurred_at=at.timestamp(), model=model, latency_ms=draw(),
                       stream=streamed, ttft_ms=draw() / 3 if streamed else None)  # fmt: skip
            events.append(CallEvent.model_validate(as_json(raw)))
    rng.shuffle(events)
    while events:
        size = rng.randrange(1, 300)
        batch, events = events[:size], events[size:]
        await store(runtime, batch)
    ranges = [(now - timedelta(days=4), now + timedelta(hours=1))]
    for _ in range(4):
        start = now - timedelta(seconds=rng.uniform(0, 3 * 86400))
        ranges.append((start, start + timedelta(seconds=rng.uniform(3600, 2 * 86400))))
    for start, end in ranges:
        for filters in ({"user_id": None, "model": models[0]}, {"user_id": None,
                        "model": models[1]}, *({"user_id": u} for u in users)):  # fmt: skip
            scope = Scope(start=start, end=end, **filters)
            await assert_same(runtime, engine, scope, f"{filters}, {start} to {end}")
    scope = Scope(start=now - timedelta(days=4), end=now, user_id=None, model=models[1])
    near, _ = await approximate_and_exact(runtime, engine, scope, "model")
    assert near.groups[0].ttft_ms_p50 is None  # no call streamed
    assert near.groups[0].latency_ms_p50 is not None


async def test_latencies_outside_the_range_are_clamped_to_its_ends(
    engine: AsyncEngine, runtime: Runtime
) -> None:
    """0 ms reads as the first bucket (0.102 ms), 1e12 ms (31 years) as the last (23.9
    hours); the exact percentiles say what they are."""
    user = uuid.uuid4()
    now = datetime.now(UTC).timestamp()
    calls = [(0.0, 0.0), (0.0, 0.0), (0.0, 0.0), (1e12, 1e12)]
    await store(runtime, [
        CallEvent.model_validate(as_json(call(user, occurred_at=now - 60 - i, latency_ms=latency,
                                              stream=True, ttft_ms=ttft)))
        for i, (latency, ttft) in enumerate(calls)
    ])  # fmt: skip
    scope = Scope(start=datetime.now(UTC) - timedelta(days=1), end=datetime.now(UTC),
                  user_id=user)  # fmt: skip
    near, exact = await approximate_and_exact(runtime, engine, scope, "user")
    assert (exact.groups[0].latency_ms_p50, exact.groups[0].ttft_ms_p50) == (0.0, 0.0)
    first, last = histograms.bucket_value(0), histograms.bucket_value(histograms.BUCKETS - 1)
    assert near.groups[0].latency_ms_p50 == near.groups[0].ttft_ms_p50 == first
    assert first == pytest.approx(0.102, abs=0.001)
    assert last == pytest.approx(23.86 * 3600_000, rel=0.001)
    # p95: 95 % of the way from the third value (0) to the fourth (1e12), each clamped.
    assert exact.groups[0].latency_ms_p95 == pytest.approx(0.85 * 1e12)
    assert near.groups[0].latency_ms_p95 == pytest.approx(first + 0.85 * (last - first))


def test_a_histogram_reads_as_percentile_cont_over_its_buckets_midpoints() -> None:
    """Ranks and interpolation as percentile_cont's, over the midpoints; nothing: None."""
    value = histograms.bucket_value
    # Bucket 100 three times, bucket 200 once.
    entries = [3 * 1024 + 100, 1 * 1024 + 200]
    assert histograms.percentile(entries, 0.5) == value(100)
    assert histograms.percentile(entries, 1.0) == value(200)
    assert histograms.percentile(entries, 0.9) == pytest.approx(
        value(100) + 0.7 * (value(200) - value(100))
    )
    assert histograms.percentile([], 0.5) is None
    assert histograms.percentile(None, 0.5) is None
    assert histograms.percentile([1024 + 7], 0.95) == value(7)


async def test_updates_and_deletes_of_calls_reach_the_rollup(
    engine: AsyncEngine, runtime: Runtime
) -> None:
    """An operator's UPDATE (a call moved to another hour, its cost removed, its status
    changed) and DELETE take the old rows out of their cells; a cell left without calls
    is gone, and one left without priced calls reads 0, as the calls do."""
    rng = random.Random(7)
    user = uuid.uuid4()
    model = f"test/rollup-{uuid.uuid4().hex[:8]}"
    await store(runtime, random_calls(rng, [user], [model], 300, days=2))
    scope = Scope(start=datetime.now(UTC) - timedelta(days=3),
                  end=datetime.now(UTC) + timedelta(hours=1), user_id=user)  # fmt: skip
    await sql(
        engine,
        "UPDATE telemetry.llm_call SET occurred_at = occurred_at - interval '90 minutes', "
        "cost_usd = NULL, status = 'upstream_error' "
        "WHERE user_id = :u AND occurred_at < now() - interval '1 day'",
        u=user,
    )
    await assert_same(runtime, engine, scope, "after an update")
    await sql(
        engine,
        "DELETE FROM telemetry.llm_call WHERE user_id = :u AND occurred_at > now() - interval "
        "'12 hours'",
        u=user,
    )
    await assert_same(runtime, engine, scope, "after a delete")
    await sql(engine, "UPDATE telemetry.llm_call SET cost_usd = NULL WHERE user_id = :u", u=user)
    await assert_same(runtime, engine, scope, "without any price")
    for unit in ("hour", "day"):
        assert all(cell[7] > 0 for cell in await cells(engine, user, unit))  # requests
    await sql(engine, "DELETE FROM telemetry.llm_call WHERE user_id = :u", u=user)
    assert await cells(engine, user) == await cells(engine, user, "day") == []


async def test_late_redelivered_and_dead_lettered_stream_entries_count_once(
    redis: Redis, engine: AsyncEngine, runtime: Runtime, consumers: MakeConsumer
) -> None:
    """Through the stream consumer: calls of past hours arriving late, the same events
    delivered again, malformed entries among them: the rollup counts each stored call once
    and nothing else."""
    user = uuid.uuid4()
    now = datetime.now(UTC).timestamp()
    events = [call(user, occurred_at=now - n * 1800, cost_usd=f"0.00000{n % 10}123")
              for n in range(40)]  # fmt: skip
    await append(redis, events[:20])
    await redis.xadd(STREAM, {"event": "{not json"})
    bad = json.loads(call(user).to_fields()["event"]) | {"prompt_tokens": "many"}
    await redis.xadd(STREAM, {"event": json.dumps(bad)})
    async with consumers(batch_size=7):
        await wait_stored(engine, user, 20)
        await append(redis, events)  # the first 20 again, and 20 late ones
        await append(redis, events[::3])
        await wait_stored(engine, user, 40)

        async def drained() -> bool:
            return bool((await redis.xpending(STREAM, "telemetry"))["pending"] == 0)

        await eventually(drained)
    scope = Scope(start=datetime.fromtimestamp(now - 86400, UTC),
                  end=datetime.fromtimestamp(now + 3600, UTC), user_id=user)  # fmt: skip
    await assert_same(runtime, engine, scope, "through the stream")
    for unit in ("hour", "day"):
        assert sum(cell[7] for cell in await cells(engine, user, unit)) == 40


async def test_reported_batches_sent_twice_count_once_and_views_are_unchanged(
    client: Client,
) -> None:
    """POST /v1/events twice; GET /v1/usage answers every figure but the percentiles as
    with the exact ones (percentiles=exact), with them approximate by default and none with
    percentiles=false; a member their own calls only, an admin everyone's."""
    alice, bob = member(), member()
    hour_ago = datetime.now(UTC).timestamp() - 3600
    mine = [as_json(call(alice, occurred_at=hour_ago - n * 60)) for n in range(5)]
    async with client(alice) as http:
        for _ in range(2):
            response = await http.post("/v1/events", json={"events": mine})
            assert response.status_code == 200, response.text
        assert response.json()["inserted"] == 0
    async with client(bob) as http:
        await http.post("/v1/events", json={"events": [as_json(call(bob))]})
    since = datetime.fromtimestamp(hour_ago - 86400, UTC).isoformat()
    until = datetime.now(UTC).isoformat()
    for who, user in ((alice, alice.sub), (bob, bob.sub), (admin(), alice.sub)):
        async with client(who) as http:
            for group_by in GROUPINGS:
                params = {"group_by": group_by, "user": user, "from": since, "to": until}
                exact = await usage_of(http, **params, percentiles="exact")
                approximate = await usage_of(http, **params)
                summed = await usage_of(http, **params, percentiles="false")
                assert all(
                    group[name] is None
                    for group in summed["groups"]
                    for name in service.PERCENTILES
                )
                for near, right in zip(approximate["groups"], exact["groups"], strict=True):
                    for name in service.PERCENTILES:
                        assert_near(near[name], right[name])
                        near[name] = right[name] = None
                assert summed == exact == approximate, (who.sub, group_by)
            assert summed["totals"]["requests"] == (5 if user == alice.sub else 1)
    async with client(bob) as http:
        response = await http.get("/v1/usage", params={"user": alice.sub, "percentiles": "false"})
        assert response.status_code == 403
        assert response.headers["content-type"] == "application/problem+json"
        response = await http.get("/v1/usage", params={"percentiles": "sometimes"})
        assert response.status_code == 422


def test_a_range_is_read_as_whole_days_whole_hours_and_partial_hours() -> None:
    day = datetime(2026, 3, 1, tzinfo=UTC)
    hour = timedelta(hours=1)
    start, end = day + timedelta(hours=22, minutes=30), day + timedelta(days=3, hours=1, minutes=1)
    assert repository.rollup_parts(start, end) == [
        ("calls", start, day + 23 * hour),
        ("hour", day + 23 * hour, day + 24 * hour),
        ("day", day + 24 * hour, day + 72 * hour),
        ("hour", day + 72 * hour, day + 73 * hour),
        ("calls", day + 73 * hour, end),
    ]
    assert repository.rollup_parts(day, day + 48 * hour) == [("day", day, day + 48 * hour)]
    assert repository.rollup_parts(day + hour, day + 5 * hour) == [
        ("hour", day + hour, day + 5 * hour)
    ]
    inside = day + timedelta(minutes=10)
    assert repository.rollup_parts(inside, inside + timedelta(minutes=10)) == [
        ("calls", inside, inside + timedelta(minutes=10))
    ]
    assert repository.rollup_parts(inside, inside) == []
    # UTC hours and days, whatever the offset the range is given in (India's: +05:30).
    india = timezone(timedelta(hours=5, minutes=30))
    half_past = datetime(2026, 3, 1, 15, 0, tzinfo=india)  # 09:30 UTC
    assert repository.rollup_parts(half_past, half_past + 2 * hour) == [
        ("calls", half_past, day + 10 * hour),
        ("hour", day + 10 * hour, day + 11 * hour),
        ("calls", day + 11 * hour, half_past + 2 * hour),
    ]


async def test_concurrent_writers_of_the_same_cells_neither_deadlock_nor_lose_counts(
    engine: AsyncEngine, runtime: Runtime
) -> None:
    """Two batches at once, ten times, over the same cells (every user and model of this
    hour; the second with many cells of its own too): both commit (the triggers write
    cells in key order: no deadlock) and every call counts once. (Without the ORDER BY
    this still passed here: the aggregates came out in one order anyway.)"""
    users = [uuid.uuid4() for _ in range(40)]
    others = [uuid.uuid4() for _ in range(400)]
    models = [f"test/rollup-{uuid.uuid4().hex[:8]}" for _ in range(2)]
    now = datetime.now(UTC).timestamp()

    def batch(who: list[uuid.UUID]) -> list[CallEvent]:
        return [
            CallEvent.model_validate(as_json(call(user, model=model, occurred_at=now)))
            for user in who
            for model in models
        ]

    for _ in range(10):
        await asyncio.gather(store(runtime, batch(users)), store(runtime, batch(others + users)))
    scope = Scope(
        start=datetime.fromtimestamp(now - 3600, UTC),
        end=datetime.fromtimestamp(now + 3600, UTC),
        user_id=None,
        model=models[0],
    )
    await assert_same(runtime, engine, scope, "two writers at once")
    found = await from_rollup(runtime, scope, "user")
    counted = {group.key: group.requests for group in found.groups}
    assert counted == {str(user): 20 for user in users} | {str(user): 10 for user in others}
