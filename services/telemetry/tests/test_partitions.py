"""Monthly partitions: made ahead of time and on demand; retention drops whole ones."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from common.llm_events import CallEvent
from devkit.testing import ServiceHarness
from telemetry import repository, service
from telemetry.service import month_of, next_month

from .conftest import as_json, call, make_runtime, stored


async def test_retention_drops_old_partitions_whole_and_keeps_recent_calls(
    harness: ServiceHarness, engine: AsyncEngine, redis: Redis
) -> None:
    user = uuid.uuid4()
    now = datetime.now(UTC)
    long_ago = now - timedelta(days=400)
    keeper = make_runtime(harness, engine, redis, retention_days=3650)
    events = [
        CallEvent.model_validate(as_json(call(user, occurred_at=moment.timestamp())))
        for moment in (long_ago, now - timedelta(days=1), now)
    ]
    async with engine.begin() as conn:
        assert (
            await service.store(keeper, conn, events, source="api") == 3
        )  # a partition made on demand
    async with engine.connect() as conn:
        assert month_of(long_ago) in await repository.partition_months(conn)
    assert (await stored(engine, user))["rows"] == 3

    dropped = await service.maintain(make_runtime(harness, engine, redis, retention_days=30))

    assert month_of(long_ago) in dropped
    async with engine.connect() as conn:
        months = await repository.partition_months(conn)
    assert month_of(long_ago) not in months
    assert {month_of(now), next_month(month_of(now))} <= set(months)
    assert min(months) == month_of(now - timedelta(days=30))
    assert (await stored(engine, user))["rows"] == 2
    # The rollups lost the dropped month's calls with it, and only those.
    async with engine.connect() as conn:
        for unit in ("hour", "day"):
            left = await conn.scalar(
                text(f"SELECT sum(requests) FROM telemetry.rollup_{unit} WHERE user_id = :u"),
                {"u": user},
            )
            assert left == 2, unit
