"""The schema's migrations go up, down (documents tables included) and up again."""

from __future__ import annotations

import asyncio
import secrets

import asyncpg

from common.migrations import downgrade, upgrade
from devkit import devstack
from devkit.testing import RunDatabase, _drop_database


def test_upgrade_downgrade_upgrade(test_database: RunDatabase) -> None:
    name = f"mig_{secrets.token_hex(4)}"
    admin = devstack.with_database(test_database.admin_url, name)
    url = asyncio.run(devstack.bootstrap_database(admin, name))["embeddings"]
    service_dir = devstack.service_dir("embeddings")

    async def tables() -> set[str]:
        conn = await asyncpg.connect(admin)
        try:
            rows = await conn.fetch(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'embeddings'"
            )
            return {r["tablename"] for r in rows}
        finally:
            await conn.close()

    async def add_documents_table() -> None:
        conn = await asyncpg.connect(admin)
        try:
            await conn.execute(
                'CREATE TABLE embeddings."doc_0123456789abcdef0123456789abcdef_1" (id text)'
            )
        finally:
            await conn.close()

    try:
        upgrade(service_dir, url)
        assert {"collection", "alembic_version"} <= asyncio.run(tables())
        asyncio.run(add_documents_table())
        downgrade(service_dir, url)
        assert asyncio.run(tables()) == {"alembic_version"}
        upgrade(service_dir, url)
        assert "collection" in asyncio.run(tables())
    finally:
        asyncio.run(_drop_database(test_database.admin_url, name))
