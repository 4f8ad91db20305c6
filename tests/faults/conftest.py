"""The fault suite: `make run` on a PostgreSQL and a Redis of its own, which the tests stop,
kill and start again for real, with the OpenAI fake as the provider."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from devkit.e2e import (
    FakeOpenAI,
    RunningPlatform,
    StoppablePostgres,
    StoppableRedis,
    platform_on,
    serving_fake_openai,
)
from devkit.testing import server_dir

RESTART_DELAY_SECONDS = 3
POOL_TIMEOUT = 10  # seconds: DATABASE_POOL_TIMEOUT's default, which the platform keeps


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/faults" in str(item.path):
            item.add_marker(pytest.mark.e2e)  # processes: out of `make test-fast`


@pytest.fixture(scope="session")
def fault_postgres() -> Iterator[StoppablePostgres]:
    with server_dir("faults-postgres") as data_dir:
        server = StoppablePostgres(data_dir)
        try:
            yield server
        finally:
            server.close()


@pytest.fixture(scope="session")
def fault_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StoppableRedis]:
    server = StoppableRedis(tmp_path_factory.mktemp("faults-redis"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def provider() -> Iterator[FakeOpenAI]:
    with serving_fake_openai() as fake:
        yield fake


@pytest.fixture(scope="session")
def faulty(
    fault_postgres: StoppablePostgres,
    fault_redis: StoppableRedis,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RunningPlatform]:
    """`make run` on a PostgreSQL and a Redis of its own (shared by the fault modules; each
    test leaves them running), its settings the defaults but for the per-member limits
    (rate, requests in flight, open streams): off, and a keeper's first restart after
    RESTART_DELAY_SECONDS, long enough that a load finds a killed service down."""
    log_dir: Path = tmp_path_factory.mktemp("faults")
    env = {
        "PLATFORM_DATA_DIR": str(tmp_path_factory.mktemp("faults-data")),
        "KEEPER_RESTART_DELAY_SECONDS": str(RESTART_DELAY_SECONDS),
        # The load of these tests is one member's: the per-key limits are not under test.
        "GATEWAY_RATE_LIMIT_PER_MINUTE": "0",
        "GATEWAY_RATE_LIMIT_MODEL_PER_MINUTE": "0",
        "GATEWAY_UPSTREAM_MAX_CONNECTIONS_PER_USER": "0",
        "INFERENCE_MAX_CONCURRENT_STREAMS": "0",
    }
    with platform_on(
        fault_postgres.admin_url, fault_redis.url, log_dir, redis_db=0, env=env
    ) as running:
        yield running
