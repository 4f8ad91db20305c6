"""Public routes of the embeddings service (reached through the gateway, identity verified)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response, status
from pydantic_core import from_json

from common.db import DbSession
from common.identity import require_identity
from common.json_bodies import JsonRoute
from embeddings import service
from embeddings.deps import CollectionId, Reader, RuntimeDep, Writer
from embeddings.models import Collection
from embeddings.runtime import Runtime
from embeddings.schemas import (
    MAX_ID,
    CollectionCreate,
    CollectionRead,
    CollectionUpdate,
    DocumentRead,
    IndexRead,
    LineageEntry,
    Match,
    QueryRequest,
    ReembedRead,
    UpsertRequest,
    UpsertResult,
)

router = APIRouter(tags=["embeddings"], route_class=JsonRoute)
DocumentId = Annotated[str, Path(min_length=1, max_length=MAX_ID)]


def _read(row: Collection, runtime: Runtime, count: int | None = None) -> CollectionRead:
    settings = runtime.settings
    reembedding = None
    if row.reembed_status is not None:
        reembedding = ReembedRead(
            status=row.reembed_status, model=row.reembed_model or "",
            dimension=row.reembed_dimension or 0, done=row.reembed_done, total=row.reembed_total,
            error=row.reembed_error, started_at=row.reembed_started_at,
        )  # fmt: skip
    return CollectionRead(
        id=row.id, owner_id=row.owner_id, name=row.name, description=row.description,
        model=row.model, dimension=row.dimension, metric=row.metric,
        document_count=count,
        index=IndexRead(status=row.index_status, m=settings.hnsw_m,
                        ef_construction=settings.hnsw_ef_construction),
        reembedding=reembedding,
        lineage=[LineageEntry.model_validate(entry) for entry in row.lineage],
        created_at=row.created_at, updated_at=row.updated_at,
    )  # fmt: skip


@router.post("/v1/collections", status_code=status.HTTP_201_CREATED)
async def create_collection(
    body: CollectionCreate, identity: Writer, db: DbSession, runtime: RuntimeDep
) -> CollectionRead:
    """A new collection; its dimension is learned from the model (one probe embedding)."""
    row = await service.create_collection(runtime, db, identity=identity, body=body)
    return _read(row, runtime, 0)


@router.get("/v1/collections")
async def list_collections(
    identity: Reader, db: DbSession, runtime: RuntimeDep
) -> list[CollectionRead]:
    """Your collections (with embeddings:read_all, everyone's)."""
    return [_read(r, runtime) for r in await service.list_collections(db, identity=identity)]


@router.get("/v1/collections/{id}")
async def get_collection(
    collection_id: CollectionId, identity: Reader, db: DbSession, runtime: RuntimeDep
) -> CollectionRead:
    """The collection, its document count, index state and model change progress."""
    row, count = await service.read_collection(db, identity=identity, collection_id=collection_id)
    return _read(row, runtime, count)


@router.patch("/v1/collections/{id}")
async def update_collection(
    collection_id: CollectionId, body: CollectionUpdate, identity: Writer, db: DbSession,
    runtime: RuntimeDep,
) -> CollectionRead:  # fmt: skip
    """Rename, describe, or change model: the documents are re-embedded in the background
    into a new index, and the collection switches to it atomically when it is complete."""
    row = await service.update_collection(
        runtime, db, identity=identity, collection_id=collection_id, body=body
    )
    return _read(row, runtime)


@router.delete("/v1/collections/{id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_collection(collection_id: CollectionId, identity: Writer, db: DbSession) -> None:
    """The collection, its documents and its index."""
    await service.delete_collection(db, identity=identity, collection_id=collection_id)


@router.post("/v1/collections/{id}/documents")
async def upsert_documents(
    collection_id: CollectionId, body: UpsertRequest, identity: Writer, db: DbSession,
    runtime: RuntimeDep,
) -> UpsertResult:  # fmt: skip
    """Insert or replace up to 1,000 documents, each with `text` or a precomputed `vector`."""
    return await service.upsert_documents(
        runtime, db, identity=identity, collection_id=collection_id, documents=body.documents
    )


@router.get("/v1/collections/{id}/documents/{doc_id}")
async def get_document(
    collection_id: CollectionId, doc_id: DocumentId, identity: Reader, db: DbSession,
    include_vector: Annotated[bool, Query()] = False,
) -> DocumentRead:  # fmt: skip
    row = await service.get_document(
        db, identity=identity, collection_id=collection_id, document_id=doc_id,
        with_vector=include_vector,
    )  # fmt: skip
    return DocumentRead(id=row.id, text=row.text, metadata=row.metadata, updated_at=row.updated_at,
                        vector=row.embedding if include_vector else None)  # fmt: skip


@router.delete("/v1/collections/{id}/documents/{doc_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_document(
    collection_id: CollectionId, doc_id: DocumentId, identity: Writer, db: DbSession
) -> None:
    await service.delete_document(
        db, identity=identity, collection_id=collection_id, document_id=doc_id
    )


QUERY_PATH = "/v1/collections/{id}/query"


@router.post(QUERY_PATH, response_model=list[Match])
async def query(
    collection_id: CollectionId, body: QueryRequest, identity: Reader, runtime: RuntimeDep
) -> Response:
    """The `top_k` most similar documents, most similar first, optionally filtered on
    metadata. See the service README for the score of each metric and the filter grammar."""
    found = await service.query(runtime, identity=identity, collection_id=collection_id,
                                body=body)  # fmt: skip
    return Response(found, media_type="application/json")  # the JSON Postgres built


async def fast_query(request: Request, params: Mapping[str, str]) -> Response | None:
    """`query` with a given vector, on its success path, below FastAPI's router
    (common.fastpath): the same checks in the same terms, giving up (None, a Problem, a
    ValueError) wherever the route would answer with an error, which it then does. A
    search only reads, so running it twice is harmless; a query with text is left to the
    route, since its embedding call (billed, recorded in telemetry) must not run twice,
    and it dwarfs the millisecond saved here anyway."""
    content_type = request.headers.get("content-type", "")
    if content_type.partition(";")[0].strip().lower() != "application/json":
        return None  # FastAPI's own content negotiation decides
    identity = await require_identity(request)
    if not identity.has("embeddings:read"):
        return None
    # Parsed as JsonRoute parses a body, validated as FastAPI validates it (from Python).
    body = QueryRequest.model_validate(from_json(await request.body(), allow_inf_nan=True))
    if body.vector is None:
        return None
    runtime: Runtime = request.app.state.runtime
    found = await service.query(
        runtime, identity=identity, collection_id=uuid.UUID(params["id"]), body=body
    )
    return Response(found, media_type="application/json")
