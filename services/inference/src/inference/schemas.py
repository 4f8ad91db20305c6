"""Request and response bodies of the inference API (OpenAI-compatible where it applies)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, StringConstraints

Provider = Literal["openai", "huggingface", "anthropic"]
# The most dimensions an embedding may be asked for (pgvector's own limit is 16,000).
MAX_DIMENSIONS = 16_000
ModelName = Annotated[str, StringConstraints(min_length=1, max_length=300)]


class EmbeddingsRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: ModelName
    input: (
        str
        | Annotated[
            list[Annotated[str, StringConstraints(min_length=1)]],
            Field(min_length=1, max_length=2048),
        ]
    )
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[int, Field(ge=1, le=MAX_DIMENSIONS)] | None = None


class CredentialCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    provider: Provider
    name: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
    api_key: Annotated[str, StringConstraints(min_length=1, max_length=4096)]
    base_url: AnyHttpUrl | None = None
    shared: bool = False


class CredentialRead(BaseModel):
    id: uuid.UUID
    provider: str
    name: str
    base_url: str | None
    shared: bool
    key_hint: str = Field(description="The last four characters of the key.")
    created_at: datetime


class AliasTarget(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: Annotated[
        str, StringConstraints(pattern=r"^(openai|huggingface|anthropic|local)/.+$", max_length=300)
    ]
    credential_id: uuid.UUID | None = None


class AliasCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    alias: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,199}$")]
    targets: Annotated[list[AliasTarget], Field(min_length=1, max_length=10)]


class AliasRead(BaseModel):
    alias: str
    targets: list[AliasTarget]
    created_at: datetime


class Model(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Model]
