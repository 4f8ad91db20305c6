"""Every storage access of the embeddings service: the `collection` table, the documents
tables, and the collections' last-write marks in Redis.

A documents table is `embeddings.doc_<collection uuid hex>_<generation>`: its name is made
from our own UUID and counter only (never from input), and every value is a bound parameter.

Everything runs in the caller's unit of work (the request's session, or the worker's
common.db.transaction), except the reads of `outside_transaction`: the one exception.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

import asyncpg
from redis.asyncio import Redis
from sqlalchemy import (
    ARRAY,
    Column,
    ColumnElement,
    DateTime,
    Float,
    LargeBinary,
    MetaData,
    Select,
    Table,
    Text,
    any_,
    bindparam,
    delete,
    func,
    literal_column,
    or_,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession
from sqlmodel import col

from embeddings.filters import Filter
from embeddings.models import Collection
from embeddings.vectors import Vector

SCHEMA = "embeddings"
# metric -> (pgvector distance operator, HNSW operator class)
METRICS: dict[str, tuple[str, str]] = {
    "cosine": ("<=>", "vector_cosine_ops"),
    "l2": ("<->", "vector_l2_ops"),
    "inner_product": ("<#>", "vector_ip_ops"),
}
LAST_WRITE_KEY = "embeddings:last-write:{}"


@asynccontextmanager
async def outside_transaction(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A pooled connection in autocommit, for reads that must not be part of a unit of work.

    THE exception to "one unit of work per request" (issue 17), for two reads:
    - the vector query (collection_head, search), the service's hot path: no BEGIN or COMMIT
      round trip, no Session, and its hnsw settings kept per connection (set only when they
      change, which outside a transaction no rollback can undo). Measured against the query
      in the request's session (BEGIN, SET LOCAL of the hnsw settings, the search compiled
      by SQLAlchemy, COMMIT), both served at once on one platform and collection, queries
      interleaved (bench/README.md, issue 17): p50 2.1-3.1 ms against 3.0-5.1 ms at
      ef_search 40, 3.1-9.2 ms against 5.1-13.8 ms at ef_search 100;
    - an upsert's look before it embeds (collection_head, existing_documents): a transaction
      left open across the call to inference would hold the documents table for seconds,
      and a model switch's DROP of that table, holding the collection row meanwhile, would
      deadlock with the upsert's write. The write itself is the request's unit of work.
    A table switched away or dropped meanwhile just fails the statement: read again."""
    async with engine.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        yield conn


# ---------------------------------------------------------------- collections


async def add_collection(db: AsyncSession, *, collection: Collection) -> Collection:
    db.add(collection)
    await db.flush()
    await db.refresh(collection)
    return collection


async def get_collection(
    db: AsyncSession, *, collection_id: uuid.UUID, lock: str | None = None,
    generation: int | None = None,
) -> Collection | None:  # fmt: skip
    """`lock`: "share" keeps it from changing model or going away until the transaction
    ends (writers); "update" for the one who changes it. `generation`: only if it is still
    at that one (else None, and nothing locked)."""
    query = select(Collection).where(col(Collection.id) == collection_id)
    if generation is not None:
        query = query.where(col(Collection.generation) == generation)
    if lock == "share":
        query = query.with_for_update(read=True)
    elif lock == "update":
        query = query.with_for_update()
    return (await db.execute(query.execution_options(populate_existing=True))).scalar_one_or_none()


async def collection_head(conn: AsyncConnection, *, collection_id: uuid.UUID) -> Any:
    """What a search or an upsert looks at first (outside_transaction): owner_id, model,
    generation, dimension, metric, reembed_status."""
    query = select(
        col(Collection.owner_id), col(Collection.model), col(Collection.generation),
        col(Collection.dimension), col(Collection.metric), col(Collection.reembed_status),
    ).where(col(Collection.id) == collection_id)  # fmt: skip
    return (await conn.execute(query)).one_or_none()


