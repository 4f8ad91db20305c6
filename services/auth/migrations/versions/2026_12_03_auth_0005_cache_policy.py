"""The response cache's default of API keys and teams (issue 20: common.policy.CachePolicy,
in its wire form).

The column is nullable (no default: the cache stays off for them), so the upgrade
rewrites no row.

Revision ID: auth_0005
Revises: auth_0004
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "auth_0005"
down_revision: str | None = "auth_0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("api_key", "team")


def upgrade() -> None:
    for table in TABLES:
        op.add_column(
            table,
            sa.Column("cache", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
            schema="auth",
        )


def downgrade() -> None:
    for table in TABLES:
        op.drop_column(table, "cache", schema="auth")
