"""The azure provider (Azure OpenAI), called through the inference app with the official
openai client, against a local server that checks what Azure checks: the deployment in the
path, the api-version query parameter and the api-key header."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from devkit.fakes.azure_server import create_azure_app
from devkit.fakes.faults import FaultControl
from devkit.testing import LiveServer

from .conftest import Inference, Upstream, admin, member

AZURE_KEY = "azure-key-0123456789abcdef0123456789"
API_VERSION = "2024-10-21"
CHAT_ROUTE = "/openai/deployments/chat-prod/chat/completions"
EMBED_ROUTE = "/openai/deployments/embed-prod/embeddings"
CREDENTIALS = "/v1/providers/credentials"


@pytest.fixture
async def azure_upstream() -> AsyncIterator[Upstream]:
    control = FaultControl()
    async with LiveServer(create_azure_app(control, api_key=AZURE_KEY)) as server:
        yield Upstream(server.url, control)  # the resource endpoint


def azure_credential(base_url: str | None, **extra: Any) -> dict[str, Any]:
    body = {"provider": "azure", "name": "azure-east", "api_key": AZURE_KEY, **extra}
    if base_url is not None:
        body["base_url"] = base_url
    return body


async def add_azure(inference: Inference, upstream: Upstream, **extra: Any) -> dict[str, Any]:
    body = azure_credential(upstream.url, api_version=API_VERSION, **extra)
    who = admin() if extra.get("shared") else member()
    response = await inference.call("POST", CREDENTIALS, json=body, identity=who)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def test_chat_reaches_the_deployment_with_the_api_version_and_the_api_key(
    inference: Inference, azure_upstream: Upstream
) -> None:
    created = await add_azure(inference, azure_upstream)
    assert created["api_version"] == API_VERSION
    async with inference.sdk(member()) as sdk:
        answer = await sdk.chat.completions.create(
            model="azure/chat-prod", messages=[{"role": "user", "content": "hello azure"}]
        )
    assert answer.model == "azure/chat-prod"
    assert answer.choices[0].message.content == "echo: hello azure"
    assert answer.model_extra is not None
    assert answer.model_extra["prompt_filter_results"]  # Azure's own fields pass through
    assert answer.usage is not None
    assert answer.usage.completion_tokens == 3
    (sent,) = azure_upstream.control.requests
    assert (sent.method, sent.route) == ("POST", CHAT_ROUTE)
    assert sent.query == {"api-version": API_VERSION}
    assert sent.headers["api-key"] == AZURE_KEY
    assert "authorization" not in sent.headers
    (event,) = await inference.events()
    assert (event.provider, event.model, event.status) == ("azure", "azure/chat-prod", "ok")
    assert (event.prompt_tokens, event.completion_tokens) == (2, 3)


async def test_a_streamed_chat_ends_with_the_usage_and_records_the_same_tokens(
    inference: Inference, azure_upstream: Upstream
) -> None:
    await add_azure(inference, azure_upstream)
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "words:7"}]
    async with inference.sdk(member()) as sdk:
        plain = await sdk.chat.completions.create(model="azure/chat-prod", messages=messages)
        stream = await sdk.chat.completions.create(
            model="azure/chat-prod",
            messages=messages,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    assert chunks[0].choices == []  # Azure's prompt filter event, passed through
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 7
    streamed = azure_upstream.control.requests[1]
    assert streamed.route == CHAT_ROUTE
    assert streamed.json["stream_options"] == {"include_usage": True}
    first, second = await inference.events()
    assert (first.stream, second.stream) == (False, True)
    assert (first.prompt_tokens, first.completion_tokens) == (
        second.prompt_tokens,
        second.completion_tokens,
    )
    assert not second.usage_estimated


async def test_embeddings_reach_the_deployment_with_their_dimensions(
    inference: Inference, azure_upstream: Upstream
) -> None:
    await add_azure(inference, azure_upstream)
    async with inference.sdk(member()) as sdk:
        answer = await sdk.embeddings.create(
            model="azure/embed-prod", input=["one", "two"], dimensions=256
        )
    assert [len(item.embedding) for item in answer.data] == [256, 256]
    (sent,) = azure_upstream.control.requests_to(EMBED_ROUTE)
    assert sent.json["dimensions"] == 256
    assert sent.query == {"api-version": API_VERSION}
    assert sent.headers["api-key"] == AZURE_KEY


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(azure_credential("http://127.0.0.1:9"), id="no-api-version"),
        pytest.param(azure_credential(None, api_version=API_VERSION), id="no-base-url"),
        pytest.param(
            azure_credential("http://127.0.0.1:9", api_version="2024-10"), id="bad-api-version"
        ),
        pytest.param(
            azure_credential("http://127.0.0.1:9", api_version="2024-10-21" + "x" * 40),
            id="long-api-version",
        ),
        pytest.param(
            {
                **azure_credential("http://127.0.0.1:9", api_version="2024-10-21"),
                "provider": "openai",
            },
            id="api-version-on-openai",
        ),
    ],
)
async def test_an_incomplete_azure_credential_is_a_422_and_stores_nothing(
    inference: Inference, body: dict[str, Any]
) -> None:
    response = await inference.call("POST", CREDENTIALS, json=body)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    named = {"base_url", "api_version"} - body.keys() or {"api_version"}
    assert all(name in str(response.json()["errors"]) for name in named)
    assert (await inference.call("GET", CREDENTIALS)).json() == []


async def test_an_azure_endpoint_goes_through_the_egress_policy(inference: Inference) -> None:
    body = azure_credential("http://169.254.169.254", api_version=API_VERSION)
    response = await inference.call("POST", CREDENTIALS, json=body)
    assert response.status_code == 422
    assert response.json()["type"].endswith(":egress-refused")
    assert (await inference.call("GET", CREDENTIALS)).json() == []


@pytest.mark.parametrize(
    "inject",
    [
        pytest.param(lambda c: c.fail(CHAT_ROUTE, status=429, retry_after=0.05), id="429"),
        pytest.param(lambda c: c.fail(CHAT_ROUTE, status=503), id="503"),
        pytest.param(lambda c: c.cut_stream(CHAT_ROUTE, after_chunks=1), id="cut-body"),
    ],
)
async def test_a_transient_azure_fault_is_retried_away(
    inference: Inference, azure_upstream: Upstream, inject: Any
) -> None:
    await add_azure(inference, azure_upstream)
    inject(azure_upstream.control)
    async with inference.sdk(member()) as sdk:
        answer = await sdk.chat.completions.create(
            model="azure/chat-prod", messages=[{"role": "user", "content": "again"}]
        )
    assert answer.choices[0].message.content == "echo: again"
    assert len(azure_upstream.control.requests_to(CHAT_ROUTE)) == 2
    (event,) = await inference.events()
    assert (event.status, event.attempts) == ("ok", 2)


async def test_an_unknown_deployment_is_the_same_problem_as_another_providers_404(
    inference: Inference, azure_upstream: Upstream, openai_upstream: Upstream
) -> None:
    await add_azure(inference, azure_upstream)
    await inference.credential(openai_upstream.url)
    openai_upstream.control.fail("/v1/chat/completions", status=404, message="No such model.")
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]
    async with inference.sdk(member()) as sdk:
        with pytest.raises(openai.BadRequestError) as azure_error:
            await sdk.chat.completions.create(model="azure/nowhere", messages=messages)
        with pytest.raises(openai.BadRequestError) as openai_error:
            await sdk.chat.completions.create(model="openai/gpt-4o-mini", messages=messages)
    azure_problem, openai_problem = azure_error.value.body, openai_error.value.body
    assert isinstance(azure_problem, dict)
    assert isinstance(openai_problem, dict)
    assert azure_problem["type"] == openai_problem["type"]
    assert azure_problem["type"].endswith(":provider-rejected")
    assert azure_problem.keys() == openai_problem.keys()
    assert "API deployment for this resource does not exist" in azure_problem["detail"]
    (sent,) = azure_upstream.control.requests  # a 404 is not retried
    assert sent.route == "/openai/deployments/nowhere/chat/completions"


async def test_an_alias_falls_back_from_a_failing_azure_deployment_to_openai(
    inference: Inference, azure_upstream: Upstream, openai_upstream: Upstream
) -> None:
    azure = await add_azure(inference, azure_upstream, shared=True)
    backup = await inference.credential(openai_upstream.url, shared=True, name="backup")
    alias = await inference.call(
        "POST",
        "/v1/providers/aliases",
        identity=admin(),
        json={
            "alias": "team-chat",
            "shared": True,
            "targets": [
                {"model": "azure/chat-prod", "credential_id": azure["id"]},
                {"model": "openai/gpt-4o-mini", "credential_id": backup["id"]},
            ],
        },
    )
    assert alias.status_code == 201, alias.text
    azure_upstream.control.fail(CHAT_ROUTE, status=503, times=10)
    async with inference.sdk(member()) as sdk:
        answer = await sdk.chat.completions.create(
            model="team-chat", messages=[{"role": "user", "content": "hi"}]
        )
    assert answer.choices[0].message.content == "echo: hi"
    assert azure_upstream.control.requests_to(CHAT_ROUTE)
    (event,) = await inference.events()
    assert (event.model, event.fallback) == ("openai/gpt-4o-mini", True)


async def test_a_name_no_deployment_can_have_is_refused_without_a_call(
    inference: Inference, azure_upstream: Upstream
) -> None:
    await add_azure(inference, azure_upstream)
    for model in ("azure/../../v1/chat", "azure/a?b=c", "azure/" + "d" * 65):
        response = await inference.call(
            "POST",
            "/v1/chat/completions",
            json={"model": model, "messages": [{"role": "user", "content": "hi"}]},
        )
        assert response.status_code == 400, model
        assert response.json()["type"].endswith(":provider-rejected")
    assert azure_upstream.control.requests == []


async def test_a_wrong_azure_key_is_a_502_that_says_so(
    inference: Inference, azure_upstream: Upstream
) -> None:
    await add_azure(inference, azure_upstream, api_key="not-the-key-0000")
    response = await inference.call(
        "POST",
        "/v1/chat/completions",
        json={"model": "azure/chat-prod", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert response.status_code == 502
    assert response.json()["type"].endswith(":provider-auth")
    assert "Access denied" in response.json()["detail"]
    assert len(azure_upstream.control.requests) == 1


async def test_an_azure_credential_lists_no_models_and_asks_nothing(
    inference: Inference, azure_upstream: Upstream
) -> None:
    await add_azure(inference, azure_upstream)
    async with inference.sdk(member()) as sdk:
        listed = [model.id async for model in sdk.models.list()]
    assert not [name for name in listed if name.startswith("azure/")]
    assert azure_upstream.control.requests == []


async def test_the_fake_refuses_what_azure_refuses(azure_upstream: Upstream) -> None:
    """The fake is faithful: no api-version is a 400, a bearer token instead of the api-key
    header a 401, in Azure's error shape."""
    import httpx

    async with httpx.AsyncClient(base_url=azure_upstream.url) as client:
        body = {"messages": [{"role": "user", "content": "hi"}]}
        versionless = await client.post(CHAT_ROUTE, json=body, headers={"api-key": AZURE_KEY})
        bearer = await client.post(
            CHAT_ROUTE,
            json=body,
            params={"api-version": API_VERSION},
            headers={"authorization": f"Bearer {AZURE_KEY}"},
        )
    assert versionless.status_code == 400
    assert versionless.json()["error"]["code"] == "MissingApiVersionParameter"
    assert bearer.status_code == 401
    assert bearer.json()["error"]["code"] == "401"
