"""The cached prompt tokens and reasoning tokens of each call, and their sums and the count
of unpriced calls in the per-day usage cache.

`llm_call.cached_prompt_tokens` and `llm_call.reasoning_tokens` (parts of prompt_tokens and
completion_tokens, as the provider reports them): added to the partitioned parent, so every
partition has them, those that exist and those the service makes later. Nullable without a
default: no row is rewritten, and the calls stored before read as null (not reported).

`usage_day` gets their sums and `unpriced_calls` (the successful calls without a cost).
The cached rows hold none of these, and zeros would be wrong (an old day may have unpriced
calls), so they are deleted here: the pre-warm computes everyone's days again within its
interval, and each other scope's next query its own. The new columns are NOT NULL without a
default: the table is empty when they are added, and a replica still running the previous
code (a rolling deploy) fails to store its rows (logged, its answers still given) rather
than storing rows without these figures that would then be served as zeros. The table is
locked first, so no such row lands between the delete and the new columns.

Revision ID: telemetry_0005
Revises: telemetry_0004
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "telemetry_0005"
down_revision: str | None = "telemetry_0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CALL_COLUMNS = ("cached_prompt_tokens", "reasoning_tokens")
CACHE_COLUMNS = ("cached_prompt_tokens", "reasoning_tokens", "unpriced_calls")


def upgrade() -> None:
    op.execute("LOCK TABLE telemetry.usage_day IN ACCESS EXCLUSIVE MODE")
    op.execute("DELETE FROM telemetry.usage_day")
    for name in CACHE_COLUMNS:
        op.add_column(
            "usage_day", sa.Column(name, sa.BigInteger(), nullable=False), schema="telemetry"
        )
    for name in CALL_COLUMNS:
        op.add_column("llm_call", sa.Column(name, sa.Integer(), nullable=True), schema="telemetry")


def downgrade() -> None:
    for name in CALL_COLUMNS:
        op.drop_column("llm_call", name, schema="telemetry")
    for name in CACHE_COLUMNS:
        op.drop_column("usage_day", name, schema="telemetry")
