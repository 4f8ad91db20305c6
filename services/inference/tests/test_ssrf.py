"""A member's base_url cannot make inference call what the egress policy refuses (issue 16,
item 1): refused at creation when it is an address, at call time when a host name resolves
to one, never through a redirect; and an answer that is not a provider's error is never
echoed. In every case nothing reaches the refused target."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from devkit.fakes.hf_server import DEFAULT_MODEL_ID
from devkit.testing import LiveServer
from inference.models import ProviderCredential

from .conftest import HF_TOKEN, Inference, MakeInference, Upstream, member

SECRET = "SECRET-internal-banner-7f3a"  # what an internal service would give away
CHAT = "/v1/chat/completions"
POLICY = "urn:llm-platform:problem:egress-refused"
REDIRECT = "urn:llm-platform:problem:provider-redirect"


def ask(provider: str, **extra: Any) -> dict[str, Any]:
    model = f"huggingface/{DEFAULT_MODEL_ID}" if provider == "huggingface" else "openai/gpt-4o"
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}


async def create(inference: Inference, base_url: str, provider: str = "openai") -> httpx.Response:
    return await inference.call(
        "POST",
        "/v1/providers/credentials",
        json={"provider": provider, "name": f"n-{uuid.uuid4().hex[:8]}", "api_key": "sk-x" * 4,
              "base_url": base_url},
    )  # fmt: skip


def assert_names_the_policy(response: httpx.Response, status: int, type_: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["type"] == type_
    assert "egress policy" in body["detail"]
    assert SECRET not in response.text
    return body


@dataclass
class Target:
    """A local server that is not a provider: it redirects, or answers `status` with a
    body that must never reach the member. `hits`: the requests it got."""

    url: str
    hits: list[str] = field(default_factory=list)


def target_app(hits: list[str], answer: Response) -> Starlette:
    async def anything(request: Request) -> Response:
        hits.append(request.url.path)
        return answer

    return Starlette(routes=[Route("/{path:path}", anything, methods=["GET", "POST"])])


@asynccontextmanager
async def serve(answer: Response) -> AsyncIterator[Target]:
    hits: list[str] = []
    async with LiveServer(target_app(hits, answer)) as server:
        yield Target(server.url, hits)


# ---------------------------------------------------------------- at creation


@pytest.mark.parametrize(
    "base_url",
    [
        "http://169.254.169.254/",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::ffff:169.254.169.254]/v1",
        "http://10.0.0.5:8080/v1",
        "http://192.168.1.10/v1",
        "http://[fd00::1]/v1",
        "http://0.0.0.0:8080/v1",
    ],
)
@pytest.mark.parametrize("provider", ["openai", "huggingface"])
async def test_a_credential_at_a_refused_address_is_a_422_at_creation(
    inference: Inference, base_url: str, provider: str
) -> None:
    response = await create(inference, base_url, provider)
    body = assert_names_the_policy(response, 422, POLICY)
    assert body["field"] == "base_url"
    assert "INFERENCE_ALLOWED_PRIVATE_NETWORKS" in body["detail"]
    assert (await inference.call("GET", "/v1/providers/credentials")).json() == []


async def test_the_platforms_own_endpoints_are_refused_even_on_an_allowed_loopback(
    inference: Inference, redis_url: str
) -> None:
    redis_port = httpx.URL(redis_url).port
    own = inference.app.state.settings.port
    for base_url in (f"http://127.0.0.1:{own}/v1", f"http://127.0.0.1:{redis_port}",
                     f"http://[::1]:{own}", f"http://2130706433:{own}/"):  # fmt: skip
        body = assert_names_the_policy(await create(inference, base_url), 422, POLICY)
        assert "the platform's own services" in body["detail"], base_url
    assert (await inference.call("GET", "/v1/providers/credentials")).json() == []


# ---------------------------------------------------------------- at call time


@pytest.mark.parametrize(
    ("provider", "stream"), [("openai", False), ("openai", True), ("huggingface", False)]
)
async def test_a_host_name_that_resolves_to_a_refused_address_is_refused_at_call_time(
    make_inference: MakeInference,
    openai_upstream: Upstream,
    hf_upstream: Upstream,
    provider: str,
    stream: bool,
) -> None:
    upstream = hf_upstream if provider == "huggingface" else openai_upstream
    # localhost is loopback, which this deployment does not allow.
    async with make_inference(allowed_private_networks=[]) as inference:
        named = upstream.url.replace("127.0.0.1", "localhost")
        created = await create(inference, named, provider)
        assert created.status_code == 201, created.text  # a name is judged when resolved
        response = await inference.call(
            "POST", "/v1/chat/completions", json=ask(provider, stream=stream)
        )
        body = assert_names_the_policy(response, 422, POLICY)
        assert "localhost (port" in body["detail"]
        assert "loopback" in body["detail"]
        assert "INFERENCE_ALLOWED_PRIVATE_NETWORKS" in body["detail"]
        assert body["attempts"] == 1  # refused, not retried
        (event,) = await inference.events()
        assert (event.status, event.error_type) == ("error", "egress_refused")
    assert upstream.control.requests == []


async def test_embeddings_through_a_refused_host_name_are_refused_too(
    make_inference: MakeInference, openai_upstream: Upstream, hf_upstream: Upstream
) -> None:
    async with make_inference(allowed_private_networks=[]) as inference:
        for upstream, provider, model in (
            (openai_upstream, "openai", "openai/text-embedding-3-small"),
            (hf_upstream, "huggingface", f"huggingface/{DEFAULT_MODEL_ID}"),
        ):
            await create(inference, upstream.url.replace("127.0.0.1", "localhost"), provider)
            response = await inference.call(
                "POST", "/v1/embeddings", json={"model": model, "input": ["a"]}
            )
            assert_names_the_policy(response, 422, POLICY)
    assert openai_upstream.control.requests == []
    assert hf_upstream.control.requests == []


async def test_a_credential_stored_before_the_policy_is_refused_at_call_time(
    make_inference: MakeInference, openai_upstream: Upstream
) -> None:
    async with make_inference(allowed_private_networks=[]) as inference:
        runtime = inference.app.state.runtime
        row = ProviderCredential(
            owner_id=uuid.UUID(member().user_id or ""), provider="openai", name="old",
            base_url=openai_upstream.url, key_hint="abcd", key_ciphertext=b"",
            key_id=runtime.keyring.primary,
        )  # fmt: skip
        row.key_ciphertext = runtime.keyring.encrypt("sk-old", row_id=str(row.id))
        async with inference.app.state.sessionmaker() as db:
            db.add(row)
            await db.commit()
        response = await inference.call("POST", CHAT, json=ask("openai"))
        body = assert_names_the_policy(response, 422, POLICY)
        assert body["detail"].startswith("openai/gpt-4o: 127.0.0.1 (port ")
    assert openai_upstream.control.requests == []


async def test_a_configured_endpoint_is_refused_behind_any_name(
    make_inference: MakeInference, openai_upstream: Upstream
) -> None:
    port = httpx.URL(openai_upstream.url).port
    async with make_inference(refused_endpoints=[f"127.0.0.1:{port}"]) as inference:
        assert (await create(inference, openai_upstream.url)).status_code == 422
        created = await create(inference, openai_upstream.url.replace("127.0.0.1", "localhost"))
        assert created.status_code == 201
        response = await inference.call("POST", CHAT, json=ask("openai"))
        body = assert_names_the_policy(response, 422, POLICY)
        assert "the platform's own services" in body["detail"]
    assert openai_upstream.control.requests == []


# ---------------------------------------------------------------- redirects


@pytest.mark.parametrize(
    ("provider", "stream"), [("openai", False), ("openai", True), ("huggingface", False)]
)
@pytest.mark.parametrize("to", ["metadata", "allowed"])
async def test_a_redirect_is_never_followed(
    inference: Inference,
    openai_upstream: Upstream,
    provider: str,
    stream: bool,
    to: str,
) -> None:
    # To the metadata service, and to an address the policy allows (the fake, which
    # records what reaches it): followed, either would be a way around the policy.
    location = (
        "http://169.254.169.254/latest/meta-data/iam/"
        if to == "metadata"
        else f"{openai_upstream.url}/chat/completions"
    )
    answer = Response(SECRET, status_code=307, headers={"Location": location, "X-Banner": SECRET})
    async with serve(answer) as redirector:
        await create(inference, f"{redirector.url}/v1", provider)
        response = await inference.call(
            "POST", "/v1/chat/completions", json=ask(provider, stream=stream)
        )
        body = assert_names_the_policy(response, 502, REDIRECT)
        assert "never follows redirects" in body["detail"]
        assert "169.254" not in body["detail"]
        assert len(redirector.hits) == 1  # not retried either
    assert openai_upstream.control.requests == []


# ---------------------------------------------------------------- error details


@pytest.mark.parametrize("provider", ["openai", "huggingface"])
@pytest.mark.parametrize(
    "answer",
    [
        PlainTextResponse(f"{SECRET}: redis 7.2 protected mode", status_code=404),
        PlainTextResponse(f"<html>{SECRET}</html>", status_code=500, media_type="text/html"),
        JSONResponse({"message": SECRET, "status": "forbidden"}, status_code=403),
        JSONResponse({"detail": SECRET}, status_code=422),
    ],
    ids=["text-404", "html-500", "json-403", "json-422"],
)
async def test_an_answer_that_is_not_a_providers_error_is_never_echoed(
    inference: Inference, provider: str, answer: Response
) -> None:
    async with serve(answer) as server:
        await create(inference, f"{server.url}/v1", provider)
        response = await inference.call("POST", CHAT, json=ask(provider))
        assert response.headers["content-type"] == "application/problem+json"
        assert response.status_code in (400, 502), response.text
        assert SECRET not in response.text
        assert "not in an API's error format" in response.json()["detail"]


@pytest.mark.parametrize("provider", ["openai", "huggingface"])
async def test_a_providers_own_error_message_still_reaches_the_member(
    inference: Inference, openai_upstream: Upstream, hf_upstream: Upstream, provider: str
) -> None:
    upstream = hf_upstream if provider == "huggingface" else openai_upstream
    key = HF_TOKEN if provider == "huggingface" else None
    await inference.credential(upstream.url, provider=provider, **({"api_key": key} if key else {}))
    upstream.control.fail("*", status=400, message="temperature must be at most 2")
    response = await inference.call("POST", CHAT, json=ask(provider))
    assert response.status_code == 400, response.text
    assert "temperature must be at most 2" in response.json()["detail"]
