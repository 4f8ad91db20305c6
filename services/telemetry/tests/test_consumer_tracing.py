"""The consumer's spans: one per batch, linked to the calls' spans in their own traces, and
in each sampled call's trace a span of telemetry's under inference's (issue 7: a chat trace
shows telemetry storing the call)."""

from __future__ import annotations

import json
import secrets
import uuid
from collections.abc import Sequence

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from common.llm_events import STREAM, LlmCallEvent
from telemetry.consumer import BATCH_SPAN, INGEST_SPAN

from .conftest import (
    MakeConsumer,
    append,
    as_json,
    call,
    eventually,
    refusing,
    stored,
    wait_stored,
)


def traced(user: uuid.UUID, *, sampled: bool = True, **overrides: object) -> LlmCallEvent:
    """A call event as inference now writes it: with its server span and sampled flag."""
    return call(user, span_id=secrets.token_hex(8), trace_sampled=sampled, **overrides)


def _context(event: LlmCallEvent) -> tuple[int, int]:
    assert event.trace_id is not None
    assert event.span_id is not None
    return int(event.trace_id, 16), int(event.span_id, 16)


async def _batch_linking(spans: InMemorySpanExporter, event: LlmCallEvent) -> ReadableSpan:
    """The batch span linked to the event's span, once it has ended."""
    found: list[ReadableSpan] = []

    async def ended() -> bool:
        found[:] = [
            s for s in spans.get_finished_spans()
            if s.name == BATCH_SPAN
            and any((li.context.trace_id, li.context.span_id) == _context(event) for li in s.links)
        ]  # fmt: skip
        return bool(found)

    await eventually(ended)
    (batch,) = found
    return batch


def _ingest_spans(
    spans: InMemorySpanExporter, events: Sequence[LlmCallEvent]
) -> list[ReadableSpan]:
    ids = {e.id for e in events}
    return [
        s for s in spans.get_finished_spans()
        if s.name == INGEST_SPAN and s.attributes and s.attributes["telemetry.call.id"] in ids
    ]  # fmt: skip


async def test_a_sampled_call_gets_a_span_in_its_trace_and_the_batch_links_every_call(
    redis: Redis, engine: AsyncEngine, consumers: MakeConsumer, spans: InMemorySpanExporter
) -> None:
    user = uuid.uuid4()
    sampled, unsampled = traced(user), traced(user, sampled=False)
    # From an inference that predates the span fields, and a malformed span id: stored,
    # linked to nothing.
    old = as_json(call(user))
    del old["span_id"], old["trace_sampled"]
    malformed = call(user, span_id="not-a-span-id", trace_sampled=True)
    await append(redis, [sampled, unsampled])
    await redis.xadd(STREAM, {"event": json.dumps(old)})
    await append(redis, [malformed])
    async with consumers():
        await wait_stored(engine, user, 4)
        batch = await _batch_linking(spans, sampled)
    assert await stored(engine, user) == {"rows": 4, "ids": 4}

    assert batch.kind == SpanKind.CONSUMER
    links = [(li.context.trace_id, li.context.span_id, li.context.trace_flags.sampled,
              li.context.is_remote) for li in batch.links]  # fmt: skip
    assert links == [(*_context(sampled), True, True), (*_context(unsampled), False, True)]
    assert batch.attributes is not None
    assert {k: v for k, v in batch.attributes.items() if k.startswith("telemetry.")} == {
        "telemetry.source": "stream",
        "telemetry.batch.inserted": 4,
        "telemetry.batch.duplicates": 0,
        "telemetry.batch.dead_letters": 0,
        "telemetry.batch.links_dropped": 0,
        "telemetry.batch.calls_untraced": 0,
    }
    assert batch.attributes["messaging.batch.message_count"] == 4

    # Only the sampled call's trace gets telemetry's span: under inference's span, linked
    # to the batch, within the batch's time.
    (ingest,) = _ingest_spans(spans, [sampled, unsampled, malformed, call(user, id=old["id"])])
    assert ingest.kind == SpanKind.CONSUMER
    assert ingest.attributes is not None
    assert ingest.attributes["telemetry.call.id"] == sampled.id
    assert ingest.parent is not None
    assert ingest.parent.is_remote
    assert (ingest.context.trace_id, ingest.parent.span_id) == _context(sampled)
    assert [li.context for li in ingest.links] == [batch.context]
    times = (batch.start_time, ingest.start_time, ingest.end_time, batch.end_time)
    assert list(times) == sorted(t or 0 for t in times)
    assert ingest.status.status_code == StatusCode.UNSET


async def test_a_large_batch_links_and_traces_only_its_first_calls_and_counts_the_rest(
    redis: Redis,
    engine: AsyncEngine,
    consumers: MakeConsumer,
    spans: InMemorySpanExporter,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_SPAN_LINK_COUNT_LIMIT", "2")
    user = uuid.uuid4()
    events = [traced(user) for _ in range(5)]
    await append(redis, [*events, events[0]])  # the first one again: a duplicate
    async with consumers(traced_calls_per_batch=3):
        await wait_stored(engine, user, 5)
        batch = await _batch_linking(spans, events[0])
    assert [(li.context.trace_id, li.context.span_id) for li in batch.links] == [
        _context(events[0]),
        _context(events[1]),
    ]
    assert batch.attributes is not None
    assert batch.attributes["messaging.batch.message_count"] == 6
    assert batch.attributes["telemetry.batch.links_dropped"] == 4
    assert batch.attributes["telemetry.batch.inserted"] == 5
    assert batch.attributes["telemetry.batch.duplicates"] == 1
    # The first three sampled calls have their span; the other three are counted.
    ingested = [s.attributes for s in _ingest_spans(spans, events) if s.attributes]
    assert sorted(a["telemetry.call.id"] for a in ingested) == sorted(e.id for e in events[:3])
    assert batch.attributes["telemetry.batch.calls_untraced"] == 3


async def test_a_call_postgres_refuses_shows_as_failed_in_its_trace(
    redis: Redis, engine: AsyncEngine, consumers: MakeConsumer, spans: InMemorySpanExporter
) -> None:
    user = uuid.uuid4()
    good, poison = traced(user), traced(user, model="openai/poison")
    async with refusing(engine, "openai/poison"):
        await append(redis, [good, poison])
        async with consumers():
            await wait_stored(engine, user, 1)
            batch = await _batch_linking(spans, good)
    assert batch.attributes is not None
    assert batch.attributes["telemetry.batch.inserted"] == 1
    assert batch.attributes["telemetry.batch.dead_letters"] == 1
    assert batch.attributes["telemetry.batch.duplicates"] == 0
    status = {
        s.attributes["telemetry.call.id"]: s.status.status_code
        for s in _ingest_spans(spans, [good, poison])
        if s.attributes
    }
    assert status == {good.id: StatusCode.UNSET, poison.id: StatusCode.ERROR}
