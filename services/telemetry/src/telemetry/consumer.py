"""The stream consumer: reads the call events inference appends to a Redis stream, with a
consumer group shared by every replica, and stores them in batches.

An entry is acknowledged only after the transaction that stored it (or dead-lettered it)
committed; a replica that dies leaves its entries pending, and another takes them over
once they have been idle `claim_idle_seconds` (XAUTOCLAIM). Storing is idempotent, so an
entry delivered twice is stored once. The stream is trimmed only below the oldest entry
that some group has not acknowledged yet.

Each batch is one span ("telemetry store llm_call") linked to the calls' spans in their
own traces, and each call whose trace is sampled gets a short span in that trace
("telemetry ingest llm_call", a child of inference's span): the call's trace shows it
stored. None of it is made when this process records no spans.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog
from opentelemetry import trace
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, TraceFlags
from pydantic import ValidationError
from sqlalchemy.exc import DBAPIError

from common.db import transaction
from common.llm_events import STREAM, CallEvent, CallTrace
from common.tracing import recording_spans, span_link_limit
from telemetry import repository, service
from telemetry.metrics import DEAD_LETTERS, STREAM_LAG
from telemetry.runtime import Runtime
from telemetry.service import utcnow
from telemetry.stream_repository import CallStream, Entry

log = structlog.get_logger(__name__)
tracer = trace.get_tracer(__name__)
BATCH_SPAN = "telemetry store llm_call"
INGEST_SPAN = "telemetry ingest llm_call"
PAYLOAD_LIMIT = 65_536  # characters of a dead letter's payload kept
# Batches up to this size are parsed on the event loop (about 20 µs an event: well under a
# millisecond); larger ones in a worker thread. At low rates most batches hold one or two
# events, and the hop to a thread and back cost more CPU than parsing them.
INLINE_PARSE = 32


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs 3x, per event
class Parsed:
    entry_id: str
    fields: dict[bytes, bytes]
    event: CallEvent
    context: SpanContext | None = None  # the call's span (inference's), when spans are recorded

    @property
    def payload(self) -> str:
        """What a dead letter keeps (made only if Postgres refuses the event)."""
        return _payload(self.fields)


DeadLetter = tuple[str, str, str]  # stream id, payload, reason


def _payload(fields: dict[bytes, bytes]) -> str:
    raw = fields.get(b"event")
    text = raw.decode("utf-8", "replace") if raw is not None else repr(fields)
    return text[:PAYLOAD_LIMIT].replace("\x00", "\\u0000")  # Postgres text refuses NUL


def parse(
    entries: Sequence[Entry], retention: timedelta, now: datetime, *, traced: bool = False
) -> tuple[list[Parsed], list[DeadLetter]]:
    """Valid events, and dead letters with their reason (CPU work: run off the loop); with
    `traced`, each event's span context too."""
    parsed: list[Parsed] = []
    dead: list[DeadLetter] = []
    refusal_of = service.refusals(retention, now)
    for raw_id, fields in entries:
        if fields is None:  # deleted from the stream while pending: nothing to store
            continue
        entry_id = raw_id.decode()
        raw = fields.get(b"event")
        if raw is None:
            dead.append((entry_id, _payload(fields), "the entry has no `event` field"))
            continue
        try:
            event = CallEvent.model_validate_json(raw)
        except ValidationError as exc:
            reason = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'event'}: {e['msg']}" for e in exc.errors()[:5]
            )
            dead.append((entry_id, _payload(fields), reason))
            continue
        refusal = refusal_of(event)
        if refusal:
            dead.append((entry_id, _payload(fields), refusal))
        else:
            parsed.append(Parsed(entry_id, fields, event, _call_context(raw) if traced else None))
    return parsed, dead


def _call_context(raw: bytes) -> SpanContext | None:
    """The span the event names (inference's server span for the call), if any. A malformed
    trace reference loses the link, never the call."""
    try:
        ref = CallTrace.model_validate_json(raw)
    except ValidationError:
        return None
    if ref.trace_id is None or ref.span_id is None:
        return None
    context = SpanContext(
        int(ref.trace_id, 16),
        int(ref.span_id, 16),
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED if ref.trace_sampled else TraceFlags.DEFAULT),
    )
    return context if context.is_valid else None


