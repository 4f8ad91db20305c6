"""The rules of the embeddings service: collections, documents, search, model changes."""

from __future__ import annotations

import hashlib
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pydantic_core
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from common.db import after_commit
from common.errors import MissingPermission, NotAUser
from common.identity import Identity
from embeddings import repository
from embeddings.errors import (
    Busy,
    CollectionNotFound,
    DimensionMismatch,
    DocumentNotFound,
    Invalid,
    NameTaken,
)
from embeddings.filters import parse_filter
from embeddings.models import Collection
from embeddings.repository import DocumentTable, current_table
from embeddings.runtime import Runtime, Searchable
from embeddings.schemas import (
    CollectionCreate,
    CollectionUpdate,
    DocumentIn,
    DocumentStatus,
    QueryRequest,
    UpsertResult,
)
from embeddings.vectors import MAX_DIMENSION, pack

INVOKE = "inference:invoke"
# Reads everyone's collections: a permission of the credential (a key scoped without it
# reads only its owner's), never the role alone.
READ_ALL = "embeddings:read_all"
PROBE_TEXT = "dimension probe"


def owner_of(identity: Identity) -> uuid.UUID:
    try:
        return uuid.UUID(identity.user_id or "")
    except ValueError:
        raise NotAUser("Collections belong to users; sign in or use an API key.") from None


def reads_all(identity: Identity) -> bool:
    return identity.has(READ_ALL)


def content_hash(document: DocumentIn, packed: bytes | None = None) -> bytes:
    """`packed`: the document's vector, packed already (vectors.pack)."""
    if document.vector is not None:
        return hashlib.sha256(b"vector\0" + (packed or pack(document.vector))).digest()
    return hashlib.sha256(b"text\0" + (document.text or "").encode()).digest()


def metadata_json(metadata: dict[str, Any]) -> str:
    """Compact JSON text of validated metadata (pydantic-core: several times json.dumps)."""
    return pydantic_core.to_json(metadata).decode()


def _needs_invoke(identity: Identity, why: str) -> None:
    if not identity.has(INVOKE):
        raise MissingPermission(
            f"{why} embeds text with the collection's model, which needs the {INVOKE} "
            "permission; send vectors instead."
        )


def acting_record(identity: Identity) -> dict[str, Any]:
    """What a background re-embedding keeps of the caller who asked for it (the collection's
    `reembed_for`): their permissions, and the key, team and policies (common.policy) their
    model calls are governed by, so that inference governs the re-embedding as it governed
    the request that asked for it (the same budgets, model lists and limits)."""
    return {
        "kind": identity.kind,
        "roles": list(identity.roles),
        "permissions": list(identity.permissions),
        "kid": identity.kid,
        "team": identity.team,
        "policies": identity.policies,
    }


def acting_for(collection: Collection) -> Identity:
    """The caller a re-embedding acts for, as `acting_record` kept them (a record written
    before it kept key, team and policies acts without them)."""
    asked = collection.reembed_for or {}
    kid, team, policies = asked.get("kid"), asked.get("team"), asked.get("policies")
    return Identity(
        sub=str(collection.owner_id), kind=asked.get("kind", "user"), iss="embeddings",
        roles=tuple(asked.get("roles", ())), permissions=tuple(asked.get("permissions", ())),
        kid=kid if isinstance(kid, str) else None, team=team if isinstance(team, str) else None,
        policies=policies if isinstance(policies, dict) else None,
    )  # fmt: skip


def _now() -> datetime:
    return datetime.now(UTC)


# ---------------------------------------------------------------- collections


async def owned(
    db: AsyncSession, identity: Identity, collection_id: uuid.UUID, *, lock: str | None = None,
    others_may: bool = False,
) -> Collection:  # fmt: skip
    """The caller's collection (any, with embeddings:read_all where `others_may`); else 404."""
    row = await repository.get_collection(db, collection_id=collection_id, lock=lock)
    if row is None or not (
        row.owner_id == owner_of(identity) or (others_may and reads_all(identity))
    ):
        raise CollectionNotFound("No such collection.")
    return row


async def probe_dimension(runtime: Runtime, identity: Identity, model: str) -> int:
    _needs_invoke(identity, "A collection")
    (vector,) = await runtime.inference.embed(identity, model, [PROBE_TEXT])
    if len(vector) > MAX_DIMENSION:
        raise Invalid(f"The model {model!r} has {len(vector)} dimensions; HNSW indexes "
                      f"take at most {MAX_DIMENSION}.")  # fmt: skip
    return len(vector)


