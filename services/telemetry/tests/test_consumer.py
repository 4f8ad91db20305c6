"""The stream consumer against the real Redis stream and Postgres: stored exactly once
whatever crashes or redelivers, malformed entries dead-lettered, the stream trimmed only
below what is acknowledged."""

from __future__ import annotations

import asyncio
import json
import uuid

from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from common.llm_events import STREAM, CallEvent
from telemetry import repository, service
from telemetry.metrics import REGISTRY
from telemetry.runtime import Runtime

from .conftest import (
    WAITING_HERE,
    MakeConsumer,
    append,
    call,
    eventually,
    refusing,
    stored,
    wait_stored,
)


async def test_every_event_is_stored_once_and_acknowledged(
    redis: Redis, engine: AsyncEngine, consumers: MakeConsumer
) -> None:
    user = uuid.uuid4()
    events = [call(user) for _ in range(250)]
    await append(redis, events[:100])  # before telemetry ever ran: read from the start
    async with consumers(batch_size=64, trim_interval_seconds=0.05):
        await append(redis, events[100:])
        await wait_stored(engine, user, 250)
        await eventually(lambda: _no_pending(redis))

        async def no_lag() -> bool:
            return REGISTRY.get_sample_value("telemetry_stream_lag_events") == 0

        await eventually(no_lag)
    assert await stored(engine, user) == {"rows": 250, "ids": 250}


async def test_a_consumer_killed_mid_batch_then_another_replica_stores_all_exactly_once(
    redis: Redis, engine: AsyncEngine, consumers: MakeConsumer
) -> None:
    user = uuid.uuid4()
    events = [call(user) for _ in range(300)]
    await append(redis, events)
    # Hold the table so replica A's first batch stops inside its INSERT.
    async with engine.connect() as blocker:
        await blocker.execute(text("LOCK TABLE telemetry.llm_call IN EXCLUSIVE MODE"))
        async with consumers("replica-a", batch_size=100) as replica_a:

            async def writing() -> bool:
                async with engine.connect() as conn:
                    waiting = await conn.execute(WAITING_HERE)
                    return bool(waiting.scalar())

            await eventually(writing)
            assert (await redis.xpending(STREAM, "telemetry"))["pending"] == 100
            # The crash: the task dies mid-batch, nothing acknowledged, no clean stop.
            assert replica_a._task is not None
            replica_a._task.cancel()
            await asyncio.gather(replica_a._task, return_exceptions=True)
        await blocker.rollback()
    assert (await stored(engine, user))["rows"] == 0
    assert (await redis.xpending(STREAM, "telemetry"))["pending"] == 100

    # Replica B reads the 200 never delivered and takes over A's 100 once they are idle.
    async with consumers("replica-b", batch_size=100, claim_idle_seconds=0.3):

        async def all_stored() -> bool:
            pending = (await redis.xpending(STREAM, "telemetry"))["pending"]
            return pending == 0 and (await stored(engine, user))["rows"] == 300

        await eventually(all_stored)
    assert await stored(engine, user) == {"rows": 300, "ids": 300}


async def test_an_entry_delivered_again_after_its_commit_is_one_row(
    redis: Redis, engine: AsyncEngine, runtime: Runtime, consumers: MakeConsumer
) -> None:
    user = uuid.uuid4()
    event = call(user)
    # Replica A read the entry, committed its row, and died before XACK: still pending.
    await append(redis, [event])
    await redis.xgroup_create(STREAM, "telemetry", id="0")
    await redis.xreadgroup("telemetry", "replica-a", {STREAM: ">"})
    async with engine.begin() as conn:
        parsed = CallEvent.model_validate_json(event.to_fields()["event"])
        assert await service.store(runtime, conn, [parsed], source="stream") == 1
    async with consumers("replica-b", claim_idle_seconds=0.2):
        # And the producer retried: the same event twice more.
        last = (await append(redis, [event, event]))[-1]

        async def settled() -> bool:
            group = (await redis.xinfo_groups(STREAM))[0]
            return group["last-delivered-id"] == last and await _no_pending(redis)

        await eventually(settled)
    assert await stored(engine, user) == {"rows": 1, "ids": 1}


