"""Retries with backoff and full jitter, a deadline, fallbacks across targets, and a
circuit breaker per target and credential whose state lives in Redis (every replica
agrees)."""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import structlog
from opentelemetry import trace
from redis.asyncio import Redis
from redis.exceptions import RedisError

from inference.metrics import CIRCUIT_SKIPS
from inference.providers.base import ProviderError
from inference.repository import CIRCUIT_CLEAN, CIRCUIT_SKIP, CircuitStates

log = structlog.get_logger(__name__)
tracer = trace.get_tracer("inference.failover")
T = TypeVar("T")


@dataclass(frozen=True)
class Target:
    provider: str  # openai | huggingface | local
    model: str  # the provider's own model name
    # The credential to call with: an alias target names one; the targets Failover.run
    # gets always carry the one resolved for the caller (see service._call_with_failover).
    credential_id: str | None = None

    @property
    def name(self) -> str:
        return f"{self.provider}/{self.model}"

    @property
    def circuit_key(self) -> str:
        """One circuit per model and credential: a member whose own endpoint is dead opens
        a circuit that only their own calls go through. `-`: no credential (local)."""
        return f"{self.name}|{self.credential_id or '-'}"


@dataclass
class Outcome(Generic[T]):
    result: T
    target: Target
    attempts: int
    fallback: bool


@dataclass
class Trail:
    """What happened, for telemetry even when the call failed."""

    attempts: int = 0
    target: Target | None = None
    errors: list[ProviderError] = field(default_factory=list)


class AllTargetsFailed(Exception):
    def __init__(self, trail: Trail, *, deadline: bool, all_open: bool) -> None:
        super().__init__("all targets failed")
        self.trail = trail
        self.deadline = deadline
        self.all_open = all_open


class CircuitBreaker:
    """Opens after `threshold` consecutive failures; after `cooldown` one replica probes.

    The state lives in Redis. A replica that found a circuit closed with no failures
    trusts that for `sync_interval` seconds without asking again (no Redis round trip per
    call on the healthy path), so a circuit another replica opens is seen within that
    time; its own failures it sees at once. A success clears the count in Redis only when
    there is something to clear. A circuit's state expires `state_ttl` seconds after its
    last failure (at least the cool-down): a key per model and credential that ever failed
    would otherwise stay."""

    def __init__(
        self,
        redis: Redis,
        *,
        threshold: int,
        cooldown: float,
        sync_interval: float = 1.0,
        state_ttl: float = 300.0,
    ) -> None:
        self._states = CircuitStates(redis)
        self.threshold = threshold
        self.cooldown = cooldown
        self.sync_interval = sync_interval
        self.state_ttl = math.ceil(max(state_ttl, cooldown))
        # circuit key -> monotonic time until which "closed, no failures" is trusted
        self._clean_until: dict[str, float] = {}

    async def allows(self, target: Target, now: float) -> bool:
        key = target.circuit_key
        if self._clean_until.get(key, 0.0) > time.monotonic():
            return True
        try:
            verdict = await self._states.allow(key, now=now, cooldown=self.cooldown)
        except RedisError:
            log.warning("circuit state unavailable; calling the target", target=target.name)
            return True
        if verdict == CIRCUIT_CLEAN:
            if len(self._clean_until) > 10_000:
                self._clean_until.clear()
            self._clean_until[key] = time.monotonic() + self.sync_interval
        return verdict != CIRCUIT_SKIP

    async def failed(self, target: Target, now: float) -> None:
        self._clean_until.pop(target.circuit_key, None)
        try:
            await self._states.fail(
                target.circuit_key, now=now, threshold=self.threshold, ttl=self.state_ttl
            )
        except RedisError:
            log.warning("circuit state unavailable", target=target.name)

    async def succeeded(self, target: Target) -> None:
        if self._clean_until.get(target.circuit_key, 0.0) > time.monotonic():
            return  # closed with no failures when last asked: nothing to clear
        try:
            await self._states.clear(target.circuit_key)
        except RedisError:
            log.warning("circuit state unavailable", target=target.name)


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int
    base: float
    cap: float
    deadline: float

    def backoff(self, attempt: int, retry_after: float | None) -> float:
        """Full jitter (AWS): uniform in [0, min(cap, base * 2^attempt)]; Retry-After wins."""
        if retry_after is not None:
            return retry_after
        return random.uniform(0, min(self.cap, self.base * 2**attempt))  # noqa: S311


