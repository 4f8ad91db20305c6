"""Provider credentials carry an API version (Azure OpenAI's api-version; NULL otherwise).

Revision ID: inference_0003
Revises: inference_0002
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "inference_0003"
down_revision: str | None = "inference_0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "provider_credential",
        sa.Column("api_version", sa.String(length=32), nullable=True),
        schema="inference",
    )


def downgrade() -> None:
    op.drop_column("provider_credential", "api_version", schema="inference")
