"""Tables of the embeddings service, all in the `embeddings` schema.

`collection` is the only table Alembic manages. Each collection's documents live in a table
of their own, `doc_<collection uuid hex>_<generation>` (see storage.py): created with the
collection, replaced by a new generation when its model changes, dropped with it.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    CheckConstraint,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    String,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlmodel import Field, SQLModel

from common.db import schema_registry


class EmbeddingsBase(SQLModel, registry=schema_registry("embeddings")):
    """Base of every embeddings table: `schema="embeddings"` and our naming convention."""


def _optional(type_: Any) -> Any:
    """A nullable column, None by default."""
    return Field(default=None, sa_column=Column(type_, nullable=True))


def _counter() -> Any:
    return Field(default=0, sa_column=Column(Integer, nullable=False, server_default="0"))


class Collection(EmbeddingsBase, table=True):
    """A named set of documents embedded with one model into one pgvector index."""

    __tablename__ = "collection"

    id: uuid.UUID = Field(
        default_factory=uuid.uuid4, sa_column=Column(UUID(as_uuid=True), primary_key=True)
    )
    owner_id: uuid.UUID = Field(sa_column=Column(UUID(as_uuid=True), nullable=False))
    name: str = Field(sa_column=Column(String(200), nullable=False))
    description: str | None = _optional(Text)
    model: str = Field(sa_column=Column(String(300), nullable=False))
    dimension: int = Field(sa_column=Column(Integer, nullable=False))
    metric: str = Field(sa_column=Column(String(16), nullable=False))
    # The documents table in use is doc_<id hex>_<generation>.
    generation: int = Field(default=1, sa_column=Column(Integer, nullable=False))
    # HNSW index of the current generation: none | building | ready.
    index_status: str = Field(
        default="none", sa_column=Column(String(16), nullable=False, server_default="none")
    )
    index_claimed_at: datetime | None = _optional(DateTime(timezone=True))
    # Every model the collection has had: [{"model", "dimension", "since"}], oldest first.
    lineage: list[dict[str, Any]] = Field(
        default_factory=list, sa_column=Column(JSONB, nullable=False, server_default="[]")
    )
    # A model change in progress (or failed): documents re-embedded into generation + 1.
    reembed_status: str | None = _optional(String(16))
    reembed_model: str | None = _optional(String(300))
    reembed_dimension: int | None = _optional(Integer)
    reembed_done: int = _counter()
    reembed_total: int = _counter()
    reembed_error: str | None = _optional(Text)
    # Who asked for the change (roles, permissions): inference is called on their behalf.
    reembed_for: dict[str, Any] | None = _optional(JSONB)
    reembed_started_at: datetime | None = _optional(DateTime(timezone=True))
    reembed_worker: str | None = _optional(String(64))
    reembed_heartbeat_at: datetime | None = _optional(DateTime(timezone=True))
    reembed_seconds: float | None = _optional(Float)
    created_at: datetime | None = Field(
        default=None,
        sa_column=Column(DateTime(timezone=True), nullable=False, server_default=func.now()),
    )
    updated_at: datetime | None = Field(
        default=None,
        sa_column=Column(DateTime(timezone=True), nullable=False, server_default=func.now()),
    )

    __table_args__ = (
        Index("uq_collection_owner_name", "owner_id", "name", unique=True),
        Index(
            "ix_collection_reembed",
            "reembed_status",
            postgresql_where=text("reembed_status IS NOT NULL"),
        ),
        Index(
            "ix_collection_index_pending",
            "index_status",
            postgresql_where=text("index_status <> 'ready'"),
        ),
        CheckConstraint("metric IN ('cosine', 'l2', 'inner_product')", name="metric"),
        CheckConstraint("index_status IN ('none', 'building', 'ready')", name="index_status"),
        CheckConstraint("reembed_status IN ('running', 'failed')", name="reembed_status"),
        CheckConstraint("dimension BETWEEN 1 AND 2000", name="dimension"),
    )