class Failover:
    """A model call across its targets: each in order, each with retries, one deadline."""

    def __init__(self, breaker: CircuitBreaker, policy: RetryPolicy) -> None:
        self.breaker = breaker
        self.policy = policy

    async def run(
        self,
        targets: list[Target],
        call: Callable[[Target], Awaitable[T]],
        *,
        trail: Trail,
        operation: str,
        observe: Callable[[Target, float, bool], None] | None = None,
    ) -> Outcome[T]:
        """Each target in order, each with retries, within one deadline. A client error
        (ProviderError not retryable) stops everything and is raised as is. `observe`, when
        given, is told each other attempt's time (seconds; to the first chunk of a stream)
        and whether it failed."""
        deadline = time.monotonic() + self.policy.deadline
        all_open = True
        for index, target in enumerate(targets):
            if not await self.breaker.allows(target, time.time()):
                log.info("circuit open, skipping target", target=target.name)
                CIRCUIT_SKIPS.labels(target.provider).inc()
                continue
            all_open = False
            for attempt in range(self.policy.max_attempts):
                started = time.monotonic()
                remaining = deadline - started
                if remaining <= 0:
                    raise AllTargetsFailed(trail, deadline=True, all_open=False)
                trail.attempts += 1
                trail.target = target
                try:
                    with tracer.start_as_current_span(
                        f"{operation} {target.name}",
                        kind=trace.SpanKind.CLIENT,
                        attributes=_attempt_attributes(target, operation, attempt, index > 0),
                    ) as span:
                        try:
                            async with asyncio.timeout(remaining):
                                result = await call(target)
                        except TimeoutError:
                            raise ProviderError(
                                "The request deadline passed.", kind="timeout", retryable=True
                            ) from None
                        except ProviderError as exc:
                            span.set_attribute("error.type", exc.kind)
                            span.set_status(trace.StatusCode.ERROR, exc.message)
                            raise
                        _record_usage(span, result)
                except ProviderError as exc:
                    trail.errors.append(exc)
                    if not exc.retryable:
                        raise
                    if observe is not None:
                        observe(target, time.monotonic() - started, True)
                    await self.breaker.failed(target, time.time())
                    pause = self._pause(attempt, exc, deadline)
                    if pause is None:
                        break  # this target is done: try the next
                    await asyncio.sleep(pause)
                    continue
                if observe is not None:
                    observe(target, time.monotonic() - started, False)
                await self.breaker.succeeded(target)
                return Outcome(
                    result=result, target=target, attempts=trail.attempts, fallback=index > 0
                )
        raise AllTargetsFailed(
            trail, deadline=deadline - time.monotonic() <= 0, all_open=all_open and bool(targets)
        )

    def _pause(self, attempt: int, exc: ProviderError, deadline: float) -> float | None:
        """How long to wait before the target's next attempt after a retryable failure;
        None when it gets none: its attempts are used up, or the wait would outlast the
        deadline."""
        if attempt + 1 >= self.policy.max_attempts:
            return None
        pause = self.policy.backoff(attempt, exc.retry_after)
        return None if pause >= deadline - time.monotonic() else pause


def _attempt_attributes(
    target: Target, operation: str, attempt: int, fallback: bool
) -> dict[str, str | int | bool]:
    """An attempt's span attributes (OpenTelemetry's gen_ai conventions, and ours)."""
    return {
        "gen_ai.system": target.provider,
        "gen_ai.operation.name": operation,
        "gen_ai.request.model": target.model,
        "inference.attempt": attempt + 1,
        "inference.fallback": fallback,
    }


def _record_usage(span: trace.Span, result: object) -> None:
    """The tokens a provider reported, when its answer says (a stream's come later)."""
    usage = getattr(result, "usage", None)
    if usage is not None:
        span.set_attribute("gen_ai.usage.input_tokens", usage.prompt_tokens)
        span.set_attribute("gen_ai.usage.output_tokens", usage.completion_tokens)
