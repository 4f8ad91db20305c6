"""Redis client factory (redis-py asyncio, pooled)."""

from __future__ import annotations

from redis.asyncio import Redis


def create_redis(url: str, *, max_connections: int = 50) -> Redis:
    return Redis.from_url(
        url,
        max_connections=max_connections,
        socket_connect_timeout=2.0,
        socket_timeout=5.0,
        health_check_interval=30,
    )


async def ping_redis(client: Redis) -> None:
    await client.ping()
