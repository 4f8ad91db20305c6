"""The pooled Redis client across a Redis restart (a real redis-server, stopped and started
again on the same port)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from common.redis import create_redis
from devkit import devstack


async def test_connections_pooled_before_a_restart_work_after_it(tmp_path: Path) -> None:
    process, url = devstack.start_redis(tmp_path)
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    client = create_redis(url)
    try:
        # Twenty connections in the pool, all of them made before the restart.
        assert await asyncio.gather(*(client.ping() for _ in range(20))) == [True] * 20
        devstack.stop_process(process)
        process, _ = devstack.start_redis(tmp_path, port)

        answers = await asyncio.gather(*(client.set(f"k{n}", n) for n in range(20)))

        assert answers == [True] * 20
        assert await client.get("k7") == b"7"
    finally:
        await client.aclose()
        devstack.stop_process(process)
