"""Request and response bodies of the embeddings API."""

from __future__ import annotations

import math
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

import pydantic_core
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

from embeddings.vectors import FLOAT32_MAX, MAX_DIMENSION

Metric = Literal["cosine", "l2", "inner_product"]
MAX_DOCUMENTS = 1000
MAX_TEXT = 100_000
MAX_METADATA_BYTES = 16_384
MAX_ID = 256


def clean(text: str) -> bool:
    """No NUL (Postgres refuses it in text and JSON) and no lone surrogate (not UTF-8)."""
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _clean_text(value: str) -> str:
    if not clean(value):
        raise ValueError("contains a NUL character or invalid Unicode")
    return value


def _clean_json(value: Any, depth: int = 0) -> None:
    if depth > 32:
        raise ValueError("nested too deeply")
    if isinstance(value, str):
        _clean_text(value)
    elif isinstance(value, float) and not math.isfinite(value):
        raise ValueError("numbers must be finite (no NaN or Infinity)")
    elif isinstance(value, dict):
        for key, item in value.items():
            _clean_text(key)
            _clean_json(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _clean_json(item, depth + 1)


def _metadata(value: dict[str, Any]) -> dict[str, Any]:
    _clean_json(value)
    if len(pydantic_core.to_json(value)) > MAX_METADATA_BYTES:
        raise ValueError(f"metadata is limited to {MAX_METADATA_BYTES} bytes of JSON")
    return value


CleanText = Annotated[str, AfterValidator(_clean_text)]
Name = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=200),
    AfterValidator(_clean_text),
]
Description = Annotated[str, StringConstraints(max_length=2000), AfterValidator(_clean_text)]
ModelName = Annotated[
    str, StringConstraints(min_length=1, max_length=300), AfterValidator(_clean_text)
]
DocumentId = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_ID, pattern=r"^[^/?#\x00-\x1f\x7f]+$"),
    AfterValidator(_clean_text),
]
Metadata = Annotated[dict[str, Any], AfterValidator(_metadata)]
Component = Annotated[float, Field(allow_inf_nan=False, ge=-FLOAT32_MAX, le=FLOAT32_MAX)]
VectorIn = Annotated[list[Component], Field(min_length=1, max_length=MAX_DIMENSION)]


class CollectionCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"name": "docs", "model": "local/all-MiniLM-L6-v2"}]},
    )

    name: Name
    model: ModelName = Field(description="An inference model, e.g. local/all-MiniLM-L6-v2.")
    metric: Metric = "cosine"
    description: Description | None = None


class CollectionUpdate(BaseModel):
    """All optional. A new `model` re-embeds every document in the background."""

    model_config = ConfigDict(extra="forbid")

    name: Name | None = None
    description: Description | None = None
    model: ModelName | None = None


class IndexRead(BaseModel):
    type: Literal["hnsw"] = "hnsw"
    status: Literal["none", "building", "ready"] = Field(
        description="none: searched exactly until the index is built; ready: HNSW."
    )
    m: int
    ef_construction: int


class ReembedRead(BaseModel):
    status: Literal["running", "failed"]
    model: str
    dimension: int
    done: int
    total: int
    error: str | None
    started_at: datetime | None


class LineageEntry(BaseModel):
    model: str
    dimension: int
    since: datetime
    seconds: float | None = Field(None, description="How long re-embedding into it took.")


class CollectionRead(BaseModel):
    id: uuid.UUID
    owner_id: uuid.UUID
    name: str
    description: str | None
    model: str
    dimension: int
    metric: Metric
    document_count: int | None = Field(None, description="Given by GET /v1/collections/{id}.")
    index: IndexRead
    reembedding: ReembedRead | None = Field(
        description="A model change in progress (or failed); null when there is none."
    )
    lineage: list[LineageEntry]
    created_at: datetime
    updated_at: datetime


class DocumentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: DocumentId | None = None
    text: Annotated[CleanText, StringConstraints(min_length=1, max_length=MAX_TEXT)] | None = None
    vector: VectorIn | None = None
    metadata: Metadata = Field(default_factory=dict)

    @model_validator(mode="after")
    def _text_or_vector(self) -> DocumentIn:
        if (self.text is None) == (self.vector is None):
            raise ValueError("give exactly one of text and vector")
        return self


class UpsertRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"documents": [
            {"id": "a", "text": "The cat sat on the mat.", "metadata": {"lang": "en"}},
            {"text": "Le chat est assis."},
        ]}]},
    )  # fmt: skip

    documents: Annotated[list[DocumentIn], Field(min_length=1, max_length=MAX_DOCUMENTS)]


class DocumentStatus(BaseModel):
    id: str
    status: Literal["created", "updated", "unchanged"]


class UpsertResult(BaseModel):
    documents: list[DocumentStatus]
    embedded: int = Field(description="Texts sent to the model (unchanged ones are not).")


class DocumentRead(BaseModel):
    id: str
    text: str | None
    metadata: dict[str, Any]
    updated_at: datetime
    vector: list[float] | None = None


class QueryRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"text": "a cat", "top_k": 3,
                                         "filter": {"lang": "en"}}]},
    )  # fmt: skip

    text: Annotated[CleanText, StringConstraints(min_length=1, max_length=MAX_TEXT)] | None = None
    vector: VectorIn | None = None
    top_k: Annotated[int, Field(ge=1, le=100)] = 10
    filter: Any = Field(None, description="Mongo-style metadata filter; see the README.")
    include_vectors: bool = False
    ef_search: Annotated[int, Field(ge=1, le=1000)] | None = Field(
        None, description="HNSW candidate list size: higher is slower and more exact."
    )

    @model_validator(mode="after")
    def _text_or_vector(self) -> QueryRequest:
        if (self.text is None) == (self.vector is None):
            raise ValueError("give exactly one of text and vector")
        return self


class Match(BaseModel):
    id: str
    score: float = Field(
        description="Higher is more similar. cosine: 1 - cosine distance; inner_product: the "
        "inner product; l2: minus the Euclidean distance."
    )
    text: str | None
    metadata: dict[str, Any]
    vector: list[float] | None = None
