"""The semantic response cache (issue 20): a paraphrase of a cached prompt, in the same
context (model, system prompt, earlier turns, parameters) and owner scope, is answered
from the cache; near-misses, other contexts and other scopes are not; a database that
fails is a miss. Against a local OpenAI-protocol server, with the local embedding model."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from common.db import create_engine, create_sessionmaker
from common.identity import Identity

from .conftest import Inference, Upstream, admin, member

pytestmark = pytest.mark.usefixtures("local_model_libraries")

CHAT = "/v1/chat/completions"
ROUTE = "/v1/chat/completions"  # on the upstream
SYSTEM = {"role": "system", "content": "You answer in one sentence."}


def someone() -> Identity:
    """A user of this test only: semantic entries are committed, and outlive the test."""
    return member(str(uuid.uuid4()))


def semantic(who: Identity, **cache: Any) -> Identity:
    """`who` with a key whose policy turns the semantic cache on."""
    policy = {"cache": {"mode": "semantic", **cache}}
    fields = {name: getattr(who, name) for name in who.__dataclass_fields__}
    return Identity(**{**fields, "kid": f"key-{who.sub[:8]}", "policies": {"key": policy}})


def ask(text: str, *earlier: dict[str, Any], **extra: Any) -> dict[str, Any]:
    messages = [*earlier, {"role": "user", "content": text}]
    return {"model": "openai/gpt-4o-mini", "messages": messages, **extra}


async def call(inference: Inference, who: Identity, body: dict[str, Any]) -> httpx.Response:
    response = await inference.call("POST", CHAT, json=body, identity=who)
    assert response.status_code == 200, response.text
    await inference.app.state.runtime.cache.drain()
    return response


@pytest.fixture
async def user(inference: Inference, openai_upstream: Upstream) -> Identity:
    who = someone()
    await inference.credential(openai_upstream.url, identity=who)
    return semantic(who, threshold=0.8)  # the mechanism; bench/ measures the default


def upstream_calls(upstream: Upstream) -> int:
    return len(upstream.control.requests_to(ROUTE))


async def test_a_paraphrase_hits_and_replays_the_first_answer(
    inference: Inference, openai_upstream: Upstream, user: Identity
) -> None:
    first = await call(inference, user, ask("What is the capital of France?", SYSTEM))
    again = await call(inference, user, ask("what is the capital of france", SYSTEM))
    assert (first.headers["x-cache"], again.headers["x-cache"]) == ("miss", "hit-semantic")
    assert again.json()["choices"] == first.json()["choices"]
    assert upstream_calls(openai_upstream) == 1
    _, hit = await inference.events()
    assert (hit.cache, hit.cost_usd) == ("semantic", "0.000000000")
    assert hit.saved_usd is not None


@pytest.mark.parametrize(
    ("cached", "asked"),
    [
        ("What is the capital of France?", "What is the capital of Spain?"),
        ("Convert 5 miles to kilometres.", "Convert 50 miles to kilometres."),
        ("Which foods contain gluten?", "Which foods do not contain gluten?"),
        (
            "Write an email from a landlord to a tenant.",
            "Write an email from a tenant to a landlord.",
        ),
    ],
    ids=["entity", "number", "negation", "role-swap"],
)
async def test_a_near_miss_is_a_miss(
    inference: Inference, openai_upstream: Upstream, user: Identity, cached: str, asked: str
) -> None:
    await call(inference, user, ask(cached, SYSTEM))
    response = await call(inference, user, ask(asked, SYSTEM))
    assert response.headers["x-cache"] == "miss"
    assert upstream_calls(openai_upstream) == 2


async def test_another_context_or_another_user_never_hits(
    inference: Inference, openai_upstream: Upstream, user: Identity
) -> None:
    await call(inference, user, ask("What is the capital of France?", SYSTEM))
    other_system = {"role": "system", "content": "You answer in French."}
    assert (await call(inference, user, ask("What is the capital of France?", other_system))
            ).headers["x-cache"] == "miss"  # fmt: skip
    capped = await call(inference, user, ask("what is the capital of france", SYSTEM, max_tokens=5))
    assert capped.headers["x-cache"] == "miss"
    stranger = someone()
    await inference.credential(openai_upstream.url, identity=stranger)
    theirs = await call(
        inference, semantic(stranger, threshold=0.8), ask("what is the capital of france", SYSTEM)
    )
    assert theirs.headers["x-cache"] == "miss"


async def test_multi_turn_and_tools_are_exact_only_unless_the_policy_says(
    inference: Inference, openai_upstream: Upstream, user: Identity
) -> None:
    turn = [SYSTEM, {"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi!"}]
    await call(inference, user, ask("What is the capital of France?", *turn))
    paraphrase = await call(inference, user, ask("what is the capital of france", *turn))
    assert paraphrase.headers["x-cache"] == "miss"  # earlier assistant turn: exact only
    exact = await call(inference, user, ask("What is the capital of France?", *turn))
    assert exact.headers["x-cache"] == "hit-exact"

    multi = semantic(user, multi_turn=True, threshold=0.8)
    await call(inference, multi, ask("What is the capital of Italy?", *turn))
    assert (await call(inference, multi, ask("what is the capital of italy", *turn))
            ).headers["x-cache"] == "hit-semantic"  # fmt: skip
    other_turn = [SYSTEM, {"role": "user", "content": "Hello"},
                  {"role": "assistant", "content": "Good morning!"}]  # fmt: skip
    differs = await call(inference, multi, ask("what is the capital of italy", *other_turn))
    assert differs.headers["x-cache"] == "miss"  # any earlier turn differs: never a hit


async def test_a_semantic_hit_replays_as_sse(
    inference: Inference, openai_upstream: Upstream, user: Identity
) -> None:
    plain = await call(inference, user, ask("What is the capital of France?", SYSTEM))
    streamed = await call(inference, user, ask("what is the capital of france", SYSTEM,
                                               stream=True))  # fmt: skip
    assert streamed.headers["x-cache"] == "hit-semantic"
    assert plain.json()["choices"][0]["message"]["content"] in streamed.text
    assert streamed.text.rstrip().endswith("data: [DONE]")


async def test_a_database_that_fails_is_a_miss_never_an_error(
    inference: Inference, openai_upstream: Upstream, user: Identity
) -> None:
    cache = inference.app.state.runtime.cache
    dead = create_engine("postgresql://nobody@127.0.0.1:9/none", application_name="t")
    cache.sessions = create_sessionmaker(dead)
    try:
        first = await call(inference, user, ask("What is the capital of France?", SYSTEM))
        assert first.headers["x-cache"] == "miss"
        again = await call(inference, user, ask("What is the capital of France?", SYSTEM))
        assert again.headers["x-cache"] == "hit-exact"  # Redis still answers
        paraphrase = await call(inference, user, ask("what is the capital of france", SYSTEM))
        assert paraphrase.headers["x-cache"] == "miss"
    finally:
        await dead.dispose()


async def test_delete_cache_forgets_semantic_entries_too(
    inference: Inference, openai_upstream: Upstream, user: Identity
) -> None:
    await call(inference, user, ask("What is the capital of France?", SYSTEM))
    cleared = await inference.call("DELETE", "/v1/cache", identity=user)
    assert cleared.status_code == 200, cleared.text
    assert cleared.json()["entries"] == 2  # the exact entry and the semantic one
    assert (await call(inference, user, ask("what is the capital of france", SYSTEM))
            ).headers["x-cache"] == "miss"  # fmt: skip
    assert admin().has("providers:manage_shared")


async def test_at_the_default_threshold_a_close_paraphrase_hits(
    inference: Inference, openai_upstream: Upstream
) -> None:
    """bench/data's pair 41, at INFERENCE_CACHE_SEMANTIC_THRESHOLD's default (0.94)."""
    who = someone()
    await inference.credential(openai_upstream.url, identity=who)
    user = semantic(who)
    await call(inference, user, ask("What is the chemical symbol for gold?"))
    paraphrase = await call(inference, user, ask("what is gold's chemical symbol?"))
    assert paraphrase.headers["x-cache"] == "hit-semantic"
