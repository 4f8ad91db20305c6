"""Fixtures of the embeddings service's tests: the service migrated on the test database, in
front of the real inference service (served on 127.0.0.1, real local all-MiniLM-L6-v2)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from common.identity import HEADER, Identity, request_target, verify
from devkit.testing import (
    LiveServer,
    RunDatabase,
    ServiceHarness,
    asgi_client,
    redis_db_url,
    running,
)
from embeddings.main import create_app
from embeddings.settings import EmbeddingsSettings
from inference.main import create_app as create_inference_app
from inference.settings import InferenceSettings

MODEL = "local/all-MiniLM-L6-v2"
# A Redis database of this package's own: the session's inference server appends a call
# event to the telemetry stream for every embeddings call, at any time; on the shared
# database 0 those events would land in the stream other packages' tests read (the e2e
# platforms use 1 and 2).
REDIS_DB = 3
VIEWER_PERMISSIONS = ("models:read", "embeddings:read", "telemetry:read_own", "api_keys:manage")
MEMBER_PERMISSIONS = (*VIEWER_PERMISSIONS, "inference:invoke", "providers:manage",
                      "embeddings:write", "telemetry:write")  # fmt: skip
ADMIN_PERMISSIONS = (*MEMBER_PERMISSIONS, "providers:manage_shared", "telemetry:read_all",
                     "users:manage", "audit:read", "embeddings:read_all")  # fmt: skip


def person(number: int, role: str = "member") -> Identity:
    permissions = {"viewer": VIEWER_PERMISSIONS, "member": MEMBER_PERMISSIONS,
                   "admin": ADMIN_PERMISSIONS}[role]  # fmt: skip
    return Identity(sub=f"00000000-0000-0000-0000-{number:012d}", kind="user", iss="gateway",
                    roles=(role,), permissions=permissions)  # fmt: skip


@dataclass
class EmbeddingCalls:
    """What reached the real inference app's /v1/embeddings: one entry per call, and who
    each was signed for (the identity inference verified)."""

    key: bytes
    calls: list[dict[str, Any]] = field(default_factory=list)
    identities: list[Identity] = field(default_factory=list)

    def texts(self, model: str | None = None) -> list[str]:
        return [t for c in self.calls if model in (None, c["model"]) for t in c["input"]]


class CountingApp:
    """ASGI wrapper around the inference app that records each /v1/embeddings body."""

    def __init__(self, app: Any, record: EmbeddingCalls) -> None:
        self.app, self.record = app, record

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != "/v1/embeddings":
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []

        async def recording() -> Any:
            message = await receive()
            chunks.append(message.get("body", b""))
            return message

        await self.app(scope, recording, send)
        self.record.calls.append(json.loads(b"".join(chunks)))
        headers = dict(scope["headers"])
        self.record.identities.append(
            verify(
                headers[HEADER.lower().encode()].decode(),
                self.record.key,
                method=scope["method"],
                path=request_target(scope),
                audience="inference",
                max_age=60,
            )
        )


@dataclass
class InferenceServer:
    url: str
    app: FastAPI
    key: bytes
    record: EmbeddingCalls


@pytest.fixture(scope="session")
def inference_harness(test_database: RunDatabase, redis_url: str) -> ServiceHarness:
    return ServiceHarness.migrated(
        "inference",
        InferenceSettings,
        create_inference_app,
        test_database,
        redis_db_url(redis_url, REDIS_DB),
    )


@pytest.fixture(scope="session")
async def inference_server(inference_harness: ServiceHarness) -> AsyncIterator[InferenceServer]:
    """The inference service, served for the whole run (the model loads once)."""
    harness = inference_harness
    app = create_inference_app(harness.settings.model_copy(update={"cache_seconds": 0.0}))
    record = EmbeddingCalls(harness.key())
    async with running(app), LiveServer(CountingApp(app, record), lifespan=False) as server:
        yield InferenceServer(server.url, app, harness.key(), record)


@pytest.fixture(scope="session")
def harness(test_database: RunDatabase, redis_url: str) -> ServiceHarness:
    return ServiceHarness.migrated(
        "embeddings",
        EmbeddingsSettings,
        create_app,
        test_database,
        redis_db_url(redis_url, REDIS_DB),
    )


@dataclass
class Embeddings:
    """The service in-process (its units of work really commit: the background worker and
    concurrent requests need real transactions), and ways to call it as different people."""

    app: FastAPI
    key: bytes
    inference: InferenceServer

    def client(self, identity: Identity) -> httpx.AsyncClient:
        return asgi_client(self.app, identity=identity, key=self.key)

    async def call(
        self, identity: Identity, method: str, path: str, **kwargs: Any
    ) -> httpx.Response:
        async with self.client(identity) as client:
            return await client.request(method, path, **kwargs)

    async def collection(
        self, identity: Identity, name: str = "notes", **body: Any
    ) -> dict[str, Any]:
        response = await self.call(identity, "POST", "/v1/collections",
                                   json={"name": name, "model": MODEL, **body})  # fmt: skip
        assert response.status_code == 201, response.text
        created: dict[str, Any] = response.json()
        return created

    async def upsert(
        self, identity: Identity, collection_id: str, documents: list[dict[str, Any]]
    ) -> dict[str, Any]:
        response = await self.call(identity, "POST", f"/v1/collections/{collection_id}/documents",
                                   json={"documents": documents})  # fmt: skip
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result

    async def query(self, identity: Identity, collection_id: str, **body: Any) -> httpx.Response:
        return await self.call(
            identity, "POST", f"/v1/collections/{collection_id}/query", json=body
        )


MakeEmbeddings = Callable[..., AbstractAsyncContextManager[Embeddings]]


@pytest.fixture
def make_embeddings(harness: ServiceHarness, inference_server: InferenceServer) -> MakeEmbeddings:
    @asynccontextmanager
    async def make(**overrides: Any) -> AsyncIterator[Embeddings]:
        settings = harness.settings.model_copy(
            update={"inference_url": inference_server.url, "worker_poll_seconds": 0.05,
                    "index_idle_seconds": 0.2, **overrides}
        )  # fmt: skip
        app = create_app(settings)
        async with running(app):
            yield Embeddings(app, harness.key(), inference_server)

    return make


@pytest.fixture
async def service(make_embeddings: MakeEmbeddings) -> AsyncIterator[Embeddings]:
    async with make_embeddings() as started:
        yield started


@pytest.fixture
async def app(service: Embeddings) -> FastAPI:
    return service.app
