"""The stream contract between inference and telemetry: what one writes the other reads,
and events from before a field existed still read."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest

from common.llm_events import LlmCallEvent

EVENT = LlmCallEvent(
    id="9b1deb4d-3b7d-4bad-9bdd-2b0d7b3dcb6d", occurred_at=1795776163.25, user_id=None,
    api_key_id="k1", provider="openai", model="openai/gpt-4o-mini", alias=None, status="ok",
    error_type=None, prompt_tokens=12, completion_tokens=7, usage_estimated=False,
    cost_usd="0.000006000", latency_ms=120.5, ttft_ms=None, stream=False, attempts=1,
    fallback=False, operation="chat", trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
    span_id="00f067aa0ba902b7", trace_sampled=True,
)  # fmt: skip


def test_an_event_reads_back_as_written() -> None:
    fields = EVENT.to_fields()
    assert json.loads(fields["event"])["span_id"] == "00f067aa0ba902b7"
    assert LlmCallEvent.from_fields({k.encode(): v.encode() for k, v in fields.items()}) == EVENT


def test_an_event_from_before_the_span_fields_still_reads() -> None:
    old = {k: v for k, v in asdict(EVENT).items() if k not in ("span_id", "trace_sampled")}
    event = LlmCallEvent.from_fields({b"event": json.dumps(old).encode()})
    assert (event.trace_id, event.span_id, event.trace_sampled) == (EVENT.trace_id, None, False)


def test_an_event_without_a_required_field_is_refused() -> None:
    broken = asdict(EVENT)
    del broken["model"]
    with pytest.raises(ValueError, match="model"):
        LlmCallEvent.from_fields({"event": json.dumps(broken)})
