"""The record of one LLM call, as inference appends it to a Redis stream and telemetry
reads it: the contract between the two services (field names and types)."""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, fields
from typing import Any

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
    attempts: int
    fallback: bool
    operation: str  # "chat" or "embeddings"
    trace_id: str | None
    # The span a trace viewer opens for this call (inference's server span: every attempt,
    # retry and fallback is below it) and whether its trace was sampled, so that telemetry
    # can link its own spans to it. Events written before these existed lack them.
    span_id: str | None = None  # 16 hex digits
    trace_sampled: bool = False

    def to_fields(self) -> dict[str, str]:
        """Redis stream fields: one JSON document, so types survive the trip."""
        return {"event": json.dumps(asdict(self), separators=(",", ":"))}

    @classmethod
    def from_fields(cls, raw: dict[Any, Any]) -> LlmCallEvent:
        """Raises ValueError/KeyError/TypeError on anything malformed. A field with a default
        may be absent (an event from an older producer)."""
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
