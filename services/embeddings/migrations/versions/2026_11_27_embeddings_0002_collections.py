"""Collections; each collection's documents get a table of their own at run time.

Revision ID: embeddings_0002
Revises: embeddings_0001
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "embeddings_0002"
down_revision: str | None = "embeddings_0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The documents tables the service creates (storage.table_name): doc_<uuid hex>_<generation>.
DOCUMENT_TABLE = r"^doc_[0-9a-f]{32}_[0-9]+$"


def upgrade() -> None:
    op.create_table(
        "collection",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("owner_id", sa.UUID(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("model", sa.String(length=300), nullable=False),
        sa.Column("dimension", sa.Integer(), nullable=False),
        sa.Column("metric", sa.String(length=16), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("index_status", sa.String(length=16), server_default="none", nullable=False),
        sa.Column("index_claimed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "lineage", postgresql.JSONB(astext_type=sa.Text()), server_default="[]", nullable=False
        ),
        sa.Column("reembed_status", sa.String(length=16), nullable=True),
        sa.Column("reembed_model", sa.String(length=300), nullable=True),
        sa.Column("reembed_dimension", sa.Integer(), nullable=True),
        sa.Column("reembed_done", sa.Integer(), server_default="0", nullable=False),
        sa.Column("reembed_total", sa.Integer(), server_default="0", nullable=False),
        sa.Column("reembed_error", sa.Text(), nullable=True),
        sa.Column("reembed_for", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("reembed_started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reembed_worker", sa.String(length=64), nullable=True),
        sa.Column("reembed_heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reembed_seconds", sa.Float(), nullable=True),
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
        sa.CheckConstraint(
            "metric IN ('cosine', 'l2', 'inner_product')", name=op.f("ck_collection_metric")
        ),
        sa.CheckConstraint(
            "index_status IN ('none', 'building', 'ready')", name=op.f("ck_collection_index_status")
        ),
        sa.CheckConstraint(
            "reembed_status IN ('running', 'failed')", name=op.f("ck_collection_reembed_status")
        ),
        sa.CheckConstraint("dimension BETWEEN 1 AND 2000", name=op.f("ck_collection_dimension")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_collection")),
        schema="embeddings",
    )
    op.create_index(
        "uq_collection_owner_name",
        "collection",
        ["owner_id", "name"],
        unique=True,
        schema="embeddings",
    )
    op.create_index(
        "ix_collection_reembed",
        "collection",
        ["reembed_status"],
        unique=False,
        schema="embeddings",
        postgresql_where=sa.text("reembed_status IS NOT NULL"),
    )
    op.create_index(
        "ix_collection_index_pending",
        "collection",
        ["index_status"],
        unique=False,
        schema="embeddings",
        postgresql_where=sa.text("index_status <> 'ready'"),
    )


def downgrade() -> None:
    # The documents tables first: their names come from the catalog and match DOCUMENT_TABLE.
    bind = op.get_bind()
    names = bind.execute(
        sa.text(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'embeddings' AND tablename ~ :p"
        ),
        {"p": DOCUMENT_TABLE},
    ).scalars()
    for name in names:
        op.drop_table(name, schema="embeddings")
    op.drop_index("ix_collection_index_pending", table_name="collection", schema="embeddings")
    op.drop_index("ix_collection_reembed", table_name="collection", schema="embeddings")
    op.drop_index("uq_collection_owner_name", table_name="collection", schema="embeddings")
    op.drop_table("collection", schema="embeddings")
