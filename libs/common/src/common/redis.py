"""Redis client factory (redis-py asyncio, pooled), and reading its replies."""

from __future__ import annotations

from redis.asyncio import BlockingConnectionPool, Redis


def create_redis(url: str, *, max_connections: int = 100, wait_seconds: float = 5.0) -> Redis:
    """A pooled client; past `max_connections` commands wait for a free connection (up to
    `wait_seconds`, then ConnectionError) instead of failing at once."""
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=wait_seconds,
        socket_connect_timeout=2.0,
        socket_timeout=5.0,
        health_check_interval=30,
    )
    return Redis.from_pool(pool)  # the client owns the pool: aclose() closes it


async def ping_redis(client: Redis) -> None:
    await client.ping()


def as_text(value: bytes | str) -> str:
    """A reply as text: clients made here return bytes (no `decode_responses`), a client
    made elsewhere may return str."""
    return value.decode() if isinstance(value, bytes) else value
