"""The rollups of the calls, per UTC hour and per UTC day: `rollup_hour` and
`rollup_day`, kept by triggers in the writer's transaction, filled from the calls already
stored.

One row per period (the hour's or the day's start, `period`) and (user, API key, team,
model, provider, status) that has calls, with what adds up: requests, tokens (and the
cached prompt and reasoning tokens among them), the exact cost and saving (`numeric`),
the successful calls without a price, the priced calls and those with a saving (so that a
cell whose priced calls an update or a delete took out reads 0 as the calls do, not
0.000000000) and the response-cache hits. Statement-level triggers on `llm_call` (AFTER
INSERT, UPDATE and DELETE, transition tables, as telemetry_0003's) add each statement's
rows to their cells in both tables (and take an update's or a delete's old rows out) in
the same transaction, whoever writes: the stream consumer, POST /v1/events, an
operator's SQL. A redelivered event (`ON CONFLICT DO NOTHING`) inserts no row and adds
nothing. TRUNCATE empties them. Retention drops whole partitions (no trigger fires): the
service deletes their periods in the same transaction. Cells are written in key order,
so concurrent writers lock them in one order (no deadlock).

Each cell also holds a sparse log-bucketed histogram of its calls' latencies and one of
their TTFTs (the streamed calls'), for approximate percentiles (GET /v1/usage's default):
bucket i holds the values in [MIN_MS * GROWTH^i, MIN_MS * GROWTH^(i+1)), i from 0 to
BUCKETS - 1 (0.1 ms to 24.3 hours; values outside are clamped into the first or the last);
the histogram is an int8[] of count * 1024 + i, one entry per bucket with calls, in bucket
order. `telemetry.histogram(values, sign)` makes one, `telemetry.histogram_add(a, b)` adds
two (entries whose count falls to 0 are dropped), the aggregate `telemetry.histogram_sum`
adds many. The same constants are telemetry.histograms'.

Periods are UTC (`date_trunc(unit, occurred_at, 'UTC')`), whatever the session's time
zone. The dimensions may be null (no key, no team): the unique index treats nulls as
equal (`NULLS NOT DISTINCT`, PostgreSQL 15).

Revision ID: telemetry_0007
Revises: telemetry_0006
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "telemetry_0007"
down_revision: str | None = "telemetry_0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UNITS = ("hour", "day")
DIMENSIONS = "period, user_id, api_key_id, team_id, model, provider, status"
FIGURES = (
    "requests, unpriced_calls, priced_calls, prompt_tokens, completion_tokens, "
    "cached_prompt_tokens, reasoning_tokens, cost_usd, cache_hits, saved_calls, saved_usd"
)
HISTOGRAMS = "latency_ms_histogram, ttft_ms_histogram"
MIN_MS = 0.1
GROWTH = 1.04
BUCKETS = 525
# Each cell's cost and saving is exactly coalesce(sum(x), 0) of its calls, scale included:
# 0 (scale 0) when none of them has one, as the calls give.
COUNTED = {"cost_usd": "priced_calls", "saved_usd": "saved_calls"}


def _cells(unit: str, rows: str, sign: str = "1") -> str:
    """The cells of `rows` (a table of calls) per `unit`, with their figures times `sign`."""
    return (
        f"SELECT date_trunc('{unit}', occurred_at, 'UTC') AS period, user_id, api_key_id, "  # noqa: S608
        f"team_id, model, provider, status, "
        f"{sign} * count(*) AS requests, "
        f"{sign} * count(*) FILTER (WHERE status = 'ok' AND cost_usd IS NULL) "
        "AS unpriced_calls, "
        f"{sign} * count(cost_usd) AS priced_calls, "
        f"{sign} * coalesce(sum(prompt_tokens), 0) AS prompt_tokens, "
        f"{sign} * coalesce(sum(completion_tokens), 0) AS completion_tokens, "
        f"{sign} * coalesce(sum(cached_prompt_tokens), 0) AS cached_prompt_tokens, "
        f"{sign} * coalesce(sum(reasoning_tokens), 0) AS reasoning_tokens, "
        f"{sign} * coalesce(sum(cost_usd), 0) AS cost_usd, "
        f"{sign} * count(cache) AS cache_hits, "
        f"{sign} * count(saved_usd) AS saved_calls, "
        f"{sign} * coalesce(sum(saved_usd), 0) AS saved_usd, "
        f"telemetry.histogram(array_agg(latency_ms), {sign}) AS latency_ms_histogram, "
        f"telemetry.histogram(array_agg(ttft_ms), {sign}) AS ttft_ms_histogram "
        f"FROM {rows} GROUP BY 1, 2, 3, 4, 5, 6, 7"
    )


def _net(unit: str) -> str:
    """An update's cells: its new rows added, its old rows taken out."""
    return (
        f"SELECT {DIMENSIONS}, "  # noqa: S608
        + ", ".join(f"sum({name}) AS {name}" for name in FIGURES.split(", "))
        + ", "
        + ", ".join(f"telemetry.histogram_sum({name}) AS {name}" for name in HISTOGRAMS.split(", "))
        + f" FROM ({_cells(unit, 'old_rows', '-1')} UNION ALL {_cells(unit, 'new_rows')}) "
        f"AS d GROUP BY {DIMENSIONS}"
    )


