"""The call-event contract between inference and telemetry: what one writes the other
reads, field by field; the wire format stays as it is; events from before a field existed
still read."""

from __future__ import annotations

import json
import uuid
from dataclasses import asdict, fields, replace
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from pydantic import ValidationError

from common.llm_events import CallEvent, CallTrace, LlmCallEvent

EVENT = LlmCallEvent(
    id="9b1deb4d-3b7d-4bad-9bdd-2b0d7b3dcb6d", occurred_at=1795776163.25,
    user_id="1b4e28ba-2fa1-41d2-883f-0016d3cca427", api_key_id="k1", provider="openai",
    model="openai/gpt-4o-mini", alias="fast", status="ok", error_type=None, prompt_tokens=12,
    completion_tokens=7, usage_estimated=False, cost_usd="0.000006000", latency_ms=120.5,
    ttft_ms=30.25, stream=True, attempts=2, fallback=True, operation="chat",
    trace_id="4bf92f3577b34da6a3ce929d0e0e4736", span_id="00f067aa0ba902b7", trace_sampled=True,
    team_id="5d3c1a2e-8f7b-4c6d-9e0f-112233445566", cached_prompt_tokens=8, reasoning_tokens=3,
    cache="semantic", saved_usd="0.000004500",
)  # fmt: skip
# The Redis stream entry inference writes for EVENT, byte for byte.
WIRE = (
    '{"id":"9b1deb4d-3b7d-4bad-9bdd-2b0d7b3dcb6d","occurred_at":1795776163.25,'
    '"user_id":"1b4e28ba-2fa1-41d2-883f-0016d3cca427","api_key_id":"k1","provider":"openai",'
    '"model":"openai/gpt-4o-mini","alias":"fast","status":"ok","error_type":null,'
    '"prompt_tokens":12,"completion_tokens":7,"usage_estimated":false,'
    '"cost_usd":"0.000006000","latency_ms":120.5,"ttft_ms":30.25,"stream":true,"attempts":2,'
    '"fallback":true,"operation":"chat","trace_id":"4bf92f3577b34da6a3ce929d0e0e4736",'
    '"span_id":"00f067aa0ba902b7","trace_sampled":true,'
    '"team_id":"5d3c1a2e-8f7b-4c6d-9e0f-112233445566","cached_prompt_tokens":8,'
    '"reasoning_tokens":3,"cache":"semantic","saved_usd":"0.000004500"}'
)


def test_the_stream_entry_is_one_compact_json_field() -> None:
    assert EVENT.to_fields() == {"event": WIRE}


def test_telemetry_reads_every_field_inference_writes() -> None:
    written = {f.name for f in fields(LlmCallEvent)}
    assert set(CallEvent.model_fields) | set(CallTrace.model_fields) == written

    read = CallEvent.model_validate_json(EVENT.to_fields()["event"])
    trace = CallTrace.model_validate_json(EVENT.to_fields()["event"])

    assert read.id == uuid.UUID(EVENT.id)
    assert read.occurred_at == datetime.fromtimestamp(EVENT.occurred_at, UTC)
    assert read.user_id == uuid.UUID(EVENT.user_id or "")
    assert read.cost_usd == Decimal(EVENT.cost_usd or "")
    as_written = asdict(EVENT)
    assert read.team_id == uuid.UUID(EVENT.team_id or "")
    assert read.saved_usd == Decimal(EVENT.saved_usd or "")
    converted = {"id", "occurred_at", "user_id", "cost_usd", "team_id", "saved_usd"}
    for name, value in read.model_dump(exclude=converted).items():
        assert value == as_written[name], name
    for name, value in trace.model_dump().items():
        assert value == as_written[name], name


def test_a_reported_event_may_give_its_time_in_iso_8601() -> None:
    iso = json.loads(WIRE) | {"occurred_at": "2026-11-27T10:02:43.25+02:00"}
    read = CallEvent.model_validate(iso)
    assert read.occurred_at == datetime(2026, 11, 27, 8, 2, 43, 250000, tzinfo=UTC)
    with pytest.raises(ValidationError, match="timezone"):
        CallEvent.model_validate(iso | {"occurred_at": "2026-11-27T10:02:43"})


