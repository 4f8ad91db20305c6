"""More concurrent requests than database connections: they queue and are answered; those
that wait past the pool's timeout are told to retry (503, Retry-After), never a 500 and
never PostgreSQL's "too many clients"."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import httpx

from devkit.e2e import FakeOpenAI, RunningPlatform, new_member_with_key

from .conftest import POOL_TIMEOUT

CONCURRENT = 300


async def burst(gateway: str, key: str) -> list[httpx.Response]:
    """CONCURRENT reads of inference's tables at once (a pool of 10 + 10 connections)."""
    limits = httpx.Limits(max_connections=CONCURRENT, max_keepalive_connections=CONCURRENT)
    async with httpx.AsyncClient(base_url=gateway, timeout=60, limits=limits) as client:
        return await asyncio.gather(*(
            client.get("/v1/providers/credentials", headers={"Authorization": f"Bearer {key}"})
            for _ in range(CONCURRENT)
        ))  # fmt: skip


def test_a_burst_past_the_pool_queues_and_is_answered(
    faulty: RunningPlatform, provider: FakeOpenAI
) -> None:
    key = new_member_with_key(faulty, provider, "pool-burst@example.com")

    answers = asyncio.run(burst(faulty.gateway, key))

    assert [r.status_code for r in answers] == [200] * CONCURRENT


def test_requests_that_wait_past_the_pool_timeout_are_told_to_retry(
    faulty: RunningPlatform, provider: FakeOpenAI
) -> None:
    key = new_member_with_key(faulty, provider, "pool-starved@example.com")
    admin_url = faulty.env["DATABASE_URL"].replace("+asyncpg", "")

    async def starve() -> tuple[list[httpx.Response], float]:
        # Every read of the credentials table blocks behind this lock, holding its pooled
        # connection: the pool runs dry, and the rest wait for a connection.
        holder = await asyncpg.connect(admin_url)
        try:
            locked = holder.transaction()
            await locked.start()
            await holder.execute(
                "LOCK TABLE inference.provider_credential IN ACCESS EXCLUSIVE MODE"
            )
            started = time.monotonic()
            pending = asyncio.ensure_future(burst(faulty.gateway, key))
            await asyncio.sleep(POOL_TIMEOUT + 2)  # past the pool's wait: some gave up
            await locked.rollback()
            return await pending, time.monotonic() - started
        finally:
            await holder.close()

    answers, _ = asyncio.run(starve())

    statuses = {r.status_code for r in answers}
    assert statuses == {200, 503}, statuses
    for refused in (r for r in answers if r.status_code == 503):
        assert refused.headers["content-type"] == "application/problem+json"
        assert refused.headers["retry-after"] == "1"
        assert refused.json()["type"] == "urn:llm-platform:problem:database-unavailable"
    assert "too many clients" not in faulty.log()
