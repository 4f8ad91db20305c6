"""The order an alias's targets are tried in, by its strategy (ModelAlias.strategy).

- `ordered`: as listed; each next one when the one before fails (failover.py).
- `weighted`: the first is chosen by smooth weighted round robin (nginx's): over any run
  of calls each target is chosen in proportion to its weight, interleaved, exactly (no
  randomness: 1,000 calls over weights 3 and 1 are 750 and 250); the others follow in
  order of weight, for failover. The state is per replica: N replicas each split their
  own calls by the weights, so the whole splits by them too.
- `least-latency`: the target with the lowest recent latency first, the others by
  increasing latency, for failover (`LeastLatency`). A latency is per target and credential
  (`Target.circuit_key`): a decayed average (EWMA, a new sample weighs ALPHA) of each
  attempt's time, to the first chunk for a stream (time to first token) and to the whole
  answer otherwise; an attempt that fails (retryably: a provider's 4xx is the request's
  fault) counts as at least INFERENCE_LATENCY_FAILURE_SECONDS. Every replica's samples
  meet in Redis (written in batches, off the request path) and each replica reads them at
  most every INFERENCE_LATENCY_SYNC_SECONDS, so a replica that never called a target still
  knows how fast it is; a replica's own samples count for it at once.
  - Exploration: a target with no sample is tried first until it has one; a target
    other than the fastest whose last sample is INFERENCE_LATENCY_PROBE_SECONDS old gets
    one call (per replica in that time), so a slow or failed target that got better is
    seen again.
  - Near-ties: the targets within INFERENCE_LATENCY_BUFFER (10 %) of the fastest take turns
    being first, so that close targets share the calls rather than all going to one.
  - Bounded: a latency lives INFERENCE_LATENCY_TTL_SECONDS in Redis after its last sample;
    a replica keeps at most MAX_TARGETS of them. Redis away: a replica orders by what it
    knows (its own samples), else as listed; never an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import deque
from collections.abc import Callable, Sequence

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from inference.failover import Target
from inference.repository import Latencies, Latency

log = structlog.get_logger(__name__)

# Aliases whose weighted state is kept (per owner and alias); past it the state restarts.
MAX_WEIGHTED = 10_000
# The strategies an alias may have (schemas.Strategy).
ORDERED, WEIGHTED, LEAST_LATENCY = "ordered", "weighted", "least-latency"
# A new latency sample's weight in the decayed average.
ALPHA = 0.3
# Latencies a replica keeps (its view, and samples waiting to be written); past it, the
# view starts again from Redis.
MAX_TARGETS = 10_000
# Samples of one target kept for one write (the oldest dropped), and how long samples wait
# to be written together.
MAX_SAMPLES = 32
FLUSH_SECONDS = 0.1
# (seconds, whether the attempt failed)
Observe = Callable[[Target, float, bool], None]


class LeastLatency:
    """Per replica: its view of the targets' latencies (Redis', read at most every
    `sync_seconds`, and its own samples), the samples it has yet to write, and when it last
    sent each target a probe. Times are the runtime's clock (injectable)."""

    def __init__(
        self,
        redis: Redis,
        *,
        buffer: float,
        probe_seconds: float,
        failure_seconds: float,
        sync_seconds: float,
        ttl_seconds: float,
        flush_seconds: float = FLUSH_SECONDS,
    ) -> None:
        self._latencies = Latencies(redis)
        self.buffer = buffer
        self.probe_seconds = probe_seconds
        self.failure_seconds = failure_seconds
        self.sync_seconds = sync_seconds
        self.ttl = math.ceil(ttl_seconds)
        self.flush_seconds = flush_seconds
        self._view: dict[str, Latency] = {}
        self._read_at: dict[str, float] = {}
        self._probed: dict[str, float] = {}
        self._pending: dict[str, tuple[float, deque[float]]] = {}
        self._turns: dict[tuple[str, ...], int] = {}
        self._flusher: asyncio.Task[None] | None = None

    async def order(self, targets: Sequence[Target], now: float) -> list[Target]:
        """`targets` in the order to try them for one call."""
        if len(targets) < 2:
            return list(targets)
        keys = [target.circuit_key for target in targets]
        await self._refresh(keys, now)
        known = {i: self._view[key] for i, key in enumerate(keys) if key in self._view}
        ranked = sorted(known, key=lambda i: known[i].seconds)
        if ranked:  # near-ties take turns
            tie = known[ranked[0]].seconds * (1 + self.buffer)
            near = [i for i in ranked if known[i].seconds <= tie]
            ranked.remove(chosen := near[self._turn(tuple(keys)) % len(near)])
            ranked.insert(0, chosen)
        unknown = [i for i in range(len(targets)) if i not in known]
        due = (i for i in unknown + ranked[1:] if self._due(keys[i], known.get(i), now))
        probe = next(due, None)
        order = ranked + unknown
        if probe is not None:
            if len(self._probed) >= MAX_TARGETS:
                self._probed.clear()
            self._probed[keys[probe]] = now
            order.remove(probe)
            order.insert(0, probe)
        return [targets[i] for i in order]

    def _turn(self, keys: tuple[str, ...]) -> int:
        """The next turn among these targets (an alias's: the turns of one are not
        another's, so that two aliases called in alternation each spread their calls)."""
        if keys not in self._turns and len(self._turns) >= MAX_TARGETS:
            self._turns.clear()
        turn = self._turns[keys] = self._turns.get(keys, -1) + 1
        return turn

    def _due(self, key: str, latency: Latency | None, now: float) -> bool:
        """Whether the target should get a probe: no recent sample, and no probe from this
        replica in `probe_seconds`."""
        fresh = latency is not None and now - latency.at < self.probe_seconds
        probed = self._probed.get(key)
        return not fresh and (probed is None or not 0 <= now - probed < self.probe_seconds)

    async def _refresh(self, keys: list[str], now: float) -> None:
        """Read from Redis the latencies this replica has not read for `sync_seconds`."""
        read_at = self._read_at
        due = [k for k in keys if not 0 <= now - read_at.get(k, -math.inf) < self.sync_seconds]
        if not due:
            return
        if len(self._read_at) >= MAX_TARGETS:
            self._read_at.clear()
            self._view.clear()
        for key in due:
            self._read_at[key] = now  # the callers meanwhile use what this replica knows
        try:
            read = await self._latencies.read(due)
        except (RedisError, OSError) as exc:
            log.warning("latencies unavailable; ordering by what this replica knows",
                        error=type(exc).__name__)  # fmt: skip
            return
        for key, shared in zip(due, read, strict=True):
            own = self._view.get(key)
            if shared is not None and (own is None or shared.at >= own.at):
                self._view[key] = shared
            elif own is not None and now - own.at >= self.ttl:
                del self._view[key]

    def observe(
        self, target: Target, seconds: float, failed: bool, *, clock: Callable[[], float]
    ) -> None:
        """An attempt's latency (`failed`: at least `failure_seconds`), taken at `clock()`:
        in this replica's view at once, in Redis with the next batch."""
        now = clock()
        if failed:
            seconds = max(seconds, self.failure_seconds)
        key = target.circuit_key
        own = self._view.get(key)
        if own is None and len(self._view) >= MAX_TARGETS:
            self._view.clear()
            self._read_at.clear()
        self._view[key] = Latency(
            seconds if own is None else own.seconds + ALPHA * (seconds - own.seconds),
            now if own is None else max(now, own.at),
        )
        pending = self._pending.get(key)
        if pending is None:
            if len(self._pending) >= MAX_TARGETS:
                return  # Redis has been away for a while: this replica still counts it
            pending = self._pending[key] = (now, deque(maxlen=MAX_SAMPLES))
        pending[1].append(seconds)
        self._pending[key] = (max(now, pending[0]), pending[1])
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_soon())

    async def _flush_soon(self) -> None:
        while self._pending:
            await asyncio.sleep(self.flush_seconds)
            await self.flush()

    async def flush(self) -> None:
        """Write the samples taken so far (lost if Redis is away: they are hints)."""
        batch, self._pending = self._pending, {}
        try:
            await self._latencies.add(batch, alpha=ALPHA, ttl=self.ttl)
        except (RedisError, OSError) as exc:
            log.warning("latencies not written", error=type(exc).__name__, targets=len(batch))

    async def close(self, grace_seconds: float = 2.0) -> None:
        """Give what is left `grace_seconds` to be written, and stop."""
        flusher = self._flusher
        if flusher is not None:
            await asyncio.wait({flusher}, timeout=grace_seconds)
            flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flusher


class Routing:
    """Per replica: the weighted round robin's state of each weighted alias, and the
    least-latency view."""

    def __init__(self, latency: LeastLatency) -> None:
        self._current: dict[tuple[object, ...], list[int]] = {}
        self.latency = latency

    def order(
        self, key: tuple[object, ...], strategy: str, targets: Sequence[tuple[Target, int]]
    ) -> list[Target]:
        """The targets, (target, weight) each, in the order to try them for one call.
        `key` names the alias (and its owner, and its targets: a change restarts)."""
        if strategy != WEIGHTED or len(targets) < 2:
            return [target for target, _ in targets]
        current = self._current.get(key)
        if current is None:
            if len(self._current) >= MAX_WEIGHTED:
                self._current.clear()
            current = self._current[key] = [0] * len(targets)
        total = 0
        for i, (_, weight) in enumerate(targets):
            current[i] += weight
            total += weight
        chosen = max(range(len(targets)), key=current.__getitem__)
        current[chosen] -= total
        rest = sorted((i for i in range(len(targets)) if i != chosen),
                      key=lambda i: -targets[i][1])  # fmt: skip
        return [targets[chosen][0], *(targets[i][0] for i in rest)]
