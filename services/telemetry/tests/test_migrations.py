"""The telemetry schema's migrations go up, down and up again; the usage cache's triggers
as migrated."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg

from common.migrations import downgrade, upgrade
from devkit import devstack
from devkit.testing import RunDatabase, _drop_database


def test_the_cache_migration_goes_down_and_up_and_truncate_invalidates(
    test_database: RunDatabase,
) -> None:
    name = f"mig_{uuid.uuid4().hex[:8]}"
    admin_url = devstack.with_database(test_database.admin_url, name)
    url = asyncio.run(devstack.bootstrap_database(admin_url, name))["telemetry"]
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
