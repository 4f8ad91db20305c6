"""Monthly partitions: made ahead of time and on demand; retention drops whole ones."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncEngine

from telemetry import repository
from telemetry.schemas import CallEvent
from telemetry.service import Ingestor, month_of, next_month

from .conftest import as_json, call, stored


async def test_retention_drops_old_partitions_whole_and_keeps_recent_calls(
    engine: AsyncEngine,
) -> None:
    user = uuid.uuid4()
    now = datetime.now(UTC)
    long_ago = now - timedelta(days=400)
    keeper = Ingestor(engine, retention_days=3650)
    events = [
        CallEvent.model_validate(as_json(call(user, occurred_at=moment.timestamp())))
        for moment in (long_ago, now - timedelta(days=1), now)
    ]
    async with engine.begin() as conn:
        assert await keeper.store(conn, events, source="api") == 3  # a partition made on demand
    async with engine.connect() as conn:
        assert month_of(long_ago) in await repository.partition_months(conn)
    assert (await stored(engine, user))["rows"] == 3

    dropped = await Ingestor(engine, retention_days=30).maintain()

    assert month_of(long_ago) in dropped
    async with engine.connect() as conn:
        months = await repository.partition_months(conn)
    assert month_of(long_ago) not in months
    assert {month_of(now), next_month(month_of(now))} <= set(months)
    assert min(months) == month_of(now - timedelta(days=30))
    assert (await stored(engine, user))["rows"] == 2
