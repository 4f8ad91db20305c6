"""The exact response cache (issue 20) against a local OpenAI-protocol server: opt-in per
request and per alias, one upstream call for two identical requests, replays plain and
as SSE, never across owner scopes, Cache-Control, bounds, invalidation, and a cache that
fails being a miss, never an error."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest
from redis.asyncio import Redis

from common.identity import Identity
from inference.cache import CacheStore
from inference.repository import ResponseCache

from .conftest import Inference, MakeInference, Upstream, admin, member

CHAT = "/v1/chat/completions"
ROUTE = "/v1/chat/completions"  # on the upstream
EXACT = {"mode": "exact"}
ALICE = member("00000000-0000-0000-0000-0000000000a1")
BOB = member("00000000-0000-0000-0000-0000000000b0")


def ask(text: str = "words:6", **extra: Any) -> dict[str, Any]:
    return {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": text}],
            **extra}  # fmt: skip


async def call(
    inference: Inference, body: dict[str, Any], identity: Identity = ALICE, **kw: Any
) -> httpx.Response:
    response = await inference.call("POST", CHAT, json=body, identity=identity, **kw)
    assert response.status_code == 200, response.text
    await inference.app.state.runtime.cache.drain()  # the write, off the request path
    return response


def upstream_calls(upstream: Upstream) -> int:
    return len(upstream.control.requests_to(ROUTE))


def sse_chunks(text: str) -> list[dict[str, Any]]:
    return [json.loads(line[6:]) for line in text.splitlines()
            if line.startswith("data: ") and line != "data: [DONE]"]  # fmt: skip


@pytest.fixture
async def openai_for_both(inference: Inference, openai_upstream: Upstream) -> Upstream:
    for who in (ALICE, BOB):
        await inference.credential(openai_upstream.url, identity=who)
    return openai_upstream


async def test_the_same_request_twice_is_one_upstream_call_and_the_same_answer(
    inference: Inference, openai_for_both: Upstream
) -> None:
    first = await call(inference, ask(cache=EXACT))
    second = await call(inference, ask(cache=EXACT))
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("miss", "hit-exact")
    assert upstream_calls(openai_for_both) == 1
    assert "cache" not in openai_for_both.control.requests_to(ROUTE)[0].json  # ours only
    assert second.json()["choices"] == first.json()["choices"]
    assert second.json()["usage"] == first.json()["usage"]
    assert second.json()["model"] == "openai/gpt-4o-mini"

    made, replayed = await inference.events()
    assert (made.cache, replayed.cache) == (None, "exact")
    assert replayed.cost_usd == "0.000000000"
    assert replayed.saved_usd == made.cost_usd is not None
    assert (replayed.prompt_tokens, replayed.completion_tokens, replayed.attempts) == (0, 0, 0)
    assert replayed.model == made.model == "openai/gpt-4o-mini"


async def test_a_hit_replays_as_sse_that_the_openai_sdk_reads(
    inference: Inference, openai_for_both: Upstream
) -> None:
    plain = await call(inference, ask(cache=EXACT))
    async with inference.sdk(ALICE) as sdk:
        stream = await sdk.chat.completions.create(
            model="openai/gpt-4o-mini", messages=[{"role": "user", "content": "words:6"}],
            stream=True, stream_options={"include_usage": True}, extra_body={"cache": EXACT},
        )  # fmt: skip
        chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.json()["choices"][0]["message"]["content"]
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == plain.json()["usage"]["completion_tokens"]
    assert upstream_calls(openai_for_both) == 1


async def test_a_streamed_answer_is_stored_and_replayed_to_a_plain_request(
    inference: Inference, openai_for_both: Upstream
) -> None:
    streamed = await call(inference, ask(stream=True, cache=EXACT))
    assert streamed.headers["x-cache"] == "miss"
    text = "".join(c["choices"][0]["delta"].get("content") or ""
                   for c in sse_chunks(streamed.text) if c["choices"])  # fmt: skip
    plain = await call(inference, ask(cache=EXACT))
    assert plain.headers["x-cache"] == "hit-exact"
    assert plain.json()["choices"][0]["message"]["content"] == text
    assert plain.json()["choices"][0]["finish_reason"] == "stop"
    assert plain.json()["usage"]["completion_tokens"] == 6
    assert upstream_calls(openai_for_both) == 1


async def test_two_users_never_share_an_entry(
    inference: Inference, openai_for_both: Upstream
) -> None:
    await call(inference, ask(cache=EXACT), ALICE)
    other = await call(inference, ask(cache=EXACT), BOB)
    assert other.headers["x-cache"] == "miss"
    assert upstream_calls(openai_for_both) == 2
    again = await call(inference, ask(cache=EXACT), BOB)
    assert again.headers["x-cache"] == "hit-exact"


async def test_a_teams_keys_share_the_teams_entries_and_no_one_elses(
    inference: Inference, openai_upstream: Upstream
) -> None:
    team = "00000000-0000-0000-0000-00000000ee00"
    await inference.credential(openai_upstream.url, shared=True)
    on_team = [Identity(**{**vars_of(who), "team": team}) for who in (ALICE, BOB)]
    await call(inference, ask(cache=EXACT), on_team[0])
    shared = await call(inference, ask(cache=EXACT), on_team[1])
    assert shared.headers["x-cache"] == "hit-exact"
    personal = await call(inference, ask(cache=EXACT), BOB)  # the same user, no team key
    assert personal.headers["x-cache"] == "miss"


def vars_of(identity: Identity) -> dict[str, Any]:
    return {name: getattr(identity, name) for name in identity.__dataclass_fields__}


async def test_off_unless_asked_and_never_for_sampled_or_several_answers(
    inference: Inference, openai_for_both: Upstream
) -> None:
    for body in (ask(), ask(), ask(cache={"mode": "off"}), ask(cache=EXACT, temperature=0.7),
                 ask(cache=EXACT, n=2), ask(cache=EXACT, n=2)):  # fmt: skip
        response = await call(inference, body)
        assert response.headers["x-cache"] == "bypass", body
    assert upstream_calls(openai_for_both) == 6
    await call(inference, ask(cache=EXACT, temperature=0))
    assert (await call(inference, ask(cache=EXACT, temperature=0))).headers["x-cache"] == (
        "hit-exact"
    )


async def test_cache_control_no_cache_skips_the_lookup_and_no_store_the_write(
    inference: Inference, openai_for_both: Upstream
) -> None:
    unstored = await call(inference, ask(cache=EXACT), headers={"Cache-Control": "no-store"})
    assert unstored.headers["x-cache"] == "miss"
    assert (await call(inference, ask(cache=EXACT))).headers["x-cache"] == "miss"
    fresh = await call(inference, ask(cache=EXACT), headers={"Cache-Control": "no-cache"})
    assert fresh.headers["x-cache"] == "bypass"
    assert upstream_calls(openai_for_both) == 3
    assert (await call(inference, ask(cache=EXACT))).headers["x-cache"] == "hit-exact"


async def test_a_bad_cache_field_is_a_400_naming_it_and_calls_nothing(
    inference: Inference, openai_for_both: Upstream
) -> None:
    for bad in ({"mode": "always"}, {"mode": "exact", "ttl": 0}, {"mode": "exact", "x": 1}, 7):
        response = await inference.call("POST", CHAT, json=ask(cache=bad), identity=ALICE)
        assert response.status_code == 400, response.text
        assert "cache" in response.json()["detail"]
    assert upstream_calls(openai_for_both) == 0


async def test_an_aliass_default_turns_it_on_and_changing_its_targets_invalidates(
    inference: Inference, openai_upstream: Upstream
) -> None:
    credential = await inference.credential(openai_upstream.url, shared=True)

    async def save(model: str) -> None:
        response = await inference.call("POST", "/v1/providers/aliases", identity=admin(), json={
            "alias": "cached", "shared": True, "cache": {"mode": "exact", "ttl_seconds": 60},
            "targets": [{"model": model, "credential_id": credential["id"]}],
        })  # fmt: skip
        assert response.status_code == 201, response.text
        assert response.json()["cache"]["mode"] == "exact"

    await save("openai/gpt-4o-mini")
    body = {"model": "cached", "messages": [{"role": "user", "content": "hi"}]}
    assert (await call(inference, body)).headers["x-cache"] == "miss"
    assert (await call(inference, body)).headers["x-cache"] == "hit-exact"
    off = await call(inference, {**body, "cache": {"mode": "off"}})  # the request wins
    assert off.headers["x-cache"] == "bypass"
    await save("openai/gpt-4o")
    assert (await call(inference, body)).headers["x-cache"] == "miss"
    assert openai_upstream.control.requests_to(ROUTE)[-1].json["model"] == "gpt-4o"


async def test_delete_cache_forgets_your_scope_and_only_admins_forget_others(
    inference: Inference, openai_for_both: Upstream
) -> None:
    await call(inference, ask(cache=EXACT), ALICE)
    await call(inference, ask(cache=EXACT), BOB)
    cleared = await inference.call("DELETE", "/v1/cache", identity=ALICE)
    assert cleared.status_code == 200, cleared.text
    assert cleared.json() == {"entries": 1}
    assert (await call(inference, ask(cache=EXACT), ALICE)).headers["x-cache"] == "miss"
    assert (await call(inference, ask(cache=EXACT), BOB)).headers["x-cache"] == "hit-exact"

    refused = await inference.call("DELETE", "/v1/cache", params={"scope": "all"}, identity=BOB)
    assert refused.status_code == 403
    everything = await inference.call(
        "DELETE", "/v1/cache", params={"scope": "all"}, identity=admin()
    )
    assert everything.status_code == 200, everything.text
    assert (await call(inference, ask(cache=EXACT), BOB)).headers["x-cache"] == "miss"


async def test_an_answer_over_the_entry_limit_is_not_kept(
    make_inference: MakeInference, openai_upstream: Upstream
) -> None:
    async with make_inference(cache_max_entry_bytes=2048) as inference:
        await inference.credential(openai_upstream.url, identity=ALICE)
        await call(inference, ask("words:2000", cache=EXACT))
        again = await call(inference, ask("words:2000", cache=EXACT))
        assert again.headers["x-cache"] == "miss"
        await call(inference, ask("words:3", cache=EXACT))
        assert (await call(inference, ask("words:3", cache=EXACT))).headers["x-cache"] == (
            "hit-exact"
        )


async def test_a_scope_over_its_byte_cap_evicts_its_oldest_entries(
    inference: Inference, openai_for_both: Upstream, redis: Redis
) -> None:
    runtime = inference.app.state.runtime
    runtime.cache = CacheStore(ResponseCache(redis), max_entry_bytes=64 * 1024,
                               max_scope_bytes=3000, lookup_timeout=1.0)  # fmt: skip
    for n in range(10):
        await call(inference, ask(f"words:{40 + n}", cache=EXACT))
    kept = [(await call(inference, ask(f"words:{40 + n}", cache=EXACT))).headers["x-cache"]
            for n in (9, 0)]  # fmt: skip
    assert kept == ["hit-exact", "miss"]  # the newest stayed, the oldest went
    assert await redis.get(f"inference:cache:{{user:{ALICE.user_id}}}:t") is not None
    assert int(await redis.get(f"inference:cache:{{user:{ALICE.user_id}}}:t") or 0) <= 3000


async def test_a_cache_that_fails_is_a_miss_never_an_error(
    inference: Inference, openai_for_both: Upstream
) -> None:
    dead = Redis.from_url("redis://127.0.0.1:9/0", socket_connect_timeout=0.2)
    runtime = inference.app.state.runtime
    runtime.cache = CacheStore(ResponseCache(dead), max_entry_bytes=64 * 1024,
                               max_scope_bytes=1 << 20, lookup_timeout=0.5)  # fmt: skip
    try:
        for _ in range(2):
            response = await call(inference, ask(cache=EXACT))
            assert response.headers["x-cache"] == "miss"
        streamed = await call(inference, ask(stream=True, cache=EXACT))
        assert streamed.headers["x-cache"] == "miss"
        assert "[DONE]" in streamed.text
        assert upstream_calls(openai_for_both) == 3
    finally:
        await dead.aclose()


async def test_a_hit_answers_the_sdk_like_a_fresh_answer(
    inference: Inference, openai_for_both: Upstream
) -> None:
    answers = []
    async with inference.sdk(ALICE) as sdk:
        for _ in range(2):
            answers.append(await sdk.chat.completions.with_raw_response.create(
                model="openai/gpt-4o-mini", messages=[{"role": "user", "content": "hello"}],
                extra_body={"cache": EXACT},
            ))  # fmt: skip
            await inference.app.state.runtime.cache.drain()
    first, second = (answer.parse() for answer in answers)
    assert isinstance(second, openai.types.chat.ChatCompletion)
    assert second.choices[0].message.content == first.choices[0].message.content == "echo: hello"
    assert [a.headers["x-cache"] for a in answers] == ["miss", "hit-exact"]
    assert second.id != first.id
