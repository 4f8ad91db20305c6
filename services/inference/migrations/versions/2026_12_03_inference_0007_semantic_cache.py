"""The semantic response cache: answers with the embedding of the prompt they answered.

Revision ID: inference_0007
Revises: inference_0006
Create Date: 2026-12-03
"""

from collections.abc import Sequence

from alembic import op

revision: str = "inference_0007"
down_revision: str | None = "inference_0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # pgvector's `vector` type (the extension is the database's: deploy/postgres/init.sql).
    op.execute(
        """
        CREATE TABLE inference.cache_entry (
            id bigint GENERATED ALWAYS AS IDENTITY,
            scope varchar(80) NOT NULL,
            context char(64) NOT NULL,
            prompt text NOT NULL,
            embedding vector(384) NOT NULL,
            answer bytea NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            expires_at timestamptz NOT NULL,
            CONSTRAINT pk_cache_entry PRIMARY KEY (id)
        )
        """
    )
    op.execute(
        "CREATE INDEX ix_cache_entry_scope_context ON inference.cache_entry "
        "(scope, context, expires_at)"
    )
    op.execute("CREATE INDEX ix_cache_entry_expires_at ON inference.cache_entry (expires_at)")


def downgrade() -> None:
    op.execute("DROP TABLE inference.cache_entry")
