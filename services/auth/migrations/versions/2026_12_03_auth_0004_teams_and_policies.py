"""Teams and their members, the policy fields of keys, users and teams, team keys, and the
permission teams:manage for admins (issue 18: governance).

Every new column is nullable (no policy: nothing changes for existing keys and users), so
the upgrade rewrites no row.

Revision ID: auth_0004
Revises: auth_0003
Create Date: 2026-12-03
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "auth_0004"
down_revision: str | None = "auth_0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PERMISSION = "teams:manage"
DESCRIPTION = "Create, change and delete teams; set any key's, user's or team's policy"


def _policy_columns() -> list[sa.Column[Any]]:
    return [
        sa.Column("max_budget_usd", sa.Numeric(19, 9), nullable=True),
        sa.Column("budget_period", sa.String(length=8), nullable=True),
        sa.Column("allowed_models", postgresql.ARRAY(sa.String(length=200)), nullable=True),
        sa.Column("rpm_limit", sa.Integer(), nullable=True),
        sa.Column("tpm_limit", sa.Integer(), nullable=True),
    ]


def _policy_checks(table: str) -> None:
    op.create_check_constraint(
        op.f(f"ck_{table}_budget_period"),
        table,
        "budget_period IN ('day', 'week', 'month', 'total')",
        schema="auth",
    )
    op.create_check_constraint(
        op.f(f"ck_{table}_max_budget_usd"), table, "max_budget_usd >= 0", schema="auth"
    )
    op.create_check_constraint(
        op.f(f"ck_{table}_limits"), table, "rpm_limit > 0 AND tpm_limit > 0", schema="auth"
    )


def upgrade() -> None:
    op.create_table(
        "team",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        *_policy_columns(),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_team")),
        sa.UniqueConstraint("name", name=op.f("uq_team_name")),
        schema="auth",
    )
    op.create_index("ix_team_created_at_id", "team", ["created_at", "id"], schema="auth")
    op.create_table(
        "team_member",
        sa.Column("team_id", sa.UUID(), nullable=False),
        sa.Column("user_id", sa.UUID(), nullable=False),
        sa.Column("role", sa.String(length=8), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint("role IN ('owner', 'member')", name=op.f("ck_team_member_role")),
        sa.ForeignKeyConstraint(
            ["team_id"],
            ["auth.team.id"],
            name=op.f("fk_team_member_team_id_team"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["auth.user.id"],
            name=op.f("fk_team_member_user_id_user"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("team_id", "user_id", name=op.f("pk_team_member")),
        schema="auth",
    )
    op.create_index("ix_team_member_user_id", "team_member", ["user_id"], schema="auth")
    op.create_index(
        "ix_team_member_team_id_created_at_user_id",
        "team_member",
        ["team_id", "created_at", "user_id"],
        schema="auth",
    )
    _policy_checks("team")
    for table in ("user", "api_key"):
        for column in _policy_columns():
            op.add_column(table, column, schema="auth")
        _policy_checks(table)
    op.add_column("api_key", sa.Column("team_id", sa.UUID(), nullable=True), schema="auth")
    op.create_foreign_key(
        op.f("fk_api_key_team_id_team"),
        "api_key",
        "team",
        ["team_id"],
        ["id"],
        source_schema="auth",
        referent_schema="auth",
        ondelete="SET NULL",
    )
    op.create_index(op.f("ix_auth_api_key_team_id"), "api_key", ["team_id"], schema="auth")

    permission = sa.table("permission", sa.column("name"), sa.column("description"), schema="auth")
    role_permission = sa.table(
        "role_permission", sa.column("role"), sa.column("permission"), schema="auth"
    )
    op.bulk_insert(permission, [{"name": PERMISSION, "description": DESCRIPTION}])
    op.bulk_insert(role_permission, [{"role": "admin", "permission": PERMISSION}])


def downgrade() -> None:
    op.execute(
        sa.text("DELETE FROM auth.permission WHERE name = :name").bindparams(name=PERMISSION)
    )
    op.drop_index(op.f("ix_auth_api_key_team_id"), table_name="api_key", schema="auth")
    op.drop_constraint(op.f("fk_api_key_team_id_team"), "api_key", schema="auth")
    op.drop_column("api_key", "team_id", schema="auth")
    for table in ("user", "api_key"):
        for check in ("budget_period", "max_budget_usd", "limits"):
            op.drop_constraint(op.f(f"ck_{table}_{check}"), table, schema="auth")
        for column in _policy_columns():
            op.drop_column(table, column.name, schema="auth")
    op.drop_table("team_member", schema="auth")
    op.drop_table("team", schema="auth")