async def test_a_malformed_entry_is_dead_lettered_and_later_events_are_stored(
    redis: Redis, engine: AsyncEngine, consumers: MakeConsumer
) -> None:
    user = uuid.uuid4()
    good = call(user)
    bad_type = json.loads(call(user).to_fields()["event"]) | {"prompt_tokens": "many"}
    missing = json.loads(call(user).to_fields()["event"])
    del missing["model"]
    later = [call(user) for _ in range(3)]
    await append(redis, [good])
    await redis.xadd(STREAM, {"event": "{not json"})
    await redis.xadd(STREAM, {"event": json.dumps(bad_type)})
    await redis.xadd(STREAM, {"event": json.dumps(missing)})
    await redis.xadd(STREAM, {"something": "else"})
    await append(redis, later)
    async with consumers():
        await wait_stored(engine, user, 4)
        await eventually(lambda: _no_pending(redis))
    async with engine.connect() as conn:
        letters = await repository.dead_letters(conn, limit=4)
    reasons = sorted(letter.reason for letter in letters)
    assert len(reasons) == 4
    assert any("JSON" in r or "json" in r for r in reasons)
    assert any(r.startswith("prompt_tokens") for r in reasons)
    assert any(r.startswith("model: Field required") for r in reasons)
    assert "the entry has no `event` field" in reasons


async def test_events_postgres_refuses_are_dead_lettered_one_by_one(
    redis: Redis, engine: AsyncEngine, consumers: MakeConsumer
) -> None:
    user = uuid.uuid4()
    # Something validation lets through but Postgres refuses (here: a constraint of its own).
    events = [call(user), call(user, model="openai/poison"), call(user)]
    async with refusing(engine, "openai/poison"):
        await append(redis, events)
        async with consumers():
            await wait_stored(engine, user, 2)
            await eventually(lambda: _no_pending(redis))
    async with engine.connect() as conn:
        letters = await repository.dead_letters(conn, limit=1)
    assert events[1].id in letters[0].payload
    assert letters[0].reason.startswith("refused by Postgres")
    assert await stored(engine, user) == {"rows": 2, "ids": 2}


async def _no_pending(redis: Redis) -> bool:
    return bool((await redis.xpending(STREAM, "telemetry"))["pending"] == 0)


async def test_the_stream_is_trimmed_only_below_what_is_acknowledged(
    redis: Redis, engine: AsyncEngine, consumers: MakeConsumer
) -> None:
    user = uuid.uuid4()
    first = await append(redis, [call(user) for _ in range(5)])
    await redis.xgroup_create(STREAM, "telemetry", id="0")
    # A replica that died holding the first two entries (it will not come back soon).
    await redis.xreadgroup("telemetry", "dead-replica", {STREAM: ">"}, count=2)
    async with consumers("replica-b", claim_idle_seconds=3600, trim_interval_seconds=0.05):
        await wait_stored(engine, user, 3)
        await asyncio.sleep(0.2)  # a few trims
        kept = [entry_id for entry_id, _ in await redis.xrange(STREAM)]
        assert (REGISTRY.get_sample_value("telemetry_stream_lag_events") or 0) >= 2
        # Everything from the oldest pending entry on stays; nothing below it existed.
        assert kept[:2] == first[:2]
        more = await append(redis, [call(user) for _ in range(2)])
        await wait_stored(engine, user, 5)
        await asyncio.sleep(0.2)
        assert [entry_id for entry_id, _ in await redis.xrange(STREAM)] == [*first, *more]
        # The dead replica's entries are released: acknowledged, then trimmed away.
        await redis.xack(STREAM, "telemetry", *first[:2])

        async def trimmed() -> bool:
            return await redis.xlen(STREAM) == 0

        await eventually(trimmed)


async def test_every_field_is_stored_exactly_as_sent(
    redis: Redis, engine: AsyncEngine, consumers: MakeConsumer
) -> None:
    """Times to the microsecond, exact decimals, nulls, unicode and the largest values
    come back from Postgres as they were sent."""
    user = uuid.uuid4()
    full = call(
        user, occurred_at=1795776163.123456, api_key_id="key_ü1", model="hf/Ünïcode-7B",
        alias="smart", status="upstream_error", error_type="APIStatusError",
        prompt_tokens=2**31 - 1, completion_tokens=0, usage_estimated=True,
        cost_usd="123456789.123456789", latency_ms=0.001, ttft_ms=12345.678, stream=True,
        attempts=1000, fallback=True, operation="embeddings",
    )  # fmt: skip
    sparse = call(user, prompt_tokens=None, completion_tokens=None, cost_usd=None,
                  trace_id=None, occurred_at="2026-11-27T10:00:00.5+02:00")  # fmt: skip
    await append(redis, [full, sparse])
    async with consumers():
        await wait_stored(engine, user, 2)
    query = text("SELECT * FROM telemetry.llm_call WHERE user_id = :u")
    async with engine.connect() as conn:
        rows = (await conn.execute(query, {"u": user})).mappings().all()
    by_id = {str(row["id"]): row for row in rows}
    for event in (full, sparse):
        expected = CallEvent.model_validate_json(event.to_fields()["event"])
        row = by_id[event.id]
        for name, value in expected.model_dump().items():
            assert row[name] == value, (name, row[name], value)
        assert row["source"] == "stream"
