"""A model alias's response-cache default.

Revision ID: inference_0006
Revises: inference_0005
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "inference_0006"
down_revision: str | None = "inference_0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "model_alias",
        sa.Column("cache", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        schema="inference",
    )


def downgrade() -> None:
    op.drop_column("model_alias", "cache", schema="inference")
