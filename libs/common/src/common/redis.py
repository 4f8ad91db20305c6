"""Redis client factory (redis-py asyncio, pooled), and reading its replies."""

from __future__ import annotations

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError


def create_redis(
    url: str,
    *,
    max_connections: int = 100,
    wait_seconds: float = 5.0,
    socket_timeout: float = 5.0,
) -> Redis:
    """A pooled client; past `max_connections` commands wait for a free connection (up to
    `wait_seconds`, then ConnectionError) instead of failing at once. A command unanswered
    after `socket_timeout` seconds (Redis paused, a network partition) fails with
    TimeoutError, and is not sent again: it may have run.

    A command that finds its pooled connection closed (Redis restarted, a proxy's idle
    timeout) is sent again once on a new one: without it every connection pooled before a
    restart failed its next command, long after Redis was back. (A connection lost after
    the command was sent may run it twice: the platform's Redis writes are counters,
    windows and caches, which a rare extra increment does not break.)"""
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=wait_seconds,
        socket_connect_timeout=2.0,
        socket_timeout=socket_timeout,
        health_check_interval=30,
        retry=Retry(
            ExponentialBackoff(cap=0.1, base=0.01),
            retries=1,
            supported_errors=(RedisConnectionError,),
        ),
    )
    return Redis.from_pool(pool)  # the client owns the pool: aclose() closes it


async def ping_redis(client: Redis) -> None:
    await client.ping()


def as_text(value: bytes | str) -> str:
    """A reply as text: clients made here return bytes (no `decode_responses`), a client
    made elsewhere may return str."""
    return value.decode() if isinstance(value, bytes) else value
