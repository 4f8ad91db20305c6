"""Baseline of the embeddings schema.

The schema itself and Alembic's version table are created by the environment
(migrations/env.py) before this runs; later revisions add the tables.

Revision ID: embeddings_0001
Revises:
Create Date: 2026-11-27
"""

from collections.abc import Sequence

revision: str = "embeddings_0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
