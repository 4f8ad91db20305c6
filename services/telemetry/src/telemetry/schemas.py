"""Call events as telemetry accepts them, and the bodies of the query API."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

INT32 = 2**31 - 1
# Text columns refuse NUL; every string also has its column's length.
_NO_NUL = r"^[^\x00]*$"


def _text(max_length: int) -> object:
    return StringConstraints(min_length=1, max_length=max_length, pattern=_NO_NUL)


Tokens = Annotated[int, Field(ge=0, le=INT32)]
Millis = Annotated[float, Field(ge=0, le=1e12, allow_inf_nan=False)]
GroupBy = Literal["model", "provider", "user", "day"]
TraceId = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")]


class CallEvent(BaseModel):
    """One LLM call (common.llm_events.LlmCallEvent, checked field by field): what inference
    appends to the stream and what `POST /v1/events` takes. `occurred_at` is unix seconds
    or an ISO 8601 time with its offset; `cost_usd` an exact decimal (a string, best)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: uuid.UUID
    occurred_at: AwareDatetime
    user_id: uuid.UUID | None = None
    api_key_id: Annotated[str, _text(64)] | None = None
    provider: Annotated[str, _text(32)]
    model: Annotated[str, _text(300)]
    alias: Annotated[str, _text(200)] | None = None
    status: Annotated[str, _text(32)] = Field(description='"ok", or the kind of error')
    error_type: Annotated[str, _text(100)] | None = None
    prompt_tokens: Tokens | None = None
    completion_tokens: Tokens | None = None
    usage_estimated: bool = False
    cost_usd: Annotated[Decimal, Field(ge=0, max_digits=18, decimal_places=9)] | None = None
    latency_ms: Millis
    ttft_ms: Millis | None = None
    stream: bool = False
    attempts: Annotated[int, Field(ge=1, le=1000)] = 1
    fallback: bool = False
    operation: Annotated[str, _text(32)] = "chat"
    trace_id: TraceId | None = None


class CallTrace(BaseModel):
    """Where a call is in its trace: the trace fields of common.llm_events.LlmCallEvent.
    Read by the stream consumer only when it records spans, and never stored; events from
    before `span_id` and `trace_sampled` existed have neither."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    trace_id: TraceId | None = None
    span_id: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{16}$")] | None = None
    trace_sampled: bool = False


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