async def create_collection(
    runtime: Runtime, db: AsyncSession, *, identity: Identity, body: CollectionCreate
) -> Collection:
    owner = owner_of(identity)
    dimension = await probe_dimension(runtime, identity, body.model)
    now = _now()
    row = Collection(
        owner_id=owner, name=body.name, description=body.description, model=body.model,
        dimension=dimension, metric=body.metric,
        lineage=[{"model": body.model, "dimension": dimension, "since": now.isoformat()}],
    )  # fmt: skip
    try:
        async with db.begin_nested():
            await repository.add_collection(db, collection=row)
    except IntegrityError:
        raise NameTaken(f"You already have a collection named {body.name!r}.") from None
    await repository.create_document_table(db, current_table(row))
    return row


async def list_collections(db: AsyncSession, *, identity: Identity) -> list[Collection]:
    owner = None if reads_all(identity) else owner_of(identity)
    return list(await repository.list_collections(db, owner_id=owner))


async def read_collection(
    db: AsyncSession, *, identity: Identity, collection_id: uuid.UUID
) -> tuple[Collection, int]:
    # Shared lock: a model switch or a delete (which drop the table counted here) waits
    # for this read, or this read waits for them and sees what they left.
    row = await owned(db, identity, collection_id, others_may=True, lock="share")
    return row, await repository.count_documents(db, current_table(row))


async def update_collection(
    runtime: Runtime, db: AsyncSession, *, identity: Identity, collection_id: uuid.UUID,
    body: CollectionUpdate,
) -> Collection:  # fmt: skip
    row = await owned(db, identity, collection_id)
    new_model = body.model if body.model is not None and body.model != row.model else None
    changes_model = new_model is not None
    dimension = await probe_dimension(runtime, identity, new_model) if new_model else 0
    row = await owned(db, identity, collection_id, lock="update")
    if body.name is not None and body.name != row.name:
        row.name = body.name
    if "description" in body.model_fields_set:
        row.description = body.description
    if changes_model and body.model is not None:
        if row.reembed_status == "running":
            raise Busy(f"This collection is already changing model to {row.reembed_model!r}.")
        textless = await repository.count_textless(db, current_table(row))
        if textless:
            raise Busy(f"{textless} documents were given as vectors, without text: they cannot "
                       "be re-embedded with another model. Delete them first.")  # fmt: skip
        if row.reembed_status == "failed":  # the failed attempt's table, if it is still there
            await repository.drop_document_table(db, repository.next_table(row))
        row.reembed_status, row.reembed_model, row.reembed_dimension = (
            "running", body.model, dimension)  # fmt: skip
        row.reembed_done, row.reembed_total, row.reembed_error = 0, 0, None
        row.reembed_for = acting_record(identity)
        row.reembed_started_at, row.reembed_worker, row.reembed_heartbeat_at = _now(), None, None
        await repository.create_document_table(db, repository.next_table(row))
    row.updated_at = _now()
    try:
        async with db.begin_nested():
            await db.flush()
    except IntegrityError:
        raise NameTaken(f"You already have a collection named {body.name!r}.") from None
    if changes_model:
        _poke_after_commit(runtime, db, row.id)
    return row


async def delete_collection(
    db: AsyncSession, *, identity: Identity, collection_id: uuid.UUID
) -> None:
    """The collection, its documents and their index (every generation) go together."""
    row = await owned(db, identity, collection_id, lock="update")
    await repository.drop_document_table(db, current_table(row))
    if row.reembed_dimension is not None:
        await repository.drop_document_table(db, repository.next_table(row))
    await repository.delete_collection(db, collection_id=row.id)


# ---------------------------------------------------------------- documents


@dataclass
class _Plan:
    ids: list[str]
    statuses: dict[str, str]
    write: list[int]  # indexes of documents to write with a (new) vector
    metadata_only: list[int]


def _ids(documents: Sequence[DocumentIn]) -> list[str]:
    ids = [d.id or uuid.uuid4().hex for d in documents]
    duplicates = sorted(i for i, n in Counter(ids).items() if n > 1)
    if duplicates:
        shown = ", ".join(repr(i) for i in duplicates[:5])
        raise Invalid(f"Document ids must be unique in a request; repeated: {shown}.")
    return ids


def _check_vectors(table: DocumentTable, documents: Sequence[DocumentIn]) -> None:
    for i, document in enumerate(documents):
        if document.vector is not None:
            check_vector(table, document.vector, f"documents[{i}].vector")


def check_vector(table: DocumentTable, vector: Sequence[float], where: str) -> None:
    if len(vector) != table.dimension:
        raise DimensionMismatch(f"{where} has {len(vector)} dimensions; this collection's "
                                f"model gives {table.dimension}.")  # fmt: skip
    if table.metric == "cosine" and not any(vector):
        raise Invalid(f"{where} is all zeros: it has no direction to compare by cosine.")