def _is_data_error(exc: DBAPIError) -> bool:
    """The rows are at fault (SQLSTATE classes 22, 23), not the connection or the server."""
    sqlstate = getattr(exc.orig, "sqlstate", None) or ""
    return not exc.connection_invalidated and sqlstate[:2] in ("22", "23")


class StreamConsumer:
    """One replica's consumer: a background task started and stopped with the app."""

    def __init__(self, runtime: Runtime, *, name: str | None = None) -> None:
        settings = runtime.settings
        self._runtime = runtime
        self.name = name or settings.consumer_name
        self._stream = CallStream(runtime.redis, group=settings.consumer_group, consumer=self.name)
        self._batch = settings.batch_size
        self._block_ms = settings.read_block_ms
        self._claim_idle_ms = int(settings.claim_idle_seconds * 1000)
        self._claim_every = settings.claim_idle_seconds / 2
        self._trim_every = settings.trim_interval_seconds
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._reading = False
        self._link_limit = span_link_limit()
        self._traced_calls = settings.traced_calls_per_batch

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"telemetry-consumer-{self.name}")

    async def stop(self, grace_seconds: float = 10.0) -> None:
        """Finish the batch in hand (up to `grace_seconds`), then stop; a blocking read is
        interrupted at once (what it would have read stays in the stream)."""
        self._stopping = True
        task = self._task
        if task is None or task.done():
            return
        if self._reading:
            task.cancel()
        await asyncio.wait({task}, timeout=grace_seconds)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _run(self) -> None:
        backoff = 0.2
        while not self._stopping:
            try:
                await self._stream.ensure_group()
                await self._consume()
            except Exception as exc:  # Redis or Postgres away, the stream deleted: retry
                log.warning("telemetry consumer failed; retrying", error=repr(exc),
                            retry_in=backoff)  # fmt: skip
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def _consume(self) -> None:
        await self._redeliver_own()
        loop = asyncio.get_running_loop()
        next_claim = next_trim = loop.time()
        while not self._stopping:
            if loop.time() >= next_claim:
                await self.reclaim()
                next_claim = loop.time() + self._claim_every
            if loop.time() >= next_trim:
                await self.trim()
                next_trim = loop.time() + self._trim_every
            self._reading = True
            try:
                entries = await self._stream.read_new(count=self._batch, block_ms=self._block_ms)
            finally:
                self._reading = False
            if entries:
                await self._handle(entries)

    async def _redeliver_own(self) -> None:
        """Entries this consumer (same name: restarted in place) was given and never acked."""
        after = "0"
        while not self._stopping:
            entries = await self._stream.read_own_pending(after=after, count=self._batch)
            if not entries:
                return
            await self._handle(entries)
            after = entries[-1][0].decode()

    async def reclaim(self) -> int:
        """Take over the entries other consumers left pending too long; returns how many."""
        start: bytes | str | None = "0-0"
        claimed_total = 0
        while start is not None and not self._stopping:
            start, claimed = await self._stream.claim_idle(
                idle_ms=self._claim_idle_ms, start=start, count=self._batch
            )
            if claimed:
                claimed_total += len(claimed)
                log.info("reclaimed pending entries", count=len(claimed))
                await self._handle(claimed)
        return claimed_total

    async def trim(self) -> None:
        """Trim the stream below what every group still needs; refresh the lag gauge."""
        lag = await self._stream.trim()
        if lag is not None:
            STREAM_LAG.set(lag)

    async def _handle(self, entries: Sequence[Entry]) -> None:
        """Store a batch (dead letters included), trace it, then acknowledge it."""
        traced = recording_spans()
        with tracer.start_as_current_span(BATCH_SPAN, kind=SpanKind.CONSUMER) as span:
            parsed, dead = await self._parse(entries, traced=traced)
            invalid = len(dead)
            started = time.time_ns()
            inserted = await self._store(parsed, dead)
            written = time.time_ns()
            if dead:
                DEAD_LETTERS.inc(len(dead))
                log.warning("dead-lettered stream entries", count=len(dead), first=dead[0][2])
            if traced:
                refused = {entry_id for entry_id, _, _ in dead[invalid:]}
                untraced = _trace_calls(
                    parsed, refused, span.get_span_context(), started, written,
                    limit=self._traced_calls,
                )  # fmt: skip
                self._trace_batch(
                    span, len(entries), parsed, refused, inserted, len(dead), untraced
                )
            ids = [entry_id for entry_id, fields in entries if entry_id is not None]
            if ids:
                await self._stream.ack(ids)  # only now: all is committed

    async def _parse(
        self, entries: Sequence[Entry], *, traced: bool
    ) -> tuple[list[Parsed], list[DeadLetter]]:
        retention = self._runtime.retention
        if len(entries) <= INLINE_PARSE:
            return parse(entries, retention, utcnow(), traced=traced)
        return await asyncio.to_thread(parse, entries, retention, utcnow(), traced=traced)

    async def _store(self, parsed: Sequence[Parsed], dead: list[DeadLetter]) -> int:
        """Store the batch and its dead letters; returns how many calls were new. Should
        Postgres refuse the batch for its data, event by event: the refused ones are added
        to `dead`."""
        try:
            return await self._write(parsed, dead)
        except DBAPIError as exc:
            if not _is_data_error(exc):
                raise
            # Something validation let through broke the batch: store event by event.
            log.warning("batch refused by Postgres; storing one by one", error=str(exc.orig))
            service.forget_partitions(self._runtime)
            return await self._write_one_by_one(parsed, dead)

    def _trace_batch(
        self,
        span: trace.Span,
        size: int,
        parsed: Sequence[Parsed],
        refused: set[str],
        inserted: int,
        dead: int,
        untraced: int,
    ) -> None:
        """The batch's attributes, and links to the first calls' spans (as many as a span
        keeps: the number left out is an attribute)."""
        if not span.is_recording():
            return
        contexts = [item.context for item in parsed if item.context is not None]
        linked = contexts if self._link_limit is None else contexts[: self._link_limit]
        for context in linked:
            span.add_link(context)
        span.set_attributes(
            {
                "messaging.destination.name": STREAM,
                "messaging.operation.type": "process",
                "messaging.batch.message_count": size,
                "telemetry.source": "stream",
                "telemetry.batch.inserted": inserted,
                "telemetry.batch.duplicates": len(parsed) - len(refused) - inserted,
                "telemetry.batch.dead_letters": dead,
                "telemetry.batch.links_dropped": len(contexts) - len(linked),
                "telemetry.batch.calls_untraced": untraced,
            }
        )

    async def _write(self, parsed: Sequence[Parsed], dead: Sequence[DeadLetter]) -> int:
        events = [p.event for p in parsed]
        if not dead:
            # One statement, its own unit of work: autocommit (see repository.autocommit).
            async with repository.autocommit(self._runtime.engine) as db:
                return await service.store(self._runtime, db, events, source="stream")
        async with transaction(self._runtime.sessionmaker) as db:
            inserted = await service.store(self._runtime, db, events, source="stream")
            await repository.insert_dead_letters(db, dead)
        return inserted

    async def _write_one_by_one(self, parsed: Sequence[Parsed], dead: list[DeadLetter]) -> int:
        inserted = 0
        async with transaction(self._runtime.sessionmaker) as db:
            for item in parsed:
                try:
                    async with db.begin_nested():
                        inserted += await service.store(
                            self._runtime, db, [item.event], source="stream"
                        )
                except DBAPIError as exc:
                    if not _is_data_error(exc):
                        raise
                    dead.append((item.entry_id, item.payload, f"refused by Postgres: {exc.orig}"))
            if dead:
                await repository.insert_dead_letters(db, dead)
        return inserted


def _trace_calls(
    parsed: Sequence[Parsed],
    refused: set[str],
    batch: SpanContext,
    started: int,
    written: int,
    *,
    limit: int,
) -> int:
    """In each sampled call's own trace (the first `limit` of them), a span under
    inference's: when it was stored, in which batch (a link), or why not. Returns how many
    sampled calls got none."""
    sampled = [
        (item, parent)
        for item in parsed
        if (parent := item.context) is not None and parent.trace_flags.sampled
    ]
    for item, parent in sampled[:limit]:
        span = tracer.start_span(
            INGEST_SPAN,
            context=trace.set_span_in_context(NonRecordingSpan(parent)),
            kind=SpanKind.CONSUMER,
            links=[Link(batch)] if batch.trace_flags.sampled else None,
            start_time=started,
            attributes={
                "telemetry.call.id": str(item.event.id),
                "messaging.message.id": item.entry_id,
                "messaging.destination.name": STREAM,
            },
        )
        if item.entry_id in refused:
            span.set_status(trace.StatusCode.ERROR, "refused by Postgres: dead-lettered")
        span.end(end_time=written)
    return max(0, len(sampled) - limit)
