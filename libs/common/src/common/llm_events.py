"""The record of one LLM call: the contract between inference, which writes one per
provider call (and per answer replayed from its response cache), and telemetry, which
stores it. Both import it from here.

Wire format: a JSON object with the fields of `LlmCallEvent`, typed as written there
(`id` and `user_id` UUID text, `occurred_at` unix seconds, `cost_usd` and `saved_usd` exact
decimals as text or null, `cache` "exact", "semantic" or null, `trace_id` 32 and `span_id`
16 lowercase hex digits; `cached_prompt_tokens` and `reasoning_tokens`, parts of
`prompt_tokens` and `completion_tokens`, integers or null when the provider does not report
them). It travels
- on the Redis stream `STREAM`, one entry per call with one field, `event`, the object as
  compact JSON (so types survive the trip; `LlmCallEvent.to_fields`);
- in `POST /v1/events` (telemetry), as `{"events": [object, ...]}`, from callers that
  report their own calls; there `occurred_at` may also be ISO 8601 with its offset.

One record, two views, tested against each other in libs/common/tests/test_llm_events.py:
- `LlmCallEvent`, the record as written: a frozen dataclass of wire types, so that making
  one on inference's hot path is one plain object and writing it one `json.dumps`.
- `CallEvent` (and `CallTrace`), the record as read: pydantic models that validate an
  event from its JSON bytes (in Rust) into the types telemetry stores (UUID, aware
  datetime, Decimal), with the bounds of its columns. Unknown fields are ignored, and
  fields added later have defaults, so events of an older or newer producer still read.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import MISSING, dataclass, fields
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

STREAM = "telemetry:llm-calls"


@dataclass(frozen=True)
class LlmCallEvent:
    id: str  # UUID, the idempotency key
    occurred_at: float  # unix seconds, when the call started
    user_id: str | None
    api_key_id: str | None
    provider: str
    model: str  # provider/model that answered (or was tried last)
    alias: str | None  # what the caller asked for, when it was an alias
    status: str  # "ok" or an error kind
    error_type: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    usage_estimated: bool
    cost_usd: str | None  # exact decimal; None when the model has no price
    latency_ms: float
    ttft_ms: float | None
    stream: bool
    attempts: int  # provider calls made; 0 for a response-cache hit
    fallback: bool
    operation: str  # "chat" or "embeddings"
    trace_id: str | None
    # The span a trace viewer opens for this call (inference's server span: every attempt,
    # retry and fallback is below it) and whether its trace was sampled, so that telemetry
    # can link its own spans to it. Events written before these existed lack them.
    span_id: str | None = None  # 16 hex digits
    trace_sampled: bool = False
    # The team of the API key the call was made with (UUID text); events written before
    # teams existed lack it.
    team_id: str | None = None
    # Parts of the tokens above, as the provider reports them (None: not reported, or an
    # event written before these existed): the prompt tokens served from the provider's
    # prompt cache (billed at the cached input price), and the completion tokens spent on
    # reasoning.
    cached_prompt_tokens: int | None = None  # of prompt_tokens
    reasoning_tokens: int | None = None  # of completion_tokens
    # A response-cache hit: the answer was replayed ("exact" or "semantic"), no provider was
    # called, and its own cost_usd is "0.000000000"; `saved_usd` (exact decimal) is what the
    # provider would have charged for it. None: not a hit, or an event written before these.
    cache: str | None = None
    saved_usd: str | None = None

    def to_fields(self) -> dict[str, str]:
        """Redis stream fields: one JSON document, so types survive the trip. Its fields
        are wire types already: read one level deep (asdict would copy each recursively,
        half of this method's time)."""
        return {"event": json.dumps(
            {name: getattr(self, name) for name in _NAMES}, separators=(",", ":")
        )}  # fmt: skip

    @classmethod
    def from_fields(cls, raw: dict[Any, Any]) -> LlmCallEvent:
        """The event as written, unvalidated (telemetry reads with `CallEvent`). Raises
        ValueError/KeyError/TypeError on anything malformed. A field with a default may be
        absent (an event from an older producer)."""
        value = raw.get(b"event", raw.get("event"))
        if not isinstance(value, str | bytes):
            raise ValueError("no event field")
        data = json.loads(value)
        if not isinstance(data, dict):
            raise ValueError("the event is not an object")
        required = {f.name for f in fields(cls) if f.default is MISSING}
        if not required <= data.keys():
            raise ValueError(f"missing fields: {sorted(required - set(data))}")
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


_NAMES = tuple(f.name for f in fields(LlmCallEvent))
INT32 = 2**31 - 1
# Text columns refuse NUL; every string also has its column's length.
_NO_NUL = r"^[^\x00]*$"


def _text(max_length: int) -> object:
    return StringConstraints(min_length=1, max_length=max_length, pattern=_NO_NUL)


Tokens = Annotated[int, Field(ge=0, le=INT32)]
Millis = Annotated[float, Field(ge=0, le=1e12, allow_inf_nan=False)]
TraceId = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")]
Usd = Annotated[Decimal, Field(ge=0, max_digits=18, decimal_places=9)]


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
    cost_usd: Usd | None = None
    latency_ms: Millis
    ttft_ms: Millis | None = None
    stream: bool = False
    attempts: Annotated[int, Field(ge=0, le=1000)] = Field(
        1, description="Provider attempts (retries and fallbacks included); 0: a cache hit."
    )
    fallback: bool = False
    operation: Annotated[str, _text(32)] = "chat"
    trace_id: TraceId | None = None
    team_id: uuid.UUID | None = None
    cached_prompt_tokens: Tokens | None = Field(
        None, description="Of prompt_tokens: those served from the provider's prompt cache."
    )
    reasoning_tokens: Tokens | None = Field(
        None, description="Of completion_tokens: those spent on reasoning."
    )
    cache: Literal["exact", "semantic"] | None = Field(
        None, description="The answer was replayed from the response cache (cost 0)."
    )
    saved_usd: Usd | None = Field(
        None, description="A cache hit: what the provider would have charged for the answer."
    )


class CallTrace(BaseModel):
    """Where a call is in its trace: the trace fields of common.llm_events.LlmCallEvent.
    Read by the stream consumer only when it records spans, and never stored; events from
    before `span_id` and `trace_sampled` existed have neither."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    trace_id: TraceId | None = None
    span_id: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{16}$")] | None = None
    trace_sampled: bool = False