def _plan(
    documents: Sequence[DocumentIn], ids: list[str], hashes: list[bytes],
    existing: dict[str, tuple[bytes, dict[str, Any]]],
) -> _Plan:  # fmt: skip
    plan = _Plan(ids=ids, statuses={}, write=[], metadata_only=[])
    for i, (doc_id, digest, document) in enumerate(zip(ids, hashes, documents, strict=True)):
        before = existing.get(doc_id)
        if before is not None and before[0] == digest:
            if before[1] == document.metadata:
                plan.statuses[doc_id] = "unchanged"
            else:
                plan.statuses[doc_id] = "updated"
                plan.metadata_only.append(i)
        else:
            plan.write.append(i)
    return plan


def _poke_after_commit(runtime: Runtime, db: AsyncSession, collection_id: uuid.UUID) -> None:
    """Wake the worker once the request's unit of work has committed what it has to do."""

    async def poke() -> None:
        runtime.poke(collection_id)

    after_commit(db, poke)


def _table_of(collection_id: uuid.UUID, head: Any) -> DocumentTable:
    """The documents table of a repository.collection_head row."""
    return DocumentTable(collection_id, head.generation, head.dimension, head.metric)


async def upsert_documents(
    runtime: Runtime, db: AsyncSession, *, identity: Identity, collection_id: uuid.UUID,
    documents: list[DocumentIn],
) -> UpsertResult:  # fmt: skip
    """Unchanged text is not embedded again; new text is embedded in batches, outside any
    transaction; then one multi-row statement writes the batch, in the request's unit of
    work."""
    ids = _ids(documents)
    packed = [pack(d.vector) if d.vector is not None else None for d in documents]
    hashes = [content_hash(d, p) for d, p in zip(documents, packed, strict=True)]
    has_vectors = any(d.vector is not None for d in documents)
    await _writing(runtime, collection_id, busy=True)
    for _ in range(3):
        head, existing = await _look_before_upsert(runtime, identity, collection_id, documents)
        table = _table_of(collection_id, head)
        _check_vectors(table, documents)
        if has_vectors and head.reembed_status == "running":
            raise Busy("This collection is changing model: send text, not vectors, until then.")
        plan = _plan(documents, ids, hashes, existing)
        texts = sorted({t for i in plan.write if (t := documents[i].text) is not None})
        vectors_of = await _embed_texts(runtime, identity, head.model, table, texts)
        # Held until the request commits: a model switch or a delete waits for this write.
        locked = await repository.get_collection(
            db, collection_id=collection_id, lock="share", generation=head.generation
        )
        if locked is None:
            continue  # the model changed meanwhile (or the collection went): read again
        if has_vectors and locked.reembed_status == "running":
            raise Busy("This collection is changing model: send text, not vectors.")
        inserted = await _write(db, table, documents, plan, hashes, packed, vectors_of)
        for doc_id, was_inserted in inserted.items():
            plan.statuses[doc_id] = "created" if was_inserted else "updated"
        _wrote_after_commit(runtime, db, locked)
        return UpsertResult(
            documents=[DocumentStatus(id=i, status=plan.statuses[i]) for i in ids],
            embedded=len(texts),
        )
    raise Busy("The collection changed model while these documents were embedded; retry.")


async def _look_before_upsert(
    runtime: Runtime, identity: Identity, collection_id: uuid.UUID, documents: list[DocumentIn]
) -> tuple[Any, dict[str, tuple[bytes, dict[str, Any]]]]:
    """The collection (404 unless the caller's) and what it holds of the given ids, read
    outside any transaction (repository.outside_transaction says why)."""
    async with repository.outside_transaction(runtime.engine) as conn:
        head = await repository.collection_head(conn, collection_id=collection_id)
        if head is None or head.owner_id != owner_of(identity):
            raise CollectionNotFound("No such collection.")
        given = [d.id for d in documents if d.id is not None]
        table = _table_of(collection_id, head)
        return head, await repository.existing_documents(conn, table, ids=given)


async def _embed_texts(
    runtime: Runtime, identity: Identity, model: str, table: DocumentTable, texts: list[str]
) -> dict[str, bytes]:
    """text -> its packed vector, from inference (nothing to ask for no text)."""
    if not texts:
        return {}
    _needs_invoke(identity, "Upserting text")
    embedded = await runtime.inference.embed(identity, model, texts, dimension=table.dimension)
    return {t: pack(v) for t, v in zip(texts, embedded, strict=True)}


