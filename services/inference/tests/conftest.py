"""Fixtures of the inference service's tests: the service migrated on the test database,
in front of local servers that speak OpenAI's and Hugging Face's protocols."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import httpx
import openai
import pytest
from fastapi import FastAPI
from redis.asyncio import Redis

from common.identity import Identity
from common.llm_events import STREAM, LlmCallEvent
from devkit.fakes.faults import FaultControl
from devkit.fakes.hf_server import create_hf_app
from devkit.fakes.openai_server import create_openai_app
from devkit.testing import LiveServer, RunDatabase, ServiceHarness, asgi_client
from inference.main import create_app
from inference.settings import InferenceSettings

UPSTREAM_KEY = "sk-upstream-secret-0123456789abcdef"
HF_TOKEN = "hf_upstream_token_0123456789abcdef"
MEMBER_PERMISSIONS = (
    "models:read", "inference:invoke", "providers:manage", "embeddings:read",
    "embeddings:write", "telemetry:read_own", "telemetry:write", "api_keys:manage",
)  # fmt: skip
ADMIN_PERMISSIONS = (*MEMBER_PERMISSIONS, "providers:manage_shared", "telemetry:read_all")
# Quick to fail in tests: tiny backoff. The timeouts are short, yet long enough that a busy
# machine's pause never turns an answer into a timed-out attempt (a test of the count of
# attempts then saw one more); a test of timeouts sets shorter ones (READ_TIMEOUT_TESTED).
FAST = {
    "read_timeout_seconds": 5.0,
    "connect_timeout_seconds": 5.0,
    "backoff_base_seconds": 0.01,
    "backoff_max_seconds": 0.05,
    "request_deadline_seconds": 10.0,
    "cache_seconds": 0.0,
    "local_preload": False,  # the tests that use the model load it once they need it
    # The semantic cache's first lookup of an app waits for the model to load: on a busy
    # machine that may take longer than the production bound, and a miss there is no test.
    "cache_semantic_timeout_seconds": 30.0,
}


# The read timeout of the tests that make a provider miss it (a first byte 3 s late).
READ_TIMEOUT_TESTED = {"read_timeout_seconds": 1.0}


def member(user_id: str = "00000000-0000-0000-0000-00000000000a") -> Identity:
    return Identity(
        sub=user_id, kind="user", iss="gateway", roles=("member",), permissions=MEMBER_PERMISSIONS
    )


def admin(user_id: str = "00000000-0000-0000-0000-0000000000ad") -> Identity:
    return Identity(
        sub=user_id, kind="user", iss="gateway", roles=("admin",), permissions=ADMIN_PERMISSIONS
    )


def per_million(usd: float) -> str:
    """The cost of that many USD per 1M tokens, as call events write it."""
    return str((Decimal(str(round(usd, 9))) / 1_000_000).quantize(Decimal("0.000000001")))


# The fake providers listen on loopback, which the egress policy refuses unless allowed.
LOOPBACK_ALLOWED = "127.0.0.1/32,::1/128"


@pytest.fixture(scope="session")
def harness(test_database: RunDatabase, redis_url: str) -> ServiceHarness:
    return ServiceHarness.migrated(
        "inference", InferenceSettings, create_app, test_database, redis_url,
        allowed_private_networks=LOOPBACK_ALLOWED,
    )  # fmt: skip


@dataclass
class Upstream:
    url: str
    control: FaultControl


@pytest.fixture
async def openai_upstream() -> AsyncIterator[Upstream]:
    control = FaultControl()
    async with LiveServer(create_openai_app(control, api_key=UPSTREAM_KEY)) as server:
        yield Upstream(f"{server.url}/v1", control)


@pytest.fixture
async def hf_upstream() -> AsyncIterator[Upstream]:
    control = FaultControl()
    async with LiveServer(create_hf_app(control, token=HF_TOKEN)) as server:
        yield Upstream(server.url, control)


@dataclass
class Inference:
    """The service in-process, and ways to call it as different people."""

    app: FastAPI
    harness: ServiceHarness
    redis: Redis

    def client(self, identity: Identity | None = None) -> httpx.AsyncClient:
        return asgi_client(self.app, identity=identity or member(), key=self.harness.key())

    @asynccontextmanager
    async def sdk(self, identity: Identity | None = None) -> AsyncIterator[openai.AsyncOpenAI]:
        """The official openai client, calling this app as `identity` (no retries)."""
        async with self.client(identity) as http:
            yield openai.AsyncOpenAI(
                api_key="unused", base_url="http://testserver/v1", http_client=http, max_retries=0
            )

    async def call(
        self, method: str, path: str, *, identity: Identity | None = None, **kwargs: Any
    ) -> httpx.Response:
        async with self.client(identity) as client:
            return await client.request(method, path, **kwargs)

    async def credential(
        self, base_url: str, *, provider: str = "openai", api_key: str = UPSTREAM_KEY,
        identity: Identity | None = None, shared: bool = False, name: str | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        response = await self.call(
            "POST",
            "/v1/providers/credentials",
            identity=identity or (admin() if shared else member()),
            json={
                "provider": provider,
                "name": name or f"{provider}-{base_url}",
                "api_key": api_key,
                "base_url": base_url,
                "shared": shared,
            },
        )
        assert response.status_code == 201, response.text
        body: dict[str, Any] = response.json()
        return body

    async def events(self) -> list[LlmCallEvent]:
        """The call events appended so far (waiting for the sink to write them)."""
        import asyncio

        for _ in range(200):
            if not self.app.state.runtime.sink._buffer:
                break
            await asyncio.sleep(0.01)
        entries = await self.redis.xrange(STREAM)
        return [LlmCallEvent.from_fields(fields) for _, fields in entries]


MakeInference = Callable[..., AbstractAsyncContextManager[Inference]]


@pytest.fixture(scope="session")
def local_model_libraries() -> None:
    """torch and sentence-transformers imported once, before a test's first call to the
    local model: importing them takes seconds (more on a busy machine), and a call that
    loads the model counts them against its request deadline (each app loads the weights
    itself, quickly)."""
    import sentence_transformers  # noqa: F401
    import torch  # noqa: F401


@pytest.fixture
def make_inference(harness: ServiceHarness, redis: Redis) -> MakeInference:
    @asynccontextmanager
    async def make(**overrides: Any) -> AsyncIterator[Inference]:
        async with harness.app(**{**FAST, **overrides}) as app:
            yield Inference(app, harness, redis)

    return make


@pytest.fixture
async def inference(make_inference: MakeInference) -> AsyncIterator[Inference]:
    async with make_inference() as service:
        yield service


@pytest.fixture
async def app(harness: ServiceHarness) -> AsyncIterator[FastAPI]:
    async with harness.app() as started:
        yield started
