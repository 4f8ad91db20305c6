"""Personal model aliases (an owner, or none for a shared one) and a routing strategy.

Revision ID: inference_0004
Revises: inference_0003
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "inference_0004"
down_revision: str | None = "inference_0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "model_alias",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        schema="inference",
    )
    op.add_column(
        "model_alias", sa.Column("owner_id", sa.UUID(), nullable=True), schema="inference"
    )
    op.add_column(
        "model_alias",
        sa.Column(
            "strategy", sa.String(length=16), server_default=sa.text("'ordered'"), nullable=False
        ),
        schema="inference",
    )
    op.drop_constraint("pk_model_alias", "model_alias", schema="inference", type_="primary")
    op.create_primary_key("pk_model_alias", "model_alias", ["id"], schema="inference")
    # Existing aliases are shared (owner_id NULL): their names stay unique among shared ones;
    # a member's own are unique among theirs, and may take a shared one's name (theirs wins).
    op.create_index(
        "uq_model_alias_shared_alias", "model_alias", ["alias"], unique=True,
        schema="inference", postgresql_where=sa.text("owner_id IS NULL"),
    )  # fmt: skip
    op.create_index(
        "uq_model_alias_owner_alias", "model_alias", ["owner_id", "alias"], unique=True,
        schema="inference", postgresql_where=sa.text("owner_id IS NOT NULL"),
    )  # fmt: skip


def downgrade() -> None:
    op.execute("DELETE FROM inference.model_alias WHERE owner_id IS NOT NULL")
    op.drop_index("uq_model_alias_owner_alias", "model_alias", schema="inference")
    op.drop_index("uq_model_alias_shared_alias", "model_alias", schema="inference")
    op.drop_constraint("pk_model_alias", "model_alias", schema="inference", type_="primary")
    op.create_primary_key("pk_model_alias", "model_alias", ["alias"], schema="inference")
    op.drop_column("model_alias", "strategy", schema="inference")
    op.drop_column("model_alias", "owner_id", schema="inference")
    op.drop_column("model_alias", "id", schema="inference")
