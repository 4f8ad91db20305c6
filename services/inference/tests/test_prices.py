"""Prices (issue 19): the catalog, INFERENCE_PRICES, the admins' prices at runtime
(GET/PUT/DELETE /v1/providers/prices, audited), and costs that bill cached and reasoning
tokens at their own prices, against a local OpenAI-protocol server."""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from inference.main import read_prices
from inference.pricing import CATALOG, Price

from .conftest import Inference, MakeInference, Upstream, admin, member, per_million

CHAT = "/v1/chat/completions"
PRICES = "/v1/providers/prices"


def fresh_model(prefix: str = "gpt-test") -> str:
    """A model name no other test prices (the price table outlives each test)."""
    return f"openai/{prefix}-{uuid.uuid4().hex[:10]}"


async def chat(inference: Inference, model: str, text: str) -> dict[str, Any]:
    response = await inference.call(
        "POST", CHAT, json={"model": model, "messages": [{"role": "user", "content": text}]}
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def put(inference: Inference, model: str, price: Any, **kw: Any) -> httpx.Response:
    return await inference.call(
        "PUT", f"{PRICES}/{model}", json=price, identity=kw.pop("identity", admin()), **kw
    )


# ---------------------------------------------------------------- the catalog


async def test_the_catalog_is_listed_with_the_date_it_was_checked(inference: Inference) -> None:
    response = await inference.call("GET", PRICES, identity=member())
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["catalog_checked"] == CATALOG.checked.isoformat()
    prices = {p["model"]: p for p in body["data"]}
    assert prices["openai/gpt-4o"] | {"updated_at": None} == {
        "model": "openai/gpt-4o", "source": "catalog", "input": 2.5, "cached_input": 1.25,
        "output": 10.0, "cache_write": None, "reasoning": None, "updated_at": None,
        "updated_by": None,
    }  # fmt: skip
    for provider in ("openai", "anthropic", "azure", "huggingface"):
        chat_models = [m for m in prices if m.startswith(f"{provider}/")]
        assert len(chat_models) >= 5, provider
    assert prices["anthropic/claude-sonnet-4-5"]["cache_write"] == 3.75
    only = (await inference.call("GET", PRICES, params={"provider": "azure"})).json()["data"]
    assert only
    assert all(p["model"].startswith("azure/") for p in only)


# ---------------------------------------------------------------- cached and reasoning tokens


async def test_cached_prompt_tokens_cost_the_cached_input_price(
    inference: Inference, openai_upstream: Upstream
) -> None:
    """OpenAI caches a prompt of 1,024 tokens or more; a repeat reads 1,024 + k x 128 of
    them from the cache, billed at the catalog's cached-input price."""
    await inference.credential(openai_upstream.url)
    model, price = "openai/gpt-4o-mini", CATALOG.models["openai/gpt-4o-mini"]
    prompt = " ".join(f"w{i}" for i in range(1200))
    first = await chat(inference, model, prompt)
    second = await chat(inference, model, prompt)
    assert first["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    assert second["usage"]["prompt_tokens_details"]["cached_tokens"] == 1152
    a, b = await inference.events()
    assert a.prompt_tokens == b.prompt_tokens == 1200
    assert (a.cached_prompt_tokens, b.cached_prompt_tokens) == (0, 1152)  # for telemetry
    completion = b.completion_tokens or 0
    assert price.cached_input == 0.075
    assert a.cost_usd == per_million(1200 * price.input + completion * price.output)
    assert b.cost_usd == per_million(
        48 * price.input + 1152 * price.cached_input + completion * price.output
    )


async def test_reasoning_tokens_are_output_unless_priced_apart(
    inference: Inference, openai_upstream: Upstream
) -> None:
    await inference.credential(openai_upstream.url)
    body = await chat(inference, "openai/o4-mini", "words:5")
    assert body["usage"]["completion_tokens_details"]["reasoning_tokens"] == 5
    assert body["usage"]["completion_tokens"] == 10
    (event,) = await inference.events()
    assert (event.completion_tokens, event.reasoning_tokens) == (10, 5)
    price = CATALOG.models["openai/o4-mini"]
    assert event.cost_usd == per_million(event.prompt_tokens * price.input + 10 * price.output)

    model = fresh_model("o3")  # a reasoning model, as the fake knows them
    assert (await put(inference, model, {"input": 1, "output": 10, "reasoning": 100})).is_success
    await chat(inference, model, "words:5")
    _, priced = await inference.events()
    assert priced.cost_usd == per_million(priced.prompt_tokens * 1 + 5 * 10 + 5 * 100)


# ---------------------------------------------------------------- the admins' prices


async def test_an_admins_price_wins_is_audited_and_its_removal_restores_the_settings(
    make_inference: MakeInference, openai_upstream: Upstream
) -> None:
    model = fresh_model()
    async with make_inference(prices={model: Price(input=1, output=2)}) as inference:
        await inference.credential(openai_upstream.url)
        listed = {p["model"]: p for p in (await inference.call("GET", PRICES)).json()["data"]}
        assert listed[model]["source"] == "settings"

        response = await put(inference, model, {"input": 10, "output": 20, "cached_input": 5})
        assert response.status_code == 200, response.text
        assert response.json()["source"] == "admin"
        assert response.json()["updated_by"] == admin().user_id
        await chat(inference, model, "words:3")

        assert (
            await inference.call("DELETE", f"{PRICES}/{model}", identity=admin())
        ).status_code == 204
        await chat(inference, model, "words:3")
        by_admin, by_settings = await inference.events()
        prompt = by_admin.prompt_tokens or 0
        assert by_admin.cost_usd == per_million(prompt * 10 + 3 * 20)
        assert by_settings.cost_usd == per_million(prompt * 1 + 3 * 2)

        changes = await inference.call(
            "GET", f"{PRICES}/changes", params={"model": model}, identity=admin()
        )
        assert changes.status_code == 200, changes.text
        deleted, made = changes.json()["data"]
        assert (made["action"], made["before"], made["actor_id"]) == ("set", None, admin().user_id)
        assert made["after"] | {"reasoning": None} == {
            "input": 10, "output": 20, "cached_input": 5, "cache_write": None, "reasoning": None
        }  # fmt: skip
        assert (deleted["action"], deleted["before"]["input"], deleted["after"]) == (
            "delete",
            10,
            None,
        )
        again = await inference.call("DELETE", f"{PRICES}/{model}", identity=admin())
        assert again.status_code == 404
        assert again.json()["type"].endswith(":price-not-found")


async def test_a_price_set_on_one_replica_is_used_by_another_once_it_reads_the_table(
    make_inference: MakeInference, openai_upstream: Upstream
) -> None:
    model = fresh_model()
    async with make_inference() as one, make_inference() as other:
        await other.credential(openai_upstream.url)
        await chat(other, model, "words:2")
        assert (await put(one, model, {"input": 4, "output": 8})).is_success
        # Its loop's step. Each test app's writes are rolled back after it and seen by no
        # other app: the other replica reads the table through the first one's connection.
        await read_prices(other.app.state.runtime, one.app.state.sessionmaker)
        await chat(other, model, "words:2")
        unpriced, priced = await other.events()
        assert unpriced.cost_usd is None
        assert priced.cost_usd == per_million((priced.prompt_tokens or 0) * 4 + 2 * 8)


async def test_only_admins_change_prices_and_bad_prices_change_nothing(
    inference: Inference,
) -> None:
    model = fresh_model()
    refused = await put(inference, model, {"input": 1, "output": 1}, identity=member())
    assert refused.status_code == 403
    changes = await inference.call("GET", f"{PRICES}/changes", identity=member())
    assert changes.status_code == 403
    for bad in (
        {"input": -1, "output": 1},
        {"input": 1},
        {"input": 1, "output": 1, "surprise": 2},
        {"input": "NaN", "output": 1},
        {"input": 1e9, "output": 1},
        [],
    ):
        response = await put(inference, model, bad)
        assert 400 <= response.status_code < 500, (bad, response.text)
        assert response.headers["content-type"] == "application/problem+json"
    for name in ("gpt-4o", "nope/gpt-4o", "openai/bad%01name", "openai/nul%00"):
        response = await put(inference, name, {"input": 1, "output": 1})
        assert response.status_code in (404, 422), (name, response.text)
    listed = (await inference.call("GET", PRICES)).json()["data"]
    assert model not in {p["model"] for p in listed}


async def test_the_number_of_admins_prices_is_bounded(make_inference: MakeInference) -> None:
    async with make_inference() as probe:
        listed = (await probe.call("GET", PRICES)).json()["data"]
    existing = sum(p["source"] == "admin" for p in listed)
    async with make_inference(max_prices=existing + 1) as inference:
        kept = fresh_model()
        assert (await put(inference, kept, {"input": 1, "output": 1})).is_success
        assert (await put(inference, kept, {"input": 2, "output": 2})).is_success  # a change
        response = await put(inference, fresh_model(), {"input": 1, "output": 1})
        assert response.status_code == 409
        assert response.json()["type"].endswith(":too-many-prices")
        assert (await inference.call("DELETE", f"{PRICES}/{kept}", identity=admin())).is_success
