"""The bodies of the ingestion and query API (a call event: common.llm_events.CallEvent)."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from common.llm_events import CallEvent

GroupBy = Literal["model", "provider", "user", "day"]


class EventBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    events: Annotated[list[CallEvent], Field(min_length=1, max_length=1000)]


class IngestResult(BaseModel):
    received: int
    inserted: int = Field(description="New calls stored.")
    duplicates: int = Field(description="Calls already stored (same id and time): skipped.")


class UsageGroup(BaseModel):
    key: str | date | None = Field(
        description="The model, provider, user id or UTC day; null for calls without a user."
    )
    requests: int
    errors: int
    error_rate: float
    prompt_tokens: int
    completion_tokens: int
    cost_usd: Decimal = Field(description="Exact sum of the calls' costs, as a decimal string.")
    latency_ms_p50: float | None
    latency_ms_p95: float | None
    ttft_ms_p50: float | None = Field(description="Time to first token: streamed calls only.")


class Usage(BaseModel):
    group_by: GroupBy
    from_: datetime = Field(serialization_alias="from")
    to: datetime
    groups: list[UsageGroup]


class CallRead(BaseModel):
    id: uuid.UUID
    occurred_at: datetime
    received_at: datetime
    source: str
    user_id: uuid.UUID | None
    api_key_id: str | None
    operation: str
    provider: str
    model: str
    alias: str | None
    status: str
    error_type: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    usage_estimated: bool
    cost_usd: Decimal | None
    latency_ms: float
    ttft_ms: float | None
    stream: bool
    attempts: int
    fallback: bool
    trace_id: str | None = Field(description="Open it in Jaeger to see the call's trace.")


class CallPage(BaseModel):
    data: list[CallRead]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next (older) page.")
