"""The per-day usage cache: a version per UTC day, kept by triggers, and cached results.

`usage_day_epoch` holds a version (epoch) per UTC day. Statement-level triggers on
`llm_call` (AFTER INSERT, UPDATE and DELETE, with transition tables) give a new epoch to
every closed day (before today UTC, by the database clock) that the statement's rows
touch, whichever writer it is: the stream consumer, POST /v1/events, a direct SQL insert,
an operator's UPDATE. A TRUNCATE gives every day a new epoch. Epochs are drawn from one
sequence, so no value ever comes back.

`usage_day` holds one closed day's `group_by=day` result per scope (user and filters),
with the epoch it was computed at: it is served only while that epoch is still the day's.
`closed_xid` is a transaction id taken after the day ended; a cached result is stored
only from a snapshot that saw every transaction older than it finished (see
telemetry.repository and services/telemetry/README.md).

Revision ID: telemetry_0003
Revises: telemetry_0002
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "telemetry_0003"
down_revision: str | None = "telemetry_0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


class Xid8(sa.types.UserDefinedType[str]):
    cache_ok = True

    def get_col_spec(self, **_: object) -> str:
        return "xid8"


# Each of `days` that had ended by now (clock_timestamp: the database clock at the time of
# the call, not the transaction's start) gets a new epoch. Epochs come from a sequence:
# never the same value twice, for any day, even after epoch rows are deleted (retention);
# and a day's epoch only grows (an update takes its value once it holds the row). In day
# order, so that concurrent writers lock the rows in one order.
RENEW_FUNCTION = """
CREATE FUNCTION telemetry.usage_day_renew(days date[]) RETURNS void
LANGUAGE sql AS $$
    INSERT INTO telemetry.usage_day_epoch AS e (day, epoch)
    SELECT day, nextval('telemetry.usage_day_epoch_seq') FROM unnest(days) AS d(day)
    WHERE day < (clock_timestamp() AT TIME ZONE 'UTC')::date
    ORDER BY day
    ON CONFLICT (day) DO UPDATE SET epoch = nextval('telemetry.usage_day_epoch_seq')
$$
"""

# The UTC days of the statement's rows (its transition tables: the rows written, the rows
# deleted, both for an update), once each.
BUMP_FUNCTION = """
CREATE FUNCTION telemetry.usage_day_bump() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM telemetry.usage_day_renew(ARRAY(
            SELECT DISTINCT (occurred_at AT TIME ZONE 'UTC')::date FROM new_rows));
    ELSIF TG_OP = 'DELETE' THEN
        PERFORM telemetry.usage_day_renew(ARRAY(
            SELECT DISTINCT (occurred_at AT TIME ZONE 'UTC')::date FROM old_rows));
    ELSE
        PERFORM telemetry.usage_day_renew(ARRAY(
            SELECT (occurred_at AT TIME ZONE 'UTC')::date FROM old_rows
            UNION SELECT (occurred_at AT TIME ZONE 'UTC')::date FROM new_rows));
    END IF;
    RETURN NULL;
END
$$
"""

# TRUNCATE has no transition table: every day with an epoch moves to a new one (a result
# is only ever stored for a day with an epoch row, at that row's epoch).
TRUNCATE_FUNCTION = """
CREATE FUNCTION telemetry.usage_day_bump_all() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE telemetry.usage_day_epoch SET epoch = nextval('telemetry.usage_day_epoch_seq');
    RETURN NULL;
END
$$
"""

TRIGGERS = (
    "CREATE TRIGGER usage_day_after_insert AFTER INSERT ON telemetry.llm_call "
    "REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT "
    "EXECUTE FUNCTION telemetry.usage_day_bump()",
    "CREATE TRIGGER usage_day_after_update AFTER UPDATE ON telemetry.llm_call "
    "REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT "
    "EXECUTE FUNCTION telemetry.usage_day_bump()",
    "CREATE TRIGGER usage_day_after_delete AFTER DELETE ON telemetry.llm_call "
    "REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT "
    "EXECUTE FUNCTION telemetry.usage_day_bump()",
    "CREATE TRIGGER usage_day_after_truncate AFTER TRUNCATE ON telemetry.llm_call "
    "FOR EACH STATEMENT EXECUTE FUNCTION telemetry.usage_day_bump_all()",
)


def upgrade() -> None:
    op.create_table(
        "usage_day_epoch",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("epoch", sa.BigInteger(), nullable=False),
        sa.Column("closed_xid", Xid8(), nullable=True),
        sa.PrimaryKeyConstraint("day", name=op.f("pk_usage_day_epoch")),
        schema="telemetry",
    )
    # Dropped with the table (its column owns it).
    op.execute(
        "CREATE SEQUENCE telemetry.usage_day_epoch_seq OWNED BY telemetry.usage_day_epoch.epoch"
    )
    op.create_table(
        "usage_day",
        sa.Column("scope", sa.Text(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("epoch", sa.BigInteger(), nullable=False),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("errors", sa.BigInteger(), nullable=False),
        sa.Column("prompt_tokens", sa.BigInteger(), nullable=False),
        sa.Column("completion_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cost_usd", sa.Numeric(), nullable=False),
        sa.Column("latency_ms_p50", sa.Double(), nullable=True),
        sa.Column("latency_ms_p95", sa.Double(), nullable=True),
        sa.Column("ttft_ms_p50", sa.Double(), nullable=True),
        sa.Column(
            "computed_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("scope", "day", name=op.f("pk_usage_day")),
        schema="telemetry",
    )
    # Retention deletes by day across scopes.
    op.create_index("ix_usage_day_day", "usage_day", ["day"], unique=False, schema="telemetry")
    op.execute(RENEW_FUNCTION)
    op.execute(BUMP_FUNCTION)
    op.execute(TRUNCATE_FUNCTION)
    for trigger in TRIGGERS:
        op.execute(trigger)


def downgrade() -> None:
    for name in ("insert", "update", "delete", "truncate"):
        op.execute(f"DROP TRIGGER usage_day_after_{name} ON telemetry.llm_call")
    op.execute("DROP FUNCTION telemetry.usage_day_bump_all()")
    op.execute("DROP FUNCTION telemetry.usage_day_bump()")
    op.execute("DROP FUNCTION telemetry.usage_day_renew(date[])")
    op.drop_index("ix_usage_day_day", table_name="usage_day", schema="telemetry")
    op.drop_table("usage_day", schema="telemetry")
    op.drop_table("usage_day_epoch", schema="telemetry")