async def list_collections(db: AsyncSession, *, owner_id: uuid.UUID | None) -> Sequence[Collection]:
    """One owner's collections (everyone's when owner_id is None), oldest first."""
    query = select(Collection).order_by(col(Collection.created_at), col(Collection.id))
    if owner_id is not None:
        query = query.where(col(Collection.owner_id) == owner_id)
    return (await db.execute(query)).scalars().all()


async def delete_collection(db: AsyncSession, *, collection_id: uuid.UUID) -> None:
    await db.execute(delete(Collection).where(col(Collection.id) == collection_id))


async def collections_to_index(db: AsyncSession, *, stale_before: datetime) -> list[uuid.UUID]:
    """Collections without a ready index that nobody is building (or whose builder vanished)."""
    query = select(col(Collection.id)).where(
        or_(
            col(Collection.index_status) == "none",
            (col(Collection.index_status) == "building")
            & (col(Collection.index_claimed_at) < stale_before),
        )
    )
    return list((await db.execute(query)).scalars().all())


async def abandoned_index_builds(db: AsyncSession, *, stale_before: datetime) -> list[uuid.UUID]:
    """Collections whose index build was claimed before `stale_before` and never finished:
    its builder died (SIGKILL, a lost node) or went silent. Their CREATE INDEX was rolled
    back with its transaction; the claim is all that is left."""
    query = select(col(Collection.id)).where(
        col(Collection.index_status) == "building",
        col(Collection.index_claimed_at) < stale_before,
    )
    return list((await db.execute(query)).scalars().all())


