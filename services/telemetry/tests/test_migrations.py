"""The telemetry schema's migrations go up, down and up again; the usage cache's triggers
as migrated."""

from __future__ import annotations

import asyncio
import math
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from common.migrations import downgrade, upgrade
from devkit import devstack
from devkit.testing import RunDatabase, _drop_database

# A partition for calls of any date, so that the rows a test writes need no monthly one.
CATCH_ALL_PARTITION = (
    "CREATE TABLE telemetry.llm_call_p_test PARTITION OF telemetry.llm_call "
    "FOR VALUES FROM ('2000-01-01') TO ('2100-01-01')"
)


def scratch_database(test_database: RunDatabase) -> tuple[str, str, str]:
    """A database of its own, bootstrapped (roles, schemas), not yet migrated: its name
    (to drop it), its admin URL and the telemetry service's URL to it."""
    name = f"mig_{uuid.uuid4().hex[:8]}"
    admin_url = devstack.with_database(test_database.admin_url, name)
    url: str = asyncio.run(devstack.bootstrap_database(admin_url, name))["telemetry"]
    return name, admin_url, url


def test_the_cache_migration_goes_down_and_up_and_truncate_invalidates(
    test_database: RunDatabase,
) -> None:
    name, admin_url, url = scratch_database(test_database)
    service_dir = devstack.service_dir("telemetry")

    async def cache_objects() -> set[str]:
        conn = await asyncpg.connect(admin_url)
        try:
            rows = await conn.fetch(
                "SELECT relname AS name FROM pg_class c JOIN pg_namespace n "
                "ON n.oid = c.relnamespace WHERE nspname = 'telemetry' "
                "AND relname LIKE 'usage_day%' AND relkind IN ('r', 'S') "
                "UNION ALL SELECT tgname FROM pg_trigger WHERE tgname LIKE 'usage_day%' "
                "UNION ALL SELECT proname FROM pg_proc WHERE proname LIKE 'usage_day%'"
            )
            return {row["name"] for row in rows}
        finally:
            await conn.close()

    everything = {
        "usage_day",
        "usage_day_epoch",
        "usage_day_epoch_seq",
        "usage_day_bump",
        "usage_day_bump_all",
        "usage_day_renew",
        "usage_day_after_insert",
        "usage_day_after_update",
        "usage_day_after_delete",
        "usage_day_after_truncate",
    }
    try:
        upgrade(service_dir, url)
        assert asyncio.run(cache_objects()) == everything
        asyncio.run(truncate_bumps_every_known_day(url))
        downgrade(service_dir, url, "telemetry_0002")
        assert asyncio.run(cache_objects()) == set()
        upgrade(service_dir, url)
        assert asyncio.run(cache_objects()) == everything
    finally:
        asyncio.run(_drop_database(test_database.admin_url, name))


async def truncate_bumps_every_known_day(url: str) -> None:
    """TRUNCATE has no transition table: every day with an epoch gets a new one."""
    conn = await asyncpg.connect(url)
    try:
        day = datetime.now(UTC).date() - timedelta(days=3)
        await conn.execute("INSERT INTO telemetry.usage_day_epoch (day, epoch) VALUES ($1, 3)", day)
        await conn.execute("TRUNCATE telemetry.llm_call")
        epoch = await conn.fetchval(
            "SELECT epoch FROM telemetry.usage_day_epoch WHERE day = $1", day
        )
        assert epoch != 3
    finally:
        await conn.close()


def test_the_team_column_and_spend_indexes_reach_every_partition(
    test_database: RunDatabase,
) -> None:
    """A partition made before the migration gets the column and the indexes, as does one
    the service makes after it; down again, both lose them."""
    name, admin_url, url = scratch_database(test_database)
    service_dir = devstack.service_dir("telemetry")

    async def partition(month: str, until: str) -> None:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(
                f"CREATE TABLE telemetry.llm_call_p{month.replace('-', '')[:6]} PARTITION OF "
                f"telemetry.llm_call FOR VALUES FROM ('{month}') TO ('{until}')"
            )
        finally:
            await conn.close()

    async def shape() -> dict[str, tuple[bool, list[str]]]:
        """Per partition: whether it has team_id, and its indexes' columns."""
        conn = await asyncpg.connect(admin_url)
        try:
            rows = await conn.fetch(
                "SELECT c.relname, EXISTS (SELECT FROM pg_attribute a WHERE a.attrelid = c.oid "
                "AND a.attname = 'team_id' AND NOT a.attisdropped) AS team, "
                "ARRAY(SELECT pg_get_indexdef(i.indexrelid) FROM pg_index i "
                "WHERE i.indrelid = c.oid ORDER BY 1) AS indexes "
                "FROM pg_inherits h JOIN pg_class c ON c.oid = h.inhrelid "
                "WHERE h.inhparent = 'telemetry.llm_call'::regclass"
            )
            return {r["relname"]: (r["team"], list(r["indexes"])) for r in rows}
        finally:
            await conn.close()

    try:
        upgrade(service_dir, url, "telemetry_0003")
        asyncio.run(partition("2026-01-01", "2026-02-01"))
        upgrade(service_dir, url)
        asyncio.run(partition("2026-02-01", "2026-03-01"))
        found = asyncio.run(shape())
        assert set(found) == {"llm_call_p202601", "llm_call_p202602"}
        for team, indexes in found.values():
            assert team
            assert any(
                "(api_key_id, occurred_at) INCLUDE (cost_usd) WHERE (api_key_id IS NOT NULL)" in i
                for i in indexes
            ), indexes
            assert any(
                "(team_id, occurred_at, id) INCLUDE (cost_usd) WHERE (team_id IS NOT NULL)" in i
                for i in indexes
            ), indexes
        downgrade(service_dir, url, "telemetry_0003")
        for team, indexes in asyncio.run(shape()).values():
            assert not team
            assert not any("api_key_id" in i or "team_id" in i for i in indexes)
    finally:
        asyncio.run(_drop_database(test_database.admin_url, name))


