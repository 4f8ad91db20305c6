"""The team of each call, and the indexes of the spend sums and the team views.

`llm_call.team_id` (the team of the API key the call was made with; auth's id, no foreign
key): added to the partitioned parent, so every partition has it, those that exist (a
column added to a partitioned table is added to each partition) and those the service
makes later (`PARTITION OF` takes the parent's columns). Nullable without a default: no
row is rewritten.

Two partial indexes, created on the parent (so on every partition, and on each partition
made later): `(api_key_id, occurred_at) INCLUDE (cost_usd)` and `(team_id, occurred_at,
id) INCLUDE (cost_usd)`, each `WHERE <column> IS NOT NULL` (calls from a browser session
have no key, calls of personal keys no team: they are left out). A key's or a team's spend
since a time (POST /internal/spend) is then an index-only scan; a team's calls page
(newest first, keyset on occurred_at and id) and a team's usage read the team's rows only.
Measured on 2,000,000 calls over 89 days (3,000 keys, 100 teams; services/telemetry/
README.md, "Indexes"): a team's spend over all time 91 ms (sequential scan) -> 24 ms with
the plain (team_id, occurred_at) index (bitmap heap scan) -> 3.6 ms with the cost included
(index-only); 100 spend queries in one statement 18 s -> 171 ms -> 28 ms.

The per-day usage cache's scope key now names the team filter too (telemetry.repository.
Scope.key): the days cached under the old keys could never be served again, so they are
deleted here (the pre-warm and the next queries compute them anew).

The indexes are built inside the migration's transaction, not CONCURRENTLY (which a
partitioned parent does not support): each partition is locked against writes while its
index is built (reads go on). Only the stream consumer and POST /v1/events write, and the
stream keeps the events meanwhile: nothing is lost, they are stored after the migration.

Revision ID: telemetry_0004
Revises: telemetry_0003
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "telemetry_0004"
down_revision: str | None = "telemetry_0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("DELETE FROM telemetry.usage_day")
    op.add_column("llm_call", sa.Column("team_id", sa.UUID(), nullable=True), schema="telemetry")
    op.create_index(
        "ix_llm_call_api_key_id_occurred_at",
        "llm_call",
        ["api_key_id", "occurred_at"],
        schema="telemetry",
        postgresql_include=["cost_usd"],
        postgresql_where=sa.text("api_key_id IS NOT NULL"),
    )
    op.create_index(
        "ix_llm_call_team_id_occurred_at",
        "llm_call",
        ["team_id", "occurred_at", "id"],
        schema="telemetry",
        postgresql_include=["cost_usd"],
        postgresql_where=sa.text("team_id IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_llm_call_team_id_occurred_at", table_name="llm_call", schema="telemetry")
    op.drop_index("ix_llm_call_api_key_id_occurred_at", table_name="llm_call", schema="telemetry")
    op.drop_column("llm_call", "team_id", schema="telemetry")
    op.execute("DELETE FROM telemetry.usage_day")  # keyed as the code of this revision keys
