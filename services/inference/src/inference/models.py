"""Tables of the inference service, all in the `inference` schema."""

from __future__ import annotations

from sqlmodel import SQLModel

from common.db import schema_registry


class InferenceBase(SQLModel, registry=schema_registry("inference")):
    """Base of every inference table: `schema="inference"` and our naming convention."""
