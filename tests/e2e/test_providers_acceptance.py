"""Issue 19's acceptance through the gateway of `make run`, with the official `openai` SDK:
chat through an `anthropic` credential (plain, streamed, tools) against a local
Anthropic-protocol server; the model catalog; `dimensions`; a member's personal alias;
and what cached prompt tokens cost."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import openai
import pytest

from devkit.fakes.anthropic_server import create_anthropic_app
from devkit.fakes.faults import FaultControl
from devkit.fakes.openai_server import DEFAULT_MODELS, create_openai_app

from .conftest import (
    PROVIDER_KEY,
    FakeOpenAI,
    Member,
    RunningPlatform,
    served_in_thread,
)

ANTHROPIC_KEY = "sk-ant-e2e-provider-secret-0123456789"
CLAUDE = "anthropic/claude-sonnet-4-5-20250929"  # in the fake's list and the catalog
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


@pytest.fixture(scope="module")
def fake_anthropic() -> Iterator[tuple[str, FaultControl]]:
    control = FaultControl()
    app = create_anthropic_app(control, api_key=ANTHROPIC_KEY)
    with served_in_thread(app, "fake Anthropic") as url:
        yield url, control


@pytest.fixture(scope="module")
def second_openai() -> Iterator[tuple[str, FaultControl]]:
    """Another OpenAI-compatible endpoint (a member's local Ollama, say)."""
    control = FaultControl()
    app = create_openai_app(control, api_key="sk-second-endpoint-0123456789")
    with served_in_thread(app, "second OpenAI") as url:
        yield f"{url}/v1", control


@pytest.fixture
def member(platform: RunningPlatform, request: pytest.FixtureRequest) -> Iterator[Member]:
    person = Member(platform, f"{request.node.name[:40]}@providers.example.com")
    yield person
    person.close()


def test_the_openai_sdk_chats_through_an_anthropic_credential(
    member: Member, fake_anthropic: tuple[str, FaultControl]
) -> None:
    url, control = fake_anthropic
    member.credential("anthropic", "claude", url, ANTHROPIC_KEY)
    messages: Any = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "words:7"},
    ]
    plain = member.sdk.chat.completions.create(model=CLAUDE, messages=messages)
    text = plain.choices[0].message.content
    assert text
    assert plain.choices[0].finish_reason == "stop"
    assert plain.usage is not None

    stream = member.sdk.chat.completions.create(
        model=CLAUDE, messages=messages, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    assert chunks[-1].usage is not None  # usage in the last chunk
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens

    tools = member.sdk.chat.completions.create(
        model=CLAUDE,
        messages=[{"role": "user", "content": 'use:get_weather {"city": "Paris"}'}],
        tools=[WEATHER],  # type: ignore[list-item]
    )
    choice = tools.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None
    call = choice.message.tool_calls[0]
    assert call.type == "function"
    assert call.function.name == "get_weather"
    assert call.function.arguments == '{"city":"Paris"}'
    sent = control.requests_to("/v1/messages")[-1]
    assert sent.headers["x-api-key"] == ANTHROPIC_KEY
    assert sent.json["tools"][0]["name"] == "get_weather"  # in Anthropic's own shape
    assert "input_schema" in sent.json["tools"][0]

    streamed, plain_call = member.calls(3)[1:]  # newest first: tools, streamed, plain
    assert (plain_call["stream"], streamed["stream"]) == (False, True)
    for key in ("prompt_tokens", "completion_tokens", "cost_usd", "model"):
        assert plain_call[key] == streamed[key], key
    assert plain_call["cost_usd"] is not None
    assert plain_call["provider"] == "anthropic"


def test_models_list_shows_the_credentials_models_and_retrieve_answers_each(
    member: Member, fake_openai: FakeOpenAI
) -> None:
    member.credential("openai", "mine", fake_openai.url, PROVIDER_KEY)
    listed = [model.id for model in member.sdk.models.list()]
    upstream = [f"openai/{name}" for name in DEFAULT_MODELS]
    assert set(upstream) <= set(listed)
    assert "local/all-MiniLM-L6-v2" in listed
    for name in listed:
        assert member.sdk.models.retrieve(name).id == name
    with pytest.raises(openai.NotFoundError):
        member.sdk.models.retrieve("openai/no-such-model")


def test_embeddings_dimensions_reach_the_upstream(member: Member, fake_openai: FakeOpenAI) -> None:
    member.credential("openai", "mine", fake_openai.url, PROVIDER_KEY)
    result = member.sdk.embeddings.create(
        model="openai/text-embedding-3-small", input="a cat", dimensions=256
    )
    assert len(result.data[0].embedding) == 256
    assert fake_openai.control.requests_to("/v1/embeddings")[-1].json["dimensions"] == 256


def test_a_members_personal_alias_routes_to_their_second_credential(
    platform: RunningPlatform,
    member: Member,
    fake_openai: FakeOpenAI,
    second_openai: tuple[str, FaultControl],
) -> None:
    url, control = second_openai
    member.credential("openai", "openai", fake_openai.url, PROVIDER_KEY)
    second = member.credential("openai", "ollama", url, "sk-second-endpoint-0123456789")
    alias = member.browser.post(
        "/v1/providers/aliases",
        json={
            "alias": "my-llama",
            "targets": [{"model": "openai/llama3", "credential_id": second}],
        },
    )
    assert alias.status_code == 201, alias.text
    assert alias.json()["shared"] is False
    before = len(control.requests_to("/v1/chat/completions"))
    answer = member.sdk.chat.completions.create(
        model="my-llama", messages=[{"role": "user", "content": "hi"}]
    )
    assert answer.choices[0].message.content == "echo: hi"
    reached = control.requests_to("/v1/chat/completions")
    assert len(reached) == before + 1
    assert reached[-1].json["model"] == "llama3"
    assert "my-llama" in [model.id for model in member.sdk.models.list()]

    other = Member(platform, "someone-else@providers.example.com")
    try:
        assert "my-llama" not in [model.id for model in other.sdk.models.list()]
        with pytest.raises(openai.APIStatusError) as refused:
            other.sdk.chat.completions.create(
                model="my-llama", messages=[{"role": "user", "content": "hi"}]
            )
        assert refused.value.status_code in (400, 404)
    finally:
        other.close()


def test_a_thousand_cached_prompt_tokens_cost_the_catalogs_cached_input_price(
    member: Member, fake_anthropic: tuple[str, FaultControl]
) -> None:
    url, _ = fake_anthropic
    member.credential("anthropic", "claude", url, ANTHROPIC_KEY)
    prices = member.browser.get("/v1/providers/prices", params={"provider": "anthropic"})
    assert prices.status_code == 200, prices.text
    price = next(p for p in prices.json()["data"] if p["model"] == CLAUDE)
    assert price["source"] == "catalog"
    context = " ".join(f"fact{i}" for i in range(1000))  # 1,000 tokens to the fake
    messages: Any = [
        {"role": "system",
         "content": [{"type": "text", "text": context, "cache_control": {"type": "ephemeral"}}]},
        {"role": "user", "content": "words:4"},
    ]  # fmt: skip
    member.sdk.chat.completions.create(model=CLAUDE, messages=messages)  # writes the cache
    answer = member.sdk.chat.completions.create(model=CLAUDE, messages=messages)
    assert answer.usage is not None
    assert answer.usage.prompt_tokens_details is not None
    assert answer.usage.prompt_tokens_details.cached_tokens == 1000

    read, written = member.calls(2)
    assert read["cached_prompt_tokens"] == 1000
    fresh = read["prompt_tokens"] - 1000
    expected = (
        Decimal(str(price["input"])) * fresh
        + Decimal(str(price["cached_input"])) * 1000
        + Decimal(str(price["output"])) * read["completion_tokens"]
    ) / 1_000_000
    assert Decimal(read["cost_usd"]) == expected
    # The call that wrote the cache paid the cache-write price for those tokens instead.
    assert (
        Decimal(written["cost_usd"]) - Decimal(read["cost_usd"])
        == ((Decimal(str(price["cache_write"])) - Decimal(str(price["cached_input"]))) * 1000)
        / 1_000_000
    )