# A migration that adds figures to the calls and to the per-day cache: the revision before
# it, a day's row as the cache held it then, and the columns it adds to the calls.
FIGURES_ADDED = {
    "telemetry_0005 (token details)": (
        "telemetry_0004",
        "requests, errors, prompt_tokens, completion_tokens, cost_usd",
        ("cached_prompt_tokens", "reasoning_tokens"),
    ),
    "telemetry_0006 (response-cache hits)": (
        "telemetry_0005",
        "requests, errors, prompt_tokens, completion_tokens, cost_usd, cached_prompt_tokens, "
        "reasoning_tokens, unpriced_calls",
        ("cache", "saved_usd"),
    ),
}


@pytest.mark.parametrize("migration", FIGURES_ADDED)
def test_a_migration_adding_figures_keeps_the_calls_and_drops_the_cached_days(
    test_database: RunDatabase, migration: str
) -> None:
    """Calls stored before read as null (not reported, not a hit); the days cached before,
    which lack the new sums, are gone (computed again, never served as zeros). Down and up
    again."""
    before_it, cached_columns, call_columns = FIGURES_ADDED[migration]
    name, _admin_url, url = scratch_database(test_database)
    service_dir = devstack.service_dir("telemetry")
    day = datetime.now(UTC).date() - timedelta(days=2)

    async def before() -> None:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(CATCH_ALL_PARTITION)
            await conn.execute(
                "INSERT INTO telemetry.llm_call (occurred_at, id, source, operation, provider, "
                "model, status, prompt_tokens, completion_tokens, usage_estimated, latency_ms, "
                "stream, attempts, fallback) VALUES ($1, gen_random_uuid(), 'api', 'chat', "
                "'openai', 'm', 'ok', 10, 5, false, 100, false, 1, false)",
                datetime(day.year, day.month, day.day, 12, tzinfo=UTC),
            )
            figures = ", ".join(["1"] + ["0"] * cached_columns.count(","))
            await conn.execute(
                f"INSERT INTO telemetry.usage_day (scope, day, epoch, {cached_columns}) "
                f"SELECT 'old', day, epoch, {figures} FROM telemetry.usage_day_epoch "
                "WHERE day = $1",
                day,
            )
            assert await conn.fetchval("SELECT count(*) FROM telemetry.usage_day") == 1
        finally:
            await conn.close()

    async def after() -> tuple[int, list[tuple[Any, ...]]]:
        conn = await asyncpg.connect(url)
        try:
            cached = await conn.fetchval("SELECT count(*) FROM telemetry.usage_day")
            calls = await conn.fetch(f"SELECT {', '.join(call_columns)} FROM telemetry.llm_call")
            return cached, [tuple(row) for row in calls]
        finally:
            await conn.close()

    try:
        upgrade(service_dir, url, before_it)
        asyncio.run(before())
        upgrade(service_dir, url)
        assert asyncio.run(after()) == (0, [(None, None)])
        downgrade(service_dir, url, before_it)
        upgrade(service_dir, url)
        assert asyncio.run(after()) == (0, [(None, None)])
    finally:
        asyncio.run(_drop_database(test_database.admin_url, name))