def test_an_event_reads_back_as_written() -> None:
    fields = EVENT.to_fields()
    assert LlmCallEvent.from_fields({k.encode(): v.encode() for k, v in fields.items()}) == EVENT


def test_an_event_from_before_the_span_fields_still_reads() -> None:
    old = {k: v for k, v in asdict(EVENT).items() if k not in ("span_id", "trace_sampled")}
    event = LlmCallEvent.from_fields({b"event": json.dumps(old).encode()})
    assert (event.trace_id, event.span_id, event.trace_sampled) == (EVENT.trace_id, None, False)
    trace = CallTrace.model_validate(old)
    assert (trace.trace_id, trace.span_id, trace.trace_sampled) == (EVENT.trace_id, None, False)


def test_an_event_from_before_the_token_details_still_reads() -> None:
    new = ("team_id", "cached_prompt_tokens", "reasoning_tokens")
    old = {k: v for k, v in asdict(EVENT).items() if k not in new}
    event = LlmCallEvent.from_fields({b"event": json.dumps(old).encode()})
    assert (event.prompt_tokens, event.cached_prompt_tokens, event.reasoning_tokens) == (
        12,
        None,
        None,
    )
    read = CallEvent.model_validate(old)
    assert (read.team_id, read.cached_prompt_tokens, read.reasoning_tokens) == (None, None, None)


def test_an_event_from_before_the_response_cache_still_reads() -> None:
    old = {k: v for k, v in asdict(EVENT).items() if k not in ("cache", "saved_usd")}
    event = LlmCallEvent.from_fields({b"event": json.dumps(old).encode()})
    assert (event.cache, event.saved_usd) == (None, None)
    read = CallEvent.model_validate(old)
    assert (read.cache, read.saved_usd) == (None, None)


def test_a_cache_hit_as_inference_writes_it_reads() -> None:
    """No provider was called: no attempt, no tokens, cost 0, and what it saved."""
    hit = replace(
        EVENT, attempts=0, fallback=False, prompt_tokens=0, completion_tokens=0,
        cached_prompt_tokens=None, reasoning_tokens=None, cost_usd="0.000000000",
        cache="exact", saved_usd="0.000006000",
    )  # fmt: skip
    read = CallEvent.model_validate_json(hit.to_fields()["event"])
    assert (read.attempts, read.cost_usd, read.cache, read.saved_usd) == (
        0, Decimal(0), "exact", Decimal("0.000006")
    )  # fmt: skip
    with pytest.raises(ValidationError, match="attempts"):
        CallEvent.model_validate(asdict(hit) | {"attempts": -1})


def test_a_cache_hit_names_its_cache_and_an_exact_saving() -> None:
    for wrong in ("fuzzy", "", 1):
        with pytest.raises(ValidationError, match="cache"):
            CallEvent.model_validate(asdict(EVENT) | {"cache": wrong})
    for wrong in ("-0.000000001", "0.0000000001", "1e30", "NaN", "lots"):
        with pytest.raises(ValidationError, match="saved_usd"):
            CallEvent.model_validate(asdict(EVENT) | {"saved_usd": wrong})
    read = CallEvent.model_validate(asdict(EVENT) | {"cache": "exact", "saved_usd": "12.5"})
    assert (read.cache, read.saved_usd) == ("exact", Decimal("12.5"))


def test_token_details_have_the_bounds_of_their_columns() -> None:
    for name in ("cached_prompt_tokens", "reasoning_tokens"):
        for wrong in (-1, 2**31, "many"):
            with pytest.raises(ValidationError, match=name):
                CallEvent.model_validate(asdict(EVENT) | {name: wrong})


def test_an_event_without_a_required_field_is_refused() -> None:
    broken = asdict(EVENT)
    del broken["model"]
    with pytest.raises(ValueError, match="model"):
        LlmCallEvent.from_fields({"event": json.dumps(broken)})
    with pytest.raises(ValidationError, match="model"):
        CallEvent.model_validate(broken)
