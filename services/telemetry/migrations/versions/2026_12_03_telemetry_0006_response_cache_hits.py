"""Response-cache hits: which cache replayed each call and what it saved, and their count
and sum in the per-day usage cache.

`llm_call.cache` ("exact" or "semantic": the answer was replayed from inference's response
cache; null: not a hit) and `llm_call.saved_usd` (what the provider would have charged for
the replayed answer): added to the partitioned parent, so every partition has them, those
that exist and those the service makes later. Nullable without a default: no row is
rewritten, and the calls stored before read as null (not a hit).

`usage_day` gets `cache_hits` and `saved_usd`. As in telemetry_0005, the cached rows hold
neither, so they are deleted (computed again: the pre-warm everyone's days, each other
scope's next query its own), and the new columns are NOT NULL without a default, so that a
replica still running the previous code fails to store its rows (logged, its answers still
given) rather than storing rows that would be served as zeros. The table is locked first,
so no such row lands between the delete and the new columns.

Revision ID: telemetry_0006
Revises: telemetry_0005
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "telemetry_0006"
down_revision: str | None = "telemetry_0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("LOCK TABLE telemetry.usage_day IN ACCESS EXCLUSIVE MODE")
    op.execute("DELETE FROM telemetry.usage_day")
    op.add_column(
        "usage_day", sa.Column("cache_hits", sa.BigInteger(), nullable=False), schema="telemetry"
    )
    op.add_column(
        "usage_day", sa.Column("saved_usd", sa.Numeric(), nullable=False), schema="telemetry"
    )
    op.add_column("llm_call", sa.Column("cache", sa.String(16), nullable=True), schema="telemetry")
    op.add_column(
        "llm_call", sa.Column("saved_usd", sa.Numeric(18, 9), nullable=True), schema="telemetry"
    )


def downgrade() -> None:
    op.drop_column("llm_call", "saved_usd", schema="telemetry")
    op.drop_column("llm_call", "cache", schema="telemetry")
    op.drop_column("usage_day", "saved_usd", schema="telemetry")
    op.drop_column("usage_day", "cache_hits", schema="telemetry")
