"""Permission embeddings:read_all, for admins: what embeddings used to grant by role.

Embeddings let the admin role read every collection. A signed identity carries the
credential's effective permissions (a scoped key's, not its owner's role), so that
power is now a permission of its own, which a scoped key holds only if it names it.

Revision ID: auth_0003
Revises: auth_0002
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "auth_0003"
down_revision: str | None = "auth_0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NAME = "embeddings:read_all"
DESCRIPTION = "Read and query everyone's collections"


def upgrade() -> None:
    permission = sa.table("permission", sa.column("name"), sa.column("description"), schema="auth")
    role_permission = sa.table(
        "role_permission", sa.column("role"), sa.column("permission"), schema="auth"
    )
    op.bulk_insert(permission, [{"name": NAME, "description": DESCRIPTION}])
    op.bulk_insert(role_permission, [{"role": "admin", "permission": NAME}])


def downgrade() -> None:
    op.execute(sa.text("DELETE FROM auth.permission WHERE name = :name").bindparams(name=NAME))
