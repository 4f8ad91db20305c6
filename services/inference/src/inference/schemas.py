"""Request and response bodies of the inference API (OpenAI-compatible where it applies)."""

from __future__ import annotations

import re
import uuid
from datetime import date, datetime
from typing import Annotated, Literal

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, StringConstraints, model_validator

from inference.pricing import Price, Source

# What a provider key may hold: it is sent in an HTTP header, so visible ASCII only.
SENDABLE_KEY = re.compile(r"^[\x21-\x7e]+$")

Provider = Literal["openai", "huggingface", "azure", "anthropic"]
# An Azure OpenAI API version, as Azure names them: 2024-10-21, 2024-12-01-preview.
ApiVersion = Annotated[
    str, StringConstraints(pattern=r"^\d{4}-\d{2}-\d{2}(-preview)?$", max_length=32)
]
# The most dimensions an embedding may be asked for (pgvector's own limit is 16,000).
MAX_DIMENSIONS = 16_000
ModelName = Annotated[str, StringConstraints(min_length=1, max_length=300)]


class EmbeddingsRequest(BaseModel):
    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={"examples": [
            {"model": "local/all-MiniLM-L6-v2", "input": "The cat sat."},
            {"model": "local/all-MiniLM-L6-v2", "input": ["one", "two"],
             "encoding_format": "base64"},
        ]},
    )  # fmt: skip

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
    # Sent in an HTTP header: visible ASCII only (a key with another character could be
    # stored, then failed every call that sent it with a 500, GET /v1/models included).
    api_key: Annotated[
        str, StringConstraints(min_length=1, max_length=4096, pattern=SENDABLE_KEY.pattern)
    ] = Field(description="The provider's key: visible ASCII characters.")
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


# A provider's model, `provider/model` (no control characters: Postgres refuses NUL).
MODEL_NAME = r"^(openai|huggingface|azure|anthropic|local)/[^\x00-\x1f\x7f]+$"
ProviderModel = Annotated[str, StringConstraints(pattern=MODEL_NAME, max_length=300)]


class AliasTarget(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: ProviderModel
    credential_id: uuid.UUID | None = None
    # Its share of the calls under the `weighted` strategy (1 when not given).
    weight: Annotated[int, Field(ge=1, le=1000)] | None = None


Strategy = Literal["ordered", "weighted", "least-latency"]


class CacheDefault(BaseModel):
    """An alias's response-cache default (inference/cache.py); a key's or team's policy and
    the request's own `cache` field win over it."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["exact", "semantic", "off"]
    ttl_seconds: Annotated[int, Field(ge=1, le=30 * 86_400)] | None = None
    temperature: bool | None = Field(
        None, description="Also cache requests with temperature > 0 (sampled answers)."
    )
    tools: bool | None = Field(None, description="Semantic cache also for requests with tools.")
    multi_turn: bool | None = Field(
        None, description="Semantic cache also for requests with earlier assistant turns."
    )
    threshold: Annotated[float, Field(ge=0.5, le=1.0)] | None = None


class AliasCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    alias: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,199}$")]
    targets: Annotated[list[AliasTarget], Field(min_length=1, max_length=10)]
    # Shared (providers:manage_shared; shared credentials only), or your own (your own or
    # shared credentials; only you see and call it, and it wins over a shared one's name).
    shared: bool = False
    # `ordered`: the first target, the next on failure; `weighted`: calls split by the
    # targets' weights, the others tried in turn on failure; `least-latency`: the target
    # with the lowest recent latency (every replica's), then the others by latency.
    strategy: Strategy = "ordered"
    # The response cache's default for calls to this alias (off when not set).
    cache: CacheDefault | None = None


class AliasRead(BaseModel):
    alias: str
    targets: list[AliasTarget]
    cache: CacheDefault | None = None
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


class PriceRead(Price):
    """A model's price, USD per 1M tokens, and where it comes from: an admin's (`admin`),
    the deployment's INFERENCE_PRICES (`settings`) or the catalog's (`catalog`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str
    source: Source
    updated_at: datetime | None = None
    updated_by: uuid.UUID | None = None


class PriceList(BaseModel):
    catalog_checked: date = Field(description="When the catalog's list prices were checked.")
    catalog_source: str
    data: list[PriceRead]


class PriceChangeRead(BaseModel):
    id: int
    occurred_at: datetime
    actor_id: uuid.UUID | None
    model: str
    action: Literal["set", "delete"]
    before: Price | None
    after: Price | None
    trace_id: str | None


class PriceChangeList(BaseModel):
    data: list[PriceChangeRead]
    next_before: int | None = Field(
        None, description="Pass as `before` for the next (older) page; null on the last."
    )


class CacheCleared(BaseModel):
    entries: int = Field(description="How many cached answers were forgotten.")


# The answers of the OpenAI-compatible and Hub routes: documentation only. Those routes
# build their answers themselves (a provider's body passed on, vectors dumped once); these
# models give them a schema in the OpenAPI document and are never used to validate one.
class _Answer(BaseModel):
    """An object of an answer: the fields we document, and whatever else it carries."""

    model_config = ConfigDict(extra="allow")


class CompletionUsage(_Answer):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionMessage(_Answer):
    role: str
    content: str | None = None
    refusal: str | None = None
    tool_calls: list[dict[str, object]] | None = None


class CompletionChoice(_Answer):
    index: int
    message: CompletionMessage
    finish_reason: str | None = None


class ChatCompletion(_Answer):
    """OpenAI's chat.completion, as the provider answered it: `model` is the one asked for
    (an alias stays the alias) and `usage` is always there (counted when the provider gave
    none). With `stream: true`, server-sent events of chat.completion.chunk objects."""

    id: str | None = None
    object: str = "chat.completion"
    created: int | None = None
    model: str
    choices: list[CompletionChoice]
    usage: CompletionUsage


class Embedding(_Answer):
    object: Literal["embedding"]
    index: int
    embedding: list[float] | str = Field(
        description="The vector; with `encoding_format: base64`, its little-endian float32s "
        "in base64."
    )


class EmbeddingUsage(_Answer):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(_Answer):
    """OpenAI's embeddings answer: one vector per input, in order."""

    object: Literal["list"]
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


class HubModel(BaseModel):
    """A model on the Hugging Face Hub: the fields the Hub gave of these."""

    id: str
    author: str | None = None
    pipeline_tag: str | None = None
    library_name: str | None = None
    downloads: int | None = None
    likes: int | None = None
    tags: list[str] | None = None
    gated: bool | str | None = None
    private: bool | None = None
    created_at: str | None = Field(None, description="ISO 8601.")
    last_modified: str | None = Field(None, description="ISO 8601.")
