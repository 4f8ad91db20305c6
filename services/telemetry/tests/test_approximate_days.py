"""The closed days' approximate usage kept in memory (service.approximate_by_day, and
service.approximate_grouped for every other grouping): answers identical to computing
every day again, for any range, scope and grouping, and a late write to a closed day seen
by the very next answer. Real Postgres; the calls are committed."""

from __future__ import annotations

import random
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from common.db import transaction
from common.llm_events import CallEvent
from telemetry import repository, service
from telemetry.repository import Scope
from telemetry.runtime import Runtime
from telemetry.schemas import GroupBy, Usage

from .conftest import as_json, call
from .test_usage_cache import (
    DAY,
    a_call_of_an_unmarked_day,
    midnight,
    random_calls,
    store,
    today,
)

OTHER_GROUPINGS: tuple[GroupBy, ...] = ("model", "provider", "user", "key", "team")


async def grouped(runtime: Runtime, scope: Scope, group_by: GroupBy) -> Usage:
    """The service's default answer by `group_by`."""
    async with transaction(runtime.sessionmaker) as db:
        return await service.usage_in(runtime, db, scope=scope, group_by=group_by)


async def grouped_again(runtime: Runtime, scope: Scope, group_by: GroupBy) -> Usage:
    """The same answer from the rollups for the whole range in one statement, nothing kept."""
    async with transaction(runtime.sessionmaker) as db:
        rows = await repository.usage_sums(db, scope=scope, group_by=group_by, histograms=True)
    groups = [service.usage_group(service._approximated(row._mapping, True)) for row in rows]
    return Usage(group_by=group_by, from_=scope.start, to=scope.end, groups=groups)


def random_scope(
    rng: random.Random, now: datetime, users: list[uuid.UUID], models: list[str]
) -> Scope:
    start = now - timedelta(seconds=rng.uniform(0, 7 * 86400))
    end = start + timedelta(seconds=rng.uniform(0, 8 * 86400))
    filters = rng.choice(
        [{}, {"user_id": rng.choice(users)}, {"model": rng.choice(models)}, {"status": "ok"}]
    )
    return Scope(start=start, end=end, user_id=filters.get("user_id"),
                 model=filters.get("model"), status=filters.get("status"))  # fmt: skip


@pytest.mark.parametrize("groupings", [("day",), OTHER_GROUPINGS], ids=["day", "others"])
async def test_kept_days_give_the_answers_computed_again_for_any_range_and_scope(
    runtime: Runtime, groupings: tuple[GroupBy, ...]
) -> None:
    rng = random.Random(22)
    users = [uuid.uuid4() for _ in range(3)]
    models = [f"test/warm-{uuid.uuid4().hex[:8]}" for _ in range(3)]
    await store(runtime, random_calls(rng, users, models, 1500, days=6))
    kept = replace(runtime, approximate_days={}, approximate_groups={})
    now = datetime.now(UTC)
    served = 0
    for n in range(30):
        scope = random_scope(rng, now, users, models)
        group_by = rng.choice(groupings)
        # Asked three times: the first marks the days closed, the second keeps them, the
        # third is served from memory (partial days read again); all equal to computing
        # every day again.
        for _ in range(3):
            expected = await grouped_again(runtime, scope, group_by)
            found = await grouped(kept, scope, group_by)
            assert found.model_dump_json() == expected.model_dump_json(), (n, group_by, scope)
        whole = service.cacheable_days(scope, now=datetime.now(UTC), retention=kept.retention)
        if group_by == "day":
            wanted = {(scope.key(), g.key) for g in found.groups if g.key in set(whole)}
            assert wanted <= set(kept.approximate_days), (n, scope)
        else:
            wanted = {(scope.key(), group_by, whole[0], whole[-1])} if whole else set()
            assert wanted <= set(kept.approximate_groups), (n, group_by, scope)
        served += len(wanted)
    assert served > 10


async def test_a_kept_day_is_served_until_a_late_write_to_it(runtime: Runtime) -> None:
    user = uuid.uuid4()
    day = today() - 3 * DAY
    noon = midnight(day).timestamp() + 43200
    await store(runtime, [CallEvent.model_validate(as_json(call(user, occurred_at=noon)))])
    kept = replace(runtime, approximate_days={})
    scope = Scope(start=midnight(day), end=midnight(day + DAY), user_id=user)
    for _ in range(2):  # marks the day closed, then keeps it
        assert [g.requests for g in (await grouped(kept, scope, "day")).groups] == [1]
    epoch, values = kept.approximate_days[(scope.key(), day)]
    # What is kept is what is served (while the epoch holds): told apart by a made-up count.
    kept.approximate_days[(scope.key(), day)] = (epoch, {**values, "requests": 7})
    assert [g.requests for g in (await grouped(kept, scope, "day")).groups] == [7]
    # A late call of that closed day: the very next answer has it.
    late = call(user, occurred_at=noon + 60, latency_ms=2500.0)
    await store(runtime, [CallEvent.model_validate(as_json(late))])
    found = await grouped(kept, scope, "day")
    assert [g.requests for g in found.groups] == [2]
    assert found.model_dump_json() == (await grouped_again(runtime, scope, "day")).model_dump_json()


