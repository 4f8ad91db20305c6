"""Admins' model prices (over INFERENCE_PRICES and the catalog) and their audit.

Revision ID: inference_0005
Revises: inference_0004
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "inference_0005"
down_revision: str | None = "inference_0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "model_price",
        sa.Column("model", sa.String(length=300), nullable=False),
        sa.Column("price", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("updated_by", sa.UUID(), nullable=True),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("model", name=op.f("pk_model_price")),
        schema="inference",
    )  # fmt: skip
    op.create_table(
        "price_change",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column(
            "occurred_at", sa.DateTime(timezone=True), server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("actor_id", sa.UUID(), nullable=True),
        sa.Column("model", sa.String(length=300), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("before", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("after", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("trace_id", sa.String(length=32), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_price_change")),
        schema="inference",
    )  # fmt: skip
    op.create_index(
        "ix_price_change_model_id", "price_change", ["model", "id"], unique=False,
        schema="inference",
    )  # fmt: skip


def downgrade() -> None:
    op.drop_index("ix_price_change_model_id", table_name="price_change", schema="inference")
    op.drop_table("price_change", schema="inference")
    op.drop_table("model_price", schema="inference")