async def _write(
    db: AsyncSession, table: DocumentTable, documents: Sequence[DocumentIn], plan: _Plan,
    hashes: list[bytes], packed: list[bytes | None], vectors_of: dict[str, bytes],
) -> dict[str, bool]:  # fmt: skip
    def metadata(i: int) -> str:
        return metadata_json(documents[i].metadata)

    def vector(i: int) -> bytes:
        return packed[i] or vectors_of[documents[i].text or ""]

    inserted = await repository.upsert_documents(
        db, table,
        ids=[plan.ids[i] for i in plan.write],
        texts=[documents[i].text for i in plan.write],
        metadata=[metadata(i) for i in plan.write],
        hashes=[hashes[i] for i in plan.write],
        vectors=[vector(i) for i in plan.write],
    )  # fmt: skip
    await repository.update_metadata(
        db, table, ids=[plan.ids[i] for i in plan.metadata_only],
        metadata=[metadata(i) for i in plan.metadata_only],
    )  # fmt: skip
    return inserted


async def _writing(runtime: Runtime, collection_id: uuid.UUID, *, busy: bool) -> None:
    """Tell the index builder to wait: a write is running (`busy`, up to a minute) or just
    ended (for EMBEDDINGS_INDEX_IDLE_SECONDS). Shared by the replicas through Redis."""
    idle_ms = max(1, int(runtime.settings.index_idle_seconds * 1000))
    await repository.mark_written(runtime.redis, collection_id,
                                  for_ms=max(idle_ms, 60_000) if busy else idle_ms)  # fmt: skip


def _wrote_after_commit(runtime: Runtime, db: AsyncSession, collection: Collection) -> None:
    """Once the write has committed: remember it (the index waits for a quiet moment) and
    wake the worker."""
    collection_id, indexed = collection.id, collection.index_status == "ready"

    async def wrote() -> None:
        await _writing(runtime, collection_id, busy=False)
        if not indexed:
            runtime.poke(collection_id)

    after_commit(db, wrote)


async def get_document(
    db: AsyncSession, *, identity: Identity, collection_id: uuid.UUID, document_id: str,
    with_vector: bool,
) -> Any:  # fmt: skip
    collection = await owned(db, identity, collection_id)
    row = await repository.get_document(
        db, current_table(collection), document_id=document_id, with_vector=with_vector
    )
    if row is None:
        raise DocumentNotFound("No such document in this collection.")
    return row


async def delete_document(
    db: AsyncSession, *, identity: Identity, collection_id: uuid.UUID, document_id: str
) -> None:
    collection = await owned(db, identity, collection_id, lock="share")
    if not await repository.delete_document(db, current_table(collection), document_id=document_id):
        raise DocumentNotFound("No such document in this collection.")


# ---------------------------------------------------------------- search


async def query(
    runtime: Runtime, *, identity: Identity, collection_id: uuid.UUID, body: QueryRequest
) -> str:
    """Nearest documents first, as the JSON text of a list of Match (built by Postgres).
    Text is embedded with the collection's current model. Outside any transaction: see
    repository.outside_transaction."""
    where = None if body.filter is None else parse_filter(body.filter)  # 422 before any work
    owner = owner_of(identity)
    ef_search = max(body.ef_search or runtime.settings.default_ef_search, body.top_k)
    embedded: tuple[str, bytes] | None = None
    for _ in range(3):
        found = await _searchable(runtime, collection_id)
        if found is None or found.owner_id != owner:
            raise CollectionNotFound("No such collection.")
        table = found.table
        if body.vector is not None:
            check_vector(table, body.vector, "vector")
            vector = pack(body.vector)
        else:
            if embedded is None or embedded[0] != found.model:
                _needs_invoke(identity, "Querying with text")
                (values,) = await runtime.inference.embed(
                    identity, found.model, [body.text or ""], dimension=table.dimension
                )
                embedded = (found.model, pack(values))
            vector = embedded[1]
        try:
            return await repository.search(
                runtime.engine, table, vector=vector, top_k=body.top_k, where=where,
                ef_search=ef_search, include_vectors=body.include_vectors,
            )  # fmt: skip
        except (asyncpg.UndefinedTableError, DBAPIError) as exc:
            if not repository.is_missing_table(exc):
                raise
            runtime.searchable.forget(collection_id)  # switched or deleted: read it again
    raise Busy("The collection changed model during the query; retry.")


async def _searchable(runtime: Runtime, collection_id: uuid.UUID) -> Searchable | None:
    """What a search needs of the collection: this replica's copy, or read on a miss."""
    found = runtime.searchable.get(collection_id)
    if found is not None:
        return found
    async with repository.outside_transaction(runtime.engine) as conn:
        head = await repository.collection_head(conn, collection_id=collection_id)
    if head is None:
        return None
    found = Searchable(head.owner_id, head.model, _table_of(collection_id, head))
    runtime.searchable.remember(collection_id, found)
    return found
