"""The Redis stream of call events (common.llm_events.STREAM), as one consumer of one
consumer group reads it: every Redis command of the stream consumer."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from common.llm_events import STREAM
from common.redis import as_text

# An entry as XREADGROUP and XAUTOCLAIM give it: its id, and its fields (None when the
# entry was deleted from the stream while pending).
Entry = tuple[bytes, dict[bytes, bytes] | None]


class CallStream:
    """The stream, read by the consumer `consumer` of the group `group`."""

    def __init__(self, redis: Redis, *, group: str, consumer: str) -> None:
        self._redis = redis
        self._group = group
        self._consumer = consumer

    async def ensure_group(self) -> None:
        """The group (and the stream), made if missing."""
        try:
            # From the start of the stream: events appended before telemetry ever ran count.
            await self._redis.xgroup_create(STREAM, self._group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def read_new(self, *, count: int, block_ms: int) -> list[Entry]:
        """Entries never delivered to the group, waiting up to `block_ms` for some."""
        response: Any = await self._redis.xreadgroup(
            self._group, self._consumer, {STREAM: ">"}, count=count, block=block_ms
        )
        return [entry for _stream, entries in response or () for entry in entries]

    async def read_own_pending(self, *, after: str, count: int) -> list[Entry]:
        """Entries delivered to this consumer (by name) and not acknowledged, after the
        entry id `after` ("0": from the first)."""
        response: Any = await self._redis.xreadgroup(
            self._group, self._consumer, {STREAM: after}, count=count
        )
        return list(response[0][1]) if response else []

    async def claim_idle(
        self, *, idle_ms: int, start: bytes | str, count: int
    ) -> tuple[bytes | str | None, list[Entry]]:
        """XAUTOCLAIM: entries pending for any consumer idle at least `idle_ms`, from the
        entry id `start`; the id to go on from (None: the scan is over) and the entries."""
        answer: Any = await self._redis.xautoclaim(
            STREAM, self._group, self._consumer, idle_ms, start, count=count
        )
        next_start, claimed = answer[0], answer[1]
        return (None if _entry_id(next_start) == (0, 0) else next_start), list(claimed)

    async def ack(self, ids: Sequence[bytes]) -> None:
        await self._redis.xack(STREAM, self._group, *ids)

    async def trim(self) -> int | None:
        """XTRIM MINID below the oldest entry some group still needs (pending, or not yet
        delivered). Returns the lag of our group (its pending and undelivered entries), or
        None when the stream has no group."""
        groups = await self._redis.xinfo_groups(STREAM)
        if not groups:
            return None
        floors = []
        lag = None
        for group in groups:
            pending = await self._redis.xpending(STREAM, group["name"])
            ms, seq = _entry_id(group["last-delivered-id"])
            floor = (ms, seq + 1)
            if pending["pending"]:
                floor = min(floor, _entry_id(pending["min"]))
            floors.append(floor)
            if as_text(group["name"]) == self._group:
                # Redis 7 counts the undelivered entries; 6.2 does not (see below).
                undelivered = group.get("lag")
                lag = None if undelivered is None else pending["pending"] + undelivered
        ms, seq = min(floors)
        await self._redis.xtrim(STREAM, minid=f"{ms}-{seq}", approximate=False)
        if lag is None:
            # Exactly trimmed, the stream holds what is pending, what is undelivered, and
            # entries acknowledged above the oldest pending one: an upper bound.
            lag = await self._redis.xlen(STREAM)
        return int(lag)


def _entry_id(value: bytes | str) -> tuple[int, int]:
    ms, _, seq = as_text(value).partition("-")
    return int(ms), int(seq or 0)
