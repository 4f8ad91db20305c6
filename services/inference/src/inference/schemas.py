"""Request and response bodies of the inference API (OpenAI-compatible where it applies)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, StringConstraints, model_validator

Provider = Literal["openai", "huggingface", "azure", "anthropic"]
# An Azure OpenAI API version, as Azure names them: 2024-10-21, 2024-12-01-preview.
ApiVersion = Annotated[
    str, StringConstraints(pattern=r"^\d{4}-\d{2}-\d{2}(-preview)?$", max_length=32)
]
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
    api_version: ApiVersion | None = Field(
        default=None,
        description="Azure OpenAI only, and required there: the api-version its calls name.",
    )
    shared: bool = False

    @model_validator(mode="after")
    def _azure_needs_its_endpoint(self) -> CredentialCreate:
        azure = self.provider == "azure"
        missing = [
            need
            for need, value in (
                ("base_url (the resource endpoint, https://<resource>.openai.azure.com)",
                 self.base_url),
                ("api_version (e.g. 2024-10-21)", self.api_version),
            )
            if value is None
        ]  # fmt: skip
        if azure and missing:
            raise ValueError(f"An azure credential needs {' and '.join(missing)}.")
        if not azure and self.api_version is not None:
            raise ValueError("api_version is for azure credentials only.")
        return self


class CredentialRead(BaseModel):
    id: uuid.UUID
    provider: str
    name: str
    base_url: str | None
    api_version: str | None
    shared: bool
    key_hint: str = Field(description="The last four characters of the key.")
    created_at: datetime


class AliasTarget(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: Annotated[
        str,
        StringConstraints(
            pattern=r"^(openai|huggingface|azure|anthropic|local)/.+$", max_length=300
        ),
    ]
    credential_id: uuid.UUID | None = None
    # Its share of the calls under the `weighted` strategy (1 when not given).
    weight: Annotated[int, Field(ge=1, le=1000)] | None = None


Strategy = Literal["ordered", "weighted"]


class AliasCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    alias: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,199}$")]
    targets: Annotated[list[AliasTarget], Field(min_length=1, max_length=10)]
    # Shared (providers:manage_shared; shared credentials only), or your own (your own or
    # shared credentials; only you see and call it, and it wins over a shared one's name).
    shared: bool = False
    # `ordered`: the first target, the next on failure; `weighted`: calls split by the
    # targets' weights, the others tried in turn on failure.
    strategy: Strategy = "ordered"


class AliasRead(BaseModel):
    alias: str
    targets: list[AliasTarget]
    shared: bool
    strategy: Strategy
    created_at: datetime


class Model(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Model]
