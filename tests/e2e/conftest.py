"""End-to-end: `make run` itself, on free ports, driven over HTTP like a newcomer would.
The platform's processes and the members that use it are devkit.e2e's (tests/faults and
tests/fuzz use them too); the session's shared platform and fakes are fixtures here."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import pytest

from devkit.e2e import (
    ADMIN_EMAIL,
    ADMIN_PASSWORD,
    MEMBER_PASSWORD,
    PROVIDER_KEY,
    READY_WITHIN_SECONDS,
    CacheRedis,
    FakeOpenAI,
    Member,
    RunningPlatform,
    launch_platform,
    new_member_with_key,
    platform_on,
    served_in_thread,
    serving_fake_openai,
    start_platform,
    wait_until_serving,
)

from .browser import chromium, page
from .otlp import OtlpReceiver

__all__ = [
    "ADMIN_EMAIL", "ADMIN_PASSWORD", "MEMBER_PASSWORD", "PROVIDER_KEY", "READY_WITHIN_SECONDS",
    "CacheRedis", "FakeOpenAI", "Login", "Member", "RunningPlatform", "chromium",
    "launch_platform", "new_member_with_key", "page", "platform_on", "served_in_thread",
    "start_platform", "wait_until_serving",
]  # fmt: skip

E2E_RESOURCE = "deployment.environment=e2e,service.version=0.0.0-e2e"  # on every span


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/e2e" in str(item.path):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def otlp() -> Iterator[OtlpReceiver]:
    """Where the e2e platform exports its traces (OTLP/HTTP, as to Jaeger's :4318)."""
    receiver = OtlpReceiver().start()
    yield receiver
    receiver.stop()


@pytest.fixture(scope="session")
def cache_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CacheRedis]:
    redis_server = CacheRedis(tmp_path_factory.mktemp("cache-redis"))
    yield redis_server
    redis_server.stop()


@pytest.fixture(scope="session")
def platform(
    postgres_admin_url: str,
    redis_url: str,
    otlp: OtlpReceiver,
    cache_redis: CacheRedis,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RunningPlatform]:
    """The platform on the test run's Postgres (a database of its own) and Redis (db 1),
    its response cache on a Redis of its own, exporting traces to a local OTLP receiver;
    the default settings but the anonymous rate limit per address."""
    with platform_on(
        postgres_admin_url,
        redis_url,
        tmp_path_factory.mktemp("e2e"),
        redis_db=1,
        env={
            "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "200",
            "OTEL_RESOURCE_ATTRIBUTES": E2E_RESOURCE,
            "INFERENCE_CACHE_REDIS_URL": cache_redis.url,
            # Every test's users register and sign in from 127.0.0.1, the console's
            # journeys in a browser among them: a few hundred a minute from one address,
            # past the 60 a minute one address gets by default (gateway/tests test that).
            "GATEWAY_RATE_LIMIT_ANONYMOUS_PER_MINUTE": "600",
        },
    ) as running:
        yield running


Login = Callable[[str, str], httpx.Client]


@pytest.fixture
def login(platform: RunningPlatform) -> Iterator[Login]:
    """Browser-like clients: session cookie, and the CSRF header they must echo."""
    clients: list[httpx.Client] = []

    def sign_in(email: str, password: str) -> httpx.Client:
        client = httpx.Client(base_url=platform.gateway)
        clients.append(client)
        response = client.post("/auth/login", json={"email": email, "password": password})
        assert response.status_code == 200, response.text
        client.headers["X-CSRF-Token"] = response.json()["csrf_token"]
        return client

    yield sign_in
    for client in clients:
        client.close()


@pytest.fixture(scope="session")
def fake_openai() -> Iterator[FakeOpenAI]:
    """The OpenAI fake, served in a thread of this process."""
    with serving_fake_openai() as fake:
        yield fake


@pytest.fixture(scope="session")
def member_key(platform: RunningPlatform, fake_openai: FakeOpenAI) -> str:
    return new_member_with_key(platform, fake_openai, "sdk@example.com")
