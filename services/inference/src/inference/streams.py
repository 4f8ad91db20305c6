"""A cap on how many streams each user has open at once, every replica together.

A stream holds a connection at the gateway, here and at the provider for as long as it
lasts (up to INFERENCE_STREAM_MAX_SECONDS): without a cap, one user whose own endpoint
trickles could hold every connection the gateway has to this service.

Each open stream is a lease in the user's sorted set `inference:streams:<user id>`, scored
by when it lapses (Redis' clock, so replicas' clocks need not agree). A lease lasts as long
as a stream can, plus a grace: one a replica never gives back (it died mid-stream) stops
counting when its stream could not be running any more. The key expires with its last
lease.
"""

from __future__ import annotations

import uuid

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from inference.errors import TooManyStreams
from inference.repository import StreamLeases

log = structlog.get_logger(__name__)
# What a refused caller is told to wait: streams end at any time, none is known to end soon.
RETRY_AFTER_SECONDS = 5
# Added to a lease's life: a stream ends a little after its deadline (its error event, the
# telemetry event), never long after.
GRACE_SECONDS = 30.0


class StreamSlots:
    """At most `cap` open streams per user (0: no cap), leased for `lifetime` seconds."""

    def __init__(self, redis: Redis, *, cap: int, lifetime: float) -> None:
        self._leases = StreamLeases(redis)
        self.cap = cap
        self.lifetime = lifetime + GRACE_SECONDS

    async def acquire(self, owner: str) -> str | None:
        """A lease for one more stream of `owner`'s, or TooManyStreams. None when there is
        no cap to count against (or Redis cannot count: the stream goes ahead)."""
        if not self.cap:
            return None
        lease = uuid.uuid4().hex
        try:
            taken = await self._leases.take(owner, lease, life=self.lifetime, cap=self.cap)
        except RedisError:
            log.warning("stream leases unavailable; the stream goes ahead uncounted")
            return None
        if not taken:
            raise TooManyStreams(
                f"You have {self.cap} streams open, the most allowed at once "
                "(INFERENCE_MAX_CONCURRENT_STREAMS); retry when one ends.",
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            )
        return lease

    async def release(self, owner: str, lease: str | None) -> None:
        if lease is None:
            return
        try:
            await self._leases.give_back(owner, lease)
        except RedisError:
            log.warning("stream lease not returned; it lapses on its own")