async def claim_index_build(
    db: AsyncSession, *, collection_id: uuid.UUID, generation: int, stale_before: datetime
) -> bool:
    """Mark the index as being built by us, unless someone else is (atomic across replicas)."""
    result = await db.execute(
        text(
            "UPDATE embeddings.collection SET index_status = 'building', index_claimed_at = now()"
            " WHERE id = :id AND generation = :generation AND (index_status = 'none'"
            " OR (index_status = 'building' AND index_claimed_at < :stale))"
        ),
        {"id": collection_id, "generation": generation, "stale": stale_before},
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def set_index_status(
    db: AsyncSession, *, collection_id: uuid.UUID, generation: int, status: str
) -> None:
    await db.execute(
        text(
            "UPDATE embeddings.collection SET index_status = :status, index_claimed_at = NULL"
            " WHERE id = :id AND generation = :generation"
        ),
        {"id": collection_id, "generation": generation, "status": status},
    )


async def claim_reembed(
    db: AsyncSession, *, worker: str, stale_before: datetime
) -> Collection | None:
    """A model change nobody is working on (or whose worker went silent), now ours."""
    query = (
        select(Collection)
        .where(
            col(Collection.reembed_status) == "running",
            or_(
                col(Collection.reembed_worker).is_(None),
                col(Collection.reembed_heartbeat_at) < stale_before,
            ),
        )
        .limit(1)
        .with_for_update(skip_locked=True)
    )
    row = (await db.execute(query)).scalar_one_or_none()
    if row is not None:
        row.reembed_worker = worker
        row.reembed_heartbeat_at = func.now()  # type: ignore[assignment]
        await db.flush()
        await db.refresh(row)
    return row


async def renew_claims(db: AsyncSession, *, worker: str, building: list[uuid.UUID]) -> None:
    """Renew this worker's claims: its model changes, and the index builds it runs. Waits
    at most a second for a row (a switch or a writer holding it): the next renewal comes
    long before the claim could go stale."""
    await db.execute(text("SET LOCAL lock_timeout = '1s'"))
    await db.execute(
        text(
            "UPDATE embeddings.collection SET reembed_heartbeat_at = now()"
            " WHERE reembed_worker = :worker AND reembed_status = 'running'"
        ),
        {"worker": worker},
    )
    if building:
        await db.execute(
            text(
                "UPDATE embeddings.collection SET index_claimed_at = now()"
                " WHERE id = ANY(:ids) AND index_status = 'building'"
            ),
            {"ids": building},
        )


async def reembed_progress(
    db: AsyncSession, *, collection_id: uuid.UUID, worker: str, done: int, total: int
) -> bool:
    """Record progress; False if the job is no longer ours (cancelled, deleted, taken over)."""
    result = await db.execute(
        text(
            "UPDATE embeddings.collection SET reembed_done = :done, reembed_total = :total,"
            " reembed_heartbeat_at = now() WHERE id = :id AND reembed_worker = :worker"
            " AND reembed_status = 'running'"
        ),
        {"id": collection_id, "worker": worker, "done": done, "total": total},
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


# ---------------------------------------------------------------- last writes (Redis)


async def mark_written(redis: Redis, collection_id: uuid.UUID, *, for_ms: int) -> None:
    """The collection is being written to, or just was: its index build waits `for_ms`
    (shared by the replicas)."""
    await redis.set(LAST_WRITE_KEY.format(collection_id.hex), 1, px=for_ms)


async def written_lately(redis: Redis, collection_id: uuid.UUID) -> bool:
    return bool(await redis.exists(LAST_WRITE_KEY.format(collection_id.hex)))


# ---------------------------------------------------------------- documents tables


@dataclass(frozen=True)
class DocumentTable:
    collection_id: uuid.UUID
    generation: int
    dimension: int
    metric: str

    @property
    def name(self) -> str:
        return table_name(self.collection_id, self.generation)

    @property
    def table(self) -> Table:
        return _table(self.name, self.dimension)

    @property
    def qualified(self) -> str:
        return f'{SCHEMA}."{self.name}"'

    @property
    def index_name(self) -> str:
        return f"{self.name}_hnsw"

    def distance(self, vector: bytes) -> ColumnElement[float]:
        operator = METRICS[self.metric][0]
        query = bindparam("query_vector", vector, type_=Vector(self.dimension))
        distance: ColumnElement[float] = self.table.c.embedding.op(operator, return_type=Float)(
            query
        )
        return distance


def table_name(collection_id: uuid.UUID, generation: int) -> str:
    return f"doc_{collection_id.hex}_{int(generation)}"


def current_table(collection: Collection) -> DocumentTable:
    return DocumentTable(collection.id, collection.generation, collection.dimension,
                         collection.metric)  # fmt: skip


def next_table(collection: Collection) -> DocumentTable:
    """Where a model change writes: the next generation, at the new model's dimension."""
    assert collection.reembed_dimension is not None
    return DocumentTable(collection.id, collection.generation + 1, collection.reembed_dimension,
                         collection.metric)  # fmt: skip


@lru_cache(maxsize=4096)
def _table(name: str, dimension: int) -> Table:
    return Table(
        name,
        MetaData(schema=SCHEMA),
        Column("id", Text, primary_key=True),
        Column("text", Text, nullable=True),
        Column("metadata", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
        Column("content_hash", LargeBinary, nullable=False),
        Column("embedding", Vector(dimension), nullable=False),
        Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    )


async def create_document_table(db: AsyncSession, table: DocumentTable) -> None:
    await db.run_sync(lambda session: table.table.create(session.connection()))


async def drop_document_table(db: AsyncSession, table: DocumentTable) -> None:
    await db.execute(text(f"DROP TABLE IF EXISTS {table.qualified}"))


async def build_index(
    db: AsyncSession, table: DocumentTable, *, m: int, ef_construction: int, memory: str
) -> None:
    """pgvector's bulk HNSW build (far faster than inserting into an index row by row).

    A plain CREATE INDEX: readers go on, writers to this collection wait for it. Not
    CONCURRENTLY, which waits for every older snapshot in the whole database (one idle
    transaction anywhere stalls it) and leaves an invalid index behind when interrupted.
    It gives up at once if writers hold the table (lock_timeout): the worker retries later.
    If the service dies meanwhile (SIGKILL, a lost node), Postgres would finish the build
    for nobody, holding off the collection's writers all along, and only then roll it back
    on finding the client gone: client_connection_check_interval has it look every second
    and roll back at once (Linux; elsewhere the setting is accepted and does nothing)."""
    await db.execute(
        text(
            "SELECT set_config('maintenance_work_mem', :memory, true),"
            " set_config('lock_timeout', '1s', true),"
            " set_config('client_connection_check_interval', '1s', true)"
        ),
        {"memory": memory},
    )
    await db.execute(
        text(
            f'CREATE INDEX IF NOT EXISTS "{table.index_name}" ON {table.qualified}'
            f" USING hnsw (embedding {METRICS[table.metric][1]})"
            f" WITH (m = {int(m)}, ef_construction = {int(ef_construction)})"
        )
    )
    # Statistics for the planner (how selective a metadata filter is, how big the table).
    await db.execute(text(f"ANALYZE {table.qualified}"))


async def existing_documents(
    db: AsyncSession | AsyncConnection, table: DocumentTable, *, ids: list[str]
) -> dict[str, tuple[bytes, dict[str, Any]]]:
    """id -> (content hash, metadata) of those of `ids` that exist."""
    if not ids:
        return {}
    t = table.table
    rows = await db.execute(
        select(t.c.id, t.c.content_hash, t.c.metadata).where(
            t.c.id == any_(bindparam("ids", ids, type_=ARRAY(Text)))
        )
    )
    return {row.id: (bytes(row.content_hash), row.metadata) for row in rows}


async def upsert_documents(
    db: AsyncSession,
    table: DocumentTable,
    *,
    ids: list[str],
    texts: list[str | None],
    metadata: list[str],
    hashes: list[bytes],
    vectors: list[bytes],
) -> dict[str, bool]:
    """One multi-row INSERT ... ON CONFLICT for the whole batch; id -> inserted (else updated).

    `metadata` are JSON texts, `vectors` packed (vectors.pack)."""
    if not ids:
        return {}
    result = await db.execute(
        text(
            f"INSERT INTO {table.qualified} AS d (id, text, metadata, content_hash, embedding)"  # noqa: S608 (a UUID-derived table name)
            " SELECT u.id, u.text, u.metadata::jsonb, u.hash, u.embedding FROM unnest("
            "CAST(:ids AS text[]), CAST(:texts AS text[]), CAST(:metadata AS text[]),"
            " CAST(:hashes AS bytea[]), CAST(:vectors AS vector[]))"
            " AS u(id, text, metadata, hash, embedding)"
            " ON CONFLICT (id) DO UPDATE SET text = excluded.text, metadata = excluded.metadata,"
            " content_hash = excluded.content_hash, embedding = excluded.embedding,"
            " updated_at = now() RETURNING d.id, (d.xmax = 0) AS inserted"
        ),
        {"ids": ids, "texts": texts, "metadata": metadata, "hashes": hashes, "vectors": vectors},
    )
    return {row.id: row.inserted for row in result}


async def update_metadata(
    db: AsyncSession, table: DocumentTable, *, ids: list[str], metadata: list[str]
) -> None:
    """New metadata for documents whose text or vector did not change (no re-embedding)."""
    if ids:
        await db.execute(
            text(
                f"UPDATE {table.qualified} AS d"  # noqa: S608 (a UUID-derived table name)
                " SET metadata = u.metadata::jsonb, updated_at = now()"
                " FROM unnest(CAST(:ids AS text[]), CAST(:metadata AS text[])) AS u(id, metadata)"
                " WHERE d.id = u.id"
            ),
            {"ids": ids, "metadata": metadata},
        )


async def get_document(
    db: AsyncSession, table: DocumentTable, *, document_id: str, with_vector: bool
) -> Any:
    t = table.table
    columns = [t.c.id, t.c.text, t.c.metadata, t.c.updated_at]
    if with_vector:
        columns.append(t.c.embedding)
    return (await db.execute(select(*columns).where(t.c.id == document_id))).one_or_none()


async def delete_document(db: AsyncSession, table: DocumentTable, *, document_id: str) -> bool:
    t = table.table
    result = await db.execute(delete(t).where(t.c.id == document_id))
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def count_documents(db: AsyncSession, table: DocumentTable) -> int:
    return int((await db.execute(select(func.count()).select_from(table.table))).scalar_one())


async def has_rows(db: AsyncSession, table: DocumentTable, *, at_least: int) -> bool:
    limited = select(table.table.c.id).limit(at_least).subquery()
    count = (await db.execute(select(func.count()).select_from(limited))).scalar_one()
    return int(count) >= at_least


async def count_textless(db: AsyncSession, table: DocumentTable) -> int:
    t = table.table
    query = select(func.count()).select_from(t).where(t.c.text.is_(None))
    return int((await db.execute(query)).scalar_one())


def search_query(
    table: DocumentTable,
    *,
    vector: bytes,
    top_k: int,
    where: Filter | None,
    include_vectors: bool,
) -> Any:
    t = table.table
    distance = table.distance(vector).label("distance")
    columns: list[Any] = [t.c.id, t.c.text, t.c.metadata, distance]
    if include_vectors:
        columns.append(t.c.embedding)
    query = select(*columns).order_by(distance).limit(top_k)
    return query if where is None else query.where(where.on(t.c.metadata))


async def search(
    engine: AsyncEngine,
    table: DocumentTable,
    *,
    vector: bytes,
    top_k: int,
    where: Filter | None,
    ef_search: int,
    include_vectors: bool,
) -> str:
    """The nearest documents as the JSON text of the answer, nearest first: an array of
    `{id, score, text, metadata, vector}` (schemas.Match), built by Postgres, so the rows
    are never decoded and encoded again here. HNSW when the index is there, with pgvector
    0.8's iterative scan so that a selective filter still fills top_k; an exact scan
    otherwise.

    The hot path of the service, so it runs outside any transaction (outside_transaction
    says why). Without a filter, on asyncpg itself, with a statement prepared once per
    connection, on a connection drawn from the engine's pool as it is (`raw_connection`):
    SQLAlchemy's execution machinery costs more than the search on a small collection,
    and its AsyncConnection (a Connection, an isolation level set and reset, four greenlets,
    each with a fresh 16 kB frame stack mmapped and unmapped) cost 0.16-0.24 ms of CPU per
    query, of the 0.85-1.0 ms the service spent (bench/README.md, issue 22). Nothing on that
    connection starts a transaction, so it returns to the pool without a round trip. A
    filtered search is compiled by SQLAlchemy (filters.py binds every value)."""
    if where is None:
        pooled = await engine.raw_connection()  # the pool's limits, wait and idle pings
        try:
            driver = await _search_connection(pooled, ef_search)
            found = await driver.fetchval(plain_search_sql(table, include_vectors), vector, top_k)
        except _LOST:
            pooled.invalidate()  # never back to the pool: the next caller gets a new one
            raise
        finally:
            pooled.close()  # no transaction to end: nothing to await
        return str(found)
    async with outside_transaction(engine) as conn:
        pooled = await conn.get_raw_connection()
        try:
            await _search_connection(pooled, ef_search)
            nearest = search_query(table, vector=vector, top_k=top_k, where=where,
                                   include_vectors=include_vectors)  # fmt: skip
            answer: Select[tuple[str]] = select(
                literal_column(matches_json(table.metric, include_vectors))
            )
            found = (await conn.execute(answer.select_from(nearest.subquery("s")))).scalar()
        except _LOST:
            pooled.invalidate()
            raise
    return str(found)


# A connection that can no longer be trusted: lost, closed, or (InternalClientError, seen
# when a query meets a backend the server just terminated) in a protocol state of its own.
_LOST = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
)


async def _search_connection(pooled: Any, ef_search: int) -> Any:
    """The pooled connection's asyncpg connection, with the search's settings.

    Session-level settings, remembered per connection: set only when they change. Nothing
    else on these connections sets them at session level, and outside a transaction no
    rollback can undo them."""
    driver = pooled.driver_connection
    assert driver is not None
    settings = (int(ef_search), "relaxed_order")
    if pooled.info.get(_SEARCH_SETTINGS) != settings:
        pooled.info.pop(_SEARCH_SETTINGS, None)
        await driver.execute(
            "SELECT set_config('hnsw.ef_search', $1, false),"
            " set_config('hnsw.iterative_scan', $2, false)",
            str(settings[0]), settings[1],
        )  # fmt: skip
        pooled.info[_SEARCH_SETTINGS] = settings
    return driver


_SEARCH_SETTINGS = "embeddings.search_settings"


@lru_cache(maxsize=16)
def matches_json(metric: str, include_vectors: bool) -> str:
    """The answer's JSON text from the rows `s` of search_query, nearest first: the outer
    ORDER BY also puts back in place a near neighbour that relaxed_order returned slightly
    out of it. Higher scores are more similar, for every metric (see the README): cosine
    1 - distance, the others minus the distance (`<#>` is the negative inner product). A
    vector as the float8 values of its float4s (what decoding it in Python gives)."""
    score = "1 - s.distance" if metric == "cosine" else "-s.distance"
    vector = "s.embedding::real[]::float8[]" if include_vectors else "NULL"
    return (
        "coalesce(json_agg(json_build_object("
        f"'id', s.id, 'score', {score}, 'text', s.text, 'metadata', s.metadata, "
        f"'vector', {vector}) ORDER BY s.distance), '[]')::text"
    )


@lru_cache(maxsize=4096)
def plain_search_sql(table: DocumentTable, include_vectors: bool) -> str:
    """search_query without a filter, as SQL for asyncpg ($1 the vector, $2 top_k), giving
    the answer's JSON text (matches_json)."""
    columns = "id, text, metadata, embedding, " if include_vectors else "id, text, metadata, "
    operator = METRICS[table.metric][0]
    nearest = (
        f"SELECT {columns}embedding {operator} $1::vector AS distance"  # noqa: S608 (a UUID-derived table name)
        f" FROM {table.qualified} ORDER BY distance LIMIT $2"
    )
    return f"SELECT {matches_json(table.metric, include_vectors)} FROM ({nearest}) AS s"  # noqa: S608


def is_missing_table(exc: BaseException) -> bool:
    """The documents table is gone: a model change switched tables, or the collection was
    deleted (by this replica or another) since we read it."""
    if isinstance(exc, asyncpg.UndefinedTableError):
        return True
    return isinstance(exc, DBAPIError) and getattr(exc.orig, "sqlstate", None) == "42P01"


# ---------------------------------------------------------------- model change


async def stale_documents(
    db: AsyncSession, old: DocumentTable, new: DocumentTable, *, limit: int
) -> Sequence[Any]:
    """Documents of `old` missing from `new` or with other content there: (id, text, hash)."""
    o, n = old.table, new.table
    query = (
        select(o.c.id, o.c.text, o.c.content_hash, o.c.metadata)
        .select_from(o.outerjoin(n, n.c.id == o.c.id))
        .where(or_(n.c.id.is_(None), n.c.content_hash != o.c.content_hash))
        .order_by(o.c.id)
        .limit(limit)
    )
    return (await db.execute(query)).all()


async def finish_copy(db: AsyncSession, old: DocumentTable, new: DocumentTable) -> None:
    """Make `new` hold exactly `old`'s documents and metadata (the vectors are already new)."""
    await db.execute(
        text(
            f"UPDATE {new.qualified} AS n SET metadata = o.metadata, updated_at = o.updated_at"  # noqa: S608 (a UUID-derived table name)
            f" FROM {old.qualified} AS o"
            " WHERE o.id = n.id AND n.metadata IS DISTINCT FROM o.metadata"
        )
    )
    await db.execute(
        text(
            f"DELETE FROM {new.qualified} AS n"  # noqa: S608 (a UUID-derived table name)
            f" WHERE NOT EXISTS (SELECT 1 FROM {old.qualified} AS o WHERE o.id = n.id)"
        )
    )