def _apply(unit: str, cells: str) -> str:
    """Add `cells` (figures already signed) to the rollup of `unit`, in key order."""
    additions = ", ".join(
        f"{name} = CASE WHEN u.{COUNTED[name]} + excluded.{COUNTED[name]} = 0 THEN 0 "
        f"ELSE u.{name} + excluded.{name} END"
        if name in COUNTED
        else f"{name} = u.{name} + excluded.{name}"
        for name in FIGURES.split(", ")
    ) + "".join(
        f", {name} = telemetry.histogram_add(u.{name}, excluded.{name})"
        for name in HISTOGRAMS.split(", ")
    )
    return (
        f"INSERT INTO telemetry.rollup_{unit} AS u ({DIMENSIONS}, {FIGURES}, {HISTOGRAMS}) "  # noqa: S608
        f"SELECT {DIMENSIONS}, {FIGURES}, {HISTOGRAMS} FROM ({cells}) AS c "
        f"ORDER BY {DIMENSIONS} "
        f"ON CONFLICT ({DIMENSIONS}) DO UPDATE SET {additions}"
    )


# The bucket of a value: below MIN_MS (0, negative) the first; above the last bucket's
# bound, infinity and NaN the last (`least` of a float8 and NaN is the float8).
BUCKET_FUNCTION = f"""
CREATE FUNCTION telemetry.histogram_bucket(value float8) RETURNS int4
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT least({BUCKETS - 1}, floor(ln(greatest(value, {MIN_MS}) / {MIN_MS})
        / ln({GROWTH})))::int4
$$
"""
HISTOGRAM_FUNCTIONS = (
    BUCKET_FUNCTION,
    # The histogram of the values (nulls left out), each counted `sign` times.
    """
CREATE FUNCTION telemetry.histogram(float8[], int8) RETURNS int8[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT coalesce(array_agg(n * 1024 + b ORDER BY b), '{}')
    FROM (SELECT telemetry.histogram_bucket(v) AS b, $2 * count(*) AS n
          FROM unnest($1) AS v WHERE v IS NOT NULL GROUP BY 1) AS h
$$
""",
    # Two histograms added up (a negative count takes calls out); empty buckets dropped.
    """
CREATE FUNCTION telemetry.histogram_add(int8[], int8[]) RETURNS int8[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT coalesce(array_agg(n * 1024 + b ORDER BY b), '{}')
    FROM (SELECT e & 1023 AS b, sum(e >> 10)::int8 AS n
          FROM unnest($1 || $2) AS e GROUP BY 1) AS h
    WHERE n <> 0
$$
""",
    "CREATE AGGREGATE telemetry.histogram_sum(int8[]) "
    "(SFUNC = telemetry.histogram_add, STYPE = int8[], INITCOND = '{}')",
)

# A cell left without calls (an update or a delete took them all) is deleted.
ROLLUP_FUNCTION = f"""
CREATE FUNCTION telemetry.rollup_add() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        {"; ".join(_apply(unit, _cells(unit, "new_rows")) for unit in UNITS)};
        RETURN NULL;
    ELSIF TG_OP = 'DELETE' THEN
        {"; ".join(_apply(unit, _cells(unit, "old_rows", "-1")) for unit in UNITS)};
    ELSE
        {"; ".join(_apply(unit, _net(unit)) for unit in UNITS)};
    END IF;
    {"; ".join(f"DELETE FROM telemetry.rollup_{unit} WHERE requests = 0" for unit in UNITS)};
    RETURN NULL;
END
$$
"""  # noqa: S608 (built from the constants above)

