"""Gateway tests: the real gateway under uvicorn in front of a real upstream service app."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pytest
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel

from common.app import create_service_app
from common.identity import CurrentIdentity
from common.settings import ServiceSettings
from common.testing import LiveServer
from gateway.main import create_app
from gateway.settings import GatewaySettings


class UpstreamSettings(ServiceSettings):
    service_name: ClassVar[str] = "upstream"


class Echo(BaseModel):
    """What the upstream saw."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: str
    identity: dict[str, Any]


@dataclass
class Upstream:
    """Test routes on a service built exactly like ours (signed identity required)."""

    url: str = ""
    release_second_chunk: asyncio.Event = field(default_factory=asyncio.Event)


def upstream_app(state: Upstream) -> Any:
    router = APIRouter()

    async def echo(request: Request, identity: CurrentIdentity) -> Echo:
        return Echo(
            method=request.method,
            path=request.url.path,
            query=request.url.query,
            headers={k.lower(): v for k, v in request.headers.items()},
            body=(await request.body()).decode(),
            identity={"sub": identity.sub, "kind": identity.kind, "iss": identity.iss},
        )

    for method in ("GET", "POST", "DELETE"):
        router.add_api_route("/v1/chat/echo", echo, methods=[method], name=f"echo_{method}")

    @router.get("/v1/chat/stream")
    async def stream(_: CurrentIdentity) -> StreamingResponse:
        async def events() -> AsyncIterator[bytes]:
            yield b"data: first\n\n"
            await state.release_second_chunk.wait()
            yield b"data: second\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    @router.get("/v1/chat/slow")
    async def slow(_: CurrentIdentity) -> dict[str, str]:
        await asyncio.sleep(3)
        return {"status": "late"}

    @router.get("/v1/chat/headers")
    async def headers(_: CurrentIdentity) -> JSONResponse:
        return JSONResponse(
            {"ok": True},
            headers={"Connection": "close, X-Hop", "X-Hop": "1", "X-Kept": "yes"},
        )

    @router.post("/v1/chat/boom")
    async def boom(_: CurrentIdentity) -> None:
        raise RuntimeError("database password is hunter2")

    @asynccontextmanager
    async def lifespan(_: Any) -> AsyncIterator[None]:
        yield

    return create_service_app(
        UpstreamSettings(environment="test"),
        public=router,
        lifespan=lifespan,
        title="Inference",
    )


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    state = Upstream()
    async with LiveServer(upstream_app(state)) as server:
        state.url = server.url
        yield state


def gateway_settings(upstream_url: str, redis_url: str, **overrides: Any) -> GatewaySettings:
    values: dict[str, Any] = {
        "auth_url": upstream_url,
        "inference_url": upstream_url,
        "embeddings_url": upstream_url,
        "telemetry_url": upstream_url,
        "redis_url": redis_url,
        "environment": "test",
    }
    values.update(overrides)
    return GatewaySettings(**values)


@pytest.fixture
async def gateway(upstream: Upstream, redis_url: str) -> AsyncIterator[str]:
    async with LiveServer(create_app(gateway_settings(upstream.url, redis_url))) as server:
        yield server.url