@pytest.mark.parametrize("group_by", ["day", "model"])
async def test_nothing_is_kept_from_a_snapshot_that_missed_a_writer_still_in_flight(
    engine: AsyncEngine, runtime: Runtime, group_by: GroupBy
) -> None:
    """As the per-day cache: a writer whose trigger ran before midnight skipped the bump,
    so a day is kept only from a snapshot that saw every transaction older than its close."""
    day = today() - 20 * DAY
    scope = await a_call_of_an_unmarked_day(runtime, engine, day)
    kept = replace(runtime, approximate_days={}, approximate_groups={})
    async with engine.connect() as in_flight:  # holds a transaction id, not committed
        await in_flight.execute(text("SELECT pg_current_xact_id()"))
        for _ in range(2):  # marked closed by the first, after the writer began
            assert [g.requests for g in (await grouped(kept, scope, group_by)).groups] == [1]
        assert kept.approximate_days == kept.approximate_groups == {}
        await in_flight.rollback()
    assert [g.requests for g in (await grouped(kept, scope, group_by)).groups] == [1]
    if group_by == "day":
        assert (scope.key(), day) in kept.approximate_days
    else:
        assert (scope.key(), group_by, day, day) in kept.approximate_groups


# ---------------------------------------------------------------- other groupings


async def test_kept_closed_days_of_a_grouping_are_served_until_a_late_write(
    runtime: Runtime,
) -> None:
    user = uuid.uuid4()
    day = today() - 3 * DAY
    noon = midnight(day).timestamp() + 43200
    await store(runtime, [CallEvent.model_validate(as_json(call(user, occurred_at=noon)))])
    kept = replace(runtime, approximate_groups={})
    # Two closed days and a part of today: the closed part kept, today's read each time.
    scope = Scope(start=midnight(day - DAY), end=datetime.now(UTC), user_id=user)
    for _ in range(2):  # marks the days closed, then keeps them
        assert [g.requests for g in (await grouped(kept, scope, "model")).groups] == [1]
    key = (scope.key(), "model", day - DAY, today() - DAY)
    epochs, rows = kept.approximate_groups[key]
    # What is kept is what is served: told apart by a made-up count.
    kept.approximate_groups[key] = (epochs, [{**rows[0], "requests": 7}])
    assert [g.requests for g in (await grouped(kept, scope, "model")).groups] == [7]
    # A call of today is added to what is kept...
    now = datetime.now(UTC).timestamp()
    await store(runtime, [CallEvent.model_validate(as_json(call(user, occurred_at=now - 1)))])
    assert [g.requests for g in (await grouped(kept, scope, "model")).groups] == [8]
    # ...and a late call of a closed day makes the very next answer compute them again.
    late = call(user, occurred_at=noon + 60, latency_ms=2500.0)
    await store(runtime, [CallEvent.model_validate(as_json(late))])
    found = await grouped(kept, scope, "model")
    assert [g.requests for g in found.groups] == [3]
    assert (
        found.model_dump_json() == (await grouped_again(runtime, scope, "model")).model_dump_json()
    )


async def test_kept_groupings_are_bounded_in_number_and_size(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At most GROUPINGS_KEPT kept (the oldest forgotten), and none larger than
    GROUPED_ENTRIES_MAX histogram entries: that one is answered in full each time."""
    rng = random.Random(24)
    users = [uuid.uuid4() for _ in range(4)]
    models = [f"test/bounded-{uuid.uuid4().hex[:8]}" for _ in range(3)]
    await store(runtime, random_calls(rng, users, models, 400, days=4))
    kept = replace(runtime, approximate_groups={})
    monkeypatch.setattr(service, "GROUPINGS_KEPT", 2)
    start = midnight(today() - 4 * DAY)
    scopes = [Scope(start=start, end=datetime.now(UTC), user_id=user) for user in users]
    for scope in scopes:
        for _ in range(2):  # marks the days closed, then keeps them
            await grouped(kept, scope, "model")
    assert [key[0] for key in kept.approximate_groups] == [s.key() for s in scopes[-2:]]

    monkeypatch.setattr(service, "GROUPED_ENTRIES_MAX", 1)
    large = replace(runtime, approximate_groups={})
    for _ in range(3):
        found = await grouped(large, scopes[0], "model")
        expected = await grouped_again(runtime, scopes[0], "model")
        assert found.model_dump_json() == expected.model_dump_json()
    assert large.approximate_groups == {}