TRUNCATE_FUNCTION = f"""
CREATE FUNCTION telemetry.rollup_truncate() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    {"; ".join(f"DELETE FROM telemetry.rollup_{unit}" for unit in UNITS)};
    RETURN NULL;
END
$$
"""  # noqa: S608

TRIGGERS = (
    "CREATE TRIGGER rollup_after_insert AFTER INSERT ON telemetry.llm_call "
    "REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT "
    "EXECUTE FUNCTION telemetry.rollup_add()",
    "CREATE TRIGGER rollup_after_update AFTER UPDATE ON telemetry.llm_call "
    "REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT "
    "EXECUTE FUNCTION telemetry.rollup_add()",
    "CREATE TRIGGER rollup_after_delete AFTER DELETE ON telemetry.llm_call "
    "REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT "
    "EXECUTE FUNCTION telemetry.rollup_add()",
    "CREATE TRIGGER rollup_after_truncate AFTER TRUNCATE ON telemetry.llm_call "
    "FOR EACH STATEMENT EXECUTE FUNCTION telemetry.rollup_truncate()",
)


def upgrade() -> None:
    for unit in UNITS:
        table = f"rollup_{unit}"
        op.create_table(
            table,
            sa.Column("period", sa.DateTime(timezone=True), nullable=False),
            sa.Column("user_id", sa.Uuid(), nullable=True),
            sa.Column("api_key_id", sa.String(64), nullable=True),
            sa.Column("team_id", sa.Uuid(), nullable=True),
            sa.Column("model", sa.String(300), nullable=False),
            sa.Column("provider", sa.String(32), nullable=False),
            sa.Column("status", sa.String(32), nullable=False),
            *(
                sa.Column(
                    name,
                    sa.Numeric() if name.endswith("_usd") else sa.BigInteger(),
                    nullable=False,
                )
                for name in FIGURES.split(", ")
            ),
            *(
                sa.Column(
                    name,
                    sa.ARRAY(sa.BigInteger()),
                    nullable=False,
                    server_default=sa.text("'{}'"),
                )
                for name in HISTOGRAMS.split(", ")
            ),
            schema="telemetry",
        )
        op.execute(
            f"CREATE UNIQUE INDEX ux_{table}_cell ON telemetry.{table} "
            f"({DIMENSIONS}) NULLS NOT DISTINCT"
        )
        # A user's usage; a user's, a key's and a team's spend since a time.
        op.create_index(f"ix_{table}_user_id_period", table, ["user_id", "period"],
                        schema="telemetry")  # fmt: skip
        for column in ("api_key_id", "team_id"):
            op.create_index(
                f"ix_{table}_{column}_period",
                table,
                [column, "period"],
                schema="telemetry",
                postgresql_where=sa.text(f"{column} IS NOT NULL"),
            )
    for function in HISTOGRAM_FUNCTIONS:
        op.execute(function)
    op.execute(ROLLUP_FUNCTION)
    op.execute(TRUNCATE_FUNCTION)
    # The calls stored so far are read while writers wait (else a batch committed in
    # between would be counted twice or not at all): the triggers exist before the lock
    # is released.
    op.execute("LOCK TABLE telemetry.llm_call IN SHARE MODE")
    for trigger in TRIGGERS:
        op.execute(trigger)
    for unit in UNITS:
        op.execute(_apply(unit, _cells(unit, "telemetry.llm_call")))


def downgrade() -> None:
    for name in ("insert", "update", "delete", "truncate"):
        op.execute(f"DROP TRIGGER rollup_after_{name} ON telemetry.llm_call")
    op.execute("DROP FUNCTION telemetry.rollup_truncate()")
    op.execute("DROP FUNCTION telemetry.rollup_add()")
    for unit in UNITS:
        op.drop_table(f"rollup_{unit}", schema="telemetry")
    op.execute("DROP AGGREGATE telemetry.histogram_sum(int8[])")
    op.execute("DROP FUNCTION telemetry.histogram_add(int8[], int8[])")
    op.execute("DROP FUNCTION telemetry.histogram(float8[], int8)")
    op.execute("DROP FUNCTION telemetry.histogram_bucket(float8)")