# What a rollup cell holds, computed from the calls themselves (as the triggers compute it).
ROLLUP_FROM_CALLS = """
SELECT date_trunc('{unit}', occurred_at, 'UTC') AS period, user_id, api_key_id, team_id,
    model, provider, status, count(*) AS requests,
    count(*) FILTER (WHERE status = 'ok' AND cost_usd IS NULL) AS unpriced_calls,
    count(cost_usd) AS priced_calls, coalesce(sum(prompt_tokens), 0) AS prompt_tokens,
    coalesce(sum(completion_tokens), 0) AS completion_tokens,
    coalesce(sum(cached_prompt_tokens), 0) AS cached_prompt_tokens,
    coalesce(sum(reasoning_tokens), 0) AS reasoning_tokens,
    coalesce(sum(cost_usd), 0) AS cost_usd, count(cache) AS cache_hits,
    count(saved_usd) AS saved_calls, coalesce(sum(saved_usd), 0) AS saved_usd,
    array_agg(latency_ms) AS latencies, array_agg(ttft_ms) AS ttfts
FROM telemetry.llm_call GROUP BY 1, 2, 3, 4, 5, 6, 7 ORDER BY 1, 2, 3, 4, 5, 6, 7
"""


def histogram(values: list[float | None]) -> list[int]:
    """What telemetry.histograms says a histogram of `values` is, computed here: count *
    1024 + bucket, bucket i for [0.1 * 1.04^i, 0.1 * 1.04^(i+1)) ms, clamped to 0..524."""
    counts: dict[int, int] = {}
    for value in values:
        if value is not None:
            bucket = min(524, math.floor(math.log(max(value, 0.1) / 0.1) / math.log(1.04)))
            counts[bucket] = counts.get(bucket, 0) + 1
    return [count * 1024 + bucket for bucket, count in sorted(counts.items())]


ROLLUP = (
    "SELECT * FROM telemetry.rollup_{unit} "
    "ORDER BY period, user_id, api_key_id, team_id, model, provider, status"
)


def test_the_rollup_migration_fills_the_rollups_from_the_calls_and_goes_down_and_up(
    test_database: RunDatabase,
) -> None:
    """Calls stored before telemetry_0007 (with and without key, team, cost, over several
    hours and days) are in the rollups after it, cell by cell as the triggers would have
    written them; TRUNCATE empties the rollups; down and up again fills them again."""
    name, _admin_url, url = scratch_database(test_database)
    service_dir = devstack.service_dir("telemetry")

    async def calls() -> None:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(CATCH_ALL_PARTITION)
            await conn.execute(
                "INSERT INTO telemetry.llm_call (occurred_at, id, source, user_id, api_key_id, "
                "team_id, operation, provider, model, status, prompt_tokens, completion_tokens, "
                "cached_prompt_tokens, usage_estimated, cost_usd, latency_ms, stream, attempts, "
                "fallback, cache, saved_usd, ttft_ms) "
                "SELECT now() - i * interval '17 minutes', gen_random_uuid(), 'api', "
                "('00000000-0000-0000-0000-00000000000' || i % 3)::uuid, "
                "CASE WHEN i % 4 > 0 THEN 'key-' || i % 4 END, "
                "CASE WHEN i % 5 = 0 THEN '00000000-0000-0000-0000-0000000000aa'::uuid END, "
                "'chat', 'openai', 'm' || i % 2, CASE WHEN i % 7 = 0 THEN 'error' ELSE 'ok' END, "
                "i, i % 13, CASE WHEN i % 3 = 0 THEN i / 2 END, false, "
                "CASE WHEN i % 6 > 0 THEN i * 0.000000001 END, "
                "CASE i WHEN 1 THEN 0 WHEN 2 THEN 1e12 ELSE i * 7.3 END, false, 1, false, "
                "CASE WHEN i % 9 = 0 THEN 'exact' END, "
                "CASE WHEN i % 9 = 0 THEN i * 0.000000003 END, "
                "CASE WHEN i % 2 = 0 THEN i * 1.1 END "
                "FROM generate_series(1, 400) AS i"
            )
        finally:
            await conn.close()

    async def compare() -> int:
        """Asserts each rollup holds what the calls give; returns the hour cells."""
        conn = await asyncpg.connect(url)
        try:
            for unit in ("hour", "day"):
                expected = [
                    (*r[:-2], histogram(r["latencies"]), histogram(r["ttfts"]))
                    for r in await conn.fetch(ROLLUP_FROM_CALLS.format(unit=unit))
                ]
                found = [tuple(r) for r in await conn.fetch(ROLLUP.format(unit=unit))]
                assert [tuple(map(str, r)) for r in found] == [
                    tuple(map(str, r)) for r in expected
                ], unit
            return int(await conn.fetchval("SELECT count(*) FROM telemetry.rollup_hour"))
        finally:
            await conn.close()

    async def truncate() -> None:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute("TRUNCATE telemetry.llm_call")
        finally:
            await conn.close()

    try:
        upgrade(service_dir, url, "telemetry_0006")
        asyncio.run(calls())
        upgrade(service_dir, url)
        assert asyncio.run(compare()) > 100
        downgrade(service_dir, url, "telemetry_0006")
        upgrade(service_dir, url)
        assert asyncio.run(compare()) > 100
        asyncio.run(truncate())
        assert asyncio.run(compare()) == 0
    finally:
        asyncio.run(_drop_database(test_database.admin_url, name))
