"""Tables of the embeddings service, all in the `embeddings` schema."""

from __future__ import annotations

from sqlmodel import SQLModel

from common.db import schema_registry


class EmbeddingsBase(SQLModel, registry=schema_registry("embeddings")):
    """Base of every embeddings table: `schema="embeddings"` and our naming convention."""
