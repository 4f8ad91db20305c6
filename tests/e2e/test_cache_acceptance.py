"""Issue 20's acceptance through the gateway of `make run`, with the official `openai` SDK:
the exact cache (plain and streamed), the semantic cache on a paraphrase and a near-miss
of bench/data's labelled pairs, scopes, what `/v1/usage` shows, and the cache's Redis
stopped (its own, INFERENCE_CACHE_REDIS_URL: the platform's Redis holds sessions, and
without it nothing is authenticated)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
import redis

from .conftest import PROVIDER_KEY, CacheRedis, FakeOpenAI, Member, RunningPlatform

EXACT = {"cache": {"mode": "exact"}}
CHAT = "/v1/chat/completions"
# bench/data/semantic_cache_pairs.jsonl: pair 41 (a paraphrase) and pair 336 (a role swap).
PARAPHRASE = ("What is the chemical symbol for gold?", "what is gold's chemical symbol?")
NEAR_MISS = (
    "How do I redirect HTTP to HTTPS in nginx?",
    "How do I redirect HTTPS to HTTP in nginx?",
)


def upstream_calls(fake: FakeOpenAI) -> int:
    return len(fake.control.requests_to(CHAT))


def ask(member: Member, text: str, *, written: bool = True, **extra: Any) -> tuple[str, str]:
    """(X-Cache, the answer's text) of a plain call; after a miss, once its answer is in
    the cache (written after the answer was sent), unless `written` is false."""
    before = stored(member) if written else 0
    raw = member.sdk.chat.completions.with_raw_response.create(
        model="openai/gpt-4o-mini", messages=[{"role": "user", "content": text}], **extra
    )
    answer = raw.parse()
    if raw.headers["x-cache"] == "miss" and written:
        wait_until(lambda: stored(member) > before)
    return raw.headers["x-cache"], answer.choices[0].message.content or ""


def stored(member: Member) -> int:
    """How many answers the platform's response cache holds: the exact cache's entries
    (its own Redis) and the semantic ones (inference.cache_entry)."""
    with redis.Redis.from_url(member.cache_redis_url, socket_timeout=2) as cache:
        try:
            exact = sum(1 for _ in cache.scan_iter(match="inference:cache:*:e:*", count=1000))
        except redis.RedisError:
            exact = 0  # stopped: nothing is written either
    return exact + asyncio.run(_semantic_rows(member.database_url))


async def _semantic_rows(url: str) -> int:
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        return int(await conn.fetchval("SELECT count(*) FROM inference.cache_entry"))
    finally:
        await conn.close()


def wait_until(condition: Any, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "the cache's write never landed"
        time.sleep(0.02)


def cached_member(
    platform: RunningPlatform, cache_redis: CacheRedis, email: str, **key: Any
) -> Member:
    person = Member(platform, email, key=key or None)
    person.cache_redis_url = cache_redis.url
    person.database_url = platform.env["DATABASE_URL"]
    return person


@pytest.fixture
def member(
    platform: RunningPlatform,
    cache_redis: CacheRedis,
    fake_openai: FakeOpenAI,
    request: pytest.FixtureRequest,
) -> Iterator[Member]:
    person = cached_member(platform, cache_redis, f"{request.node.name[:40]}@cache.example.com")
    person.credential("openai", "mine", fake_openai.url, PROVIDER_KEY)
    yield person
    person.close()


def test_exact_plain_and_streamed(member: Member, fake_openai: FakeOpenAI) -> None:
    before = upstream_calls(fake_openai)
    first = ask(member, "words:8", extra_body=EXACT)
    second = ask(member, "words:8", extra_body=EXACT)
    assert (first[0], second[0]) == ("miss", "hit-exact")
    assert first[1] == second[1]
    assert upstream_calls(fake_openai) == before + 1

    raw = member.sdk.chat.completions.with_raw_response.create(
        model="openai/gpt-4o-mini", messages=[{"role": "user", "content": "words:8"}],
        stream=True, stream_options={"include_usage": True}, extra_body=EXACT,
    )  # fmt: skip
    assert raw.headers["x-cache"] == "hit-exact"
    chunks = list(raw.parse())
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == first[1]
    assert chunks[-1].usage is not None
    assert upstream_calls(fake_openai) == before + 1


def test_semantic_paraphrase_hits_and_a_near_miss_does_not(
    platform: RunningPlatform, cache_redis: CacheRedis, fake_openai: FakeOpenAI
) -> None:
    member = cached_member(platform, cache_redis, "semantic@cache.example.com",
                           cache={"mode": "semantic"})  # fmt: skip
    try:
        member.credential("openai", "mine", fake_openai.url, PROVIDER_KEY)
        # The local model loads in the background at start: until it has, a semantic
        # lookup runs out of time (INFERENCE_CACHE_SEMANTIC_TIMEOUT_SECONDS) and is a miss.
        member.sdk.embeddings.create(model="local/all-MiniLM-L6-v2", input="warm up")
        cached, paraphrase = PARAPHRASE
        assert ask(member, cached)[0] == "miss"
        hit = ask(member, paraphrase)
        assert hit == ("hit-semantic", f"echo: {cached}")  # the first prompt's answer
        original, swapped = NEAR_MISS
        assert ask(member, original)[0] == "miss"
        assert ask(member, swapped) == ("miss", f"echo: {swapped}")
    finally:
        member.close()


def test_another_users_identical_request_misses(
    platform: RunningPlatform, cache_redis: CacheRedis, member: Member, fake_openai: FakeOpenAI
) -> None:
    assert ask(member, "words:5", extra_body=EXACT)[0] == "miss"
    other = cached_member(platform, cache_redis, "other@cache.example.com")
    try:
        other.credential("openai", "mine", fake_openai.url, PROVIDER_KEY)
        assert ask(other, "words:5", extra_body=EXACT)[0] == "miss"
        assert ask(member, "words:5", extra_body=EXACT)[0] == "hit-exact"
    finally:
        other.close()


def test_usage_shows_the_hit_at_cost_zero_and_its_saving(member: Member) -> None:
    ask(member, "words:12", extra_body=EXACT)
    ask(member, "words:12", extra_body=EXACT)
    made, hit = member.calls(2)[::-1]
    assert (made["cache"], hit["cache"]) == (None, "exact")
    assert Decimal(hit["cost_usd"]) == 0
    assert Decimal(hit["saved_usd"]) == Decimal(made["cost_usd"]) > 0
    usage = member.browser.get("/v1/usage", params={"group_by": "model"}).json()
    assert usage["totals"]["cache_hits"] == 1
    assert Decimal(usage["totals"]["saved_usd"]) == Decimal(made["cost_usd"])
    assert Decimal(usage["totals"]["cost_usd"]) == Decimal(made["cost_usd"])


def test_with_the_cache_redis_stopped_calls_succeed_as_misses(
    member: Member, cache_redis: CacheRedis, fake_openai: FakeOpenAI
) -> None:
    assert ask(member, "words:3", extra_body=EXACT)[0] == "miss"
    cache_redis.stop()
    try:
        before = upstream_calls(fake_openai)
        for _ in range(2):
            status, text = ask(member, "words:3", written=False, extra_body=EXACT)
            assert status == "miss"
            assert text
        assert upstream_calls(fake_openai) == before + 2
    finally:
        cache_redis.start()
    # Back without a restart of inference. This Redis keeps nothing on disk, but the write
    # of the last miss, retried once on a new connection, may land on it as it comes back.
    assert ask(member, "words:3", extra_body=EXACT)[0] in ("miss", "hit-exact")
    assert ask(member, "words:3", extra_body=EXACT)[0] == "hit-exact"


def test_delete_cache_through_the_gateway_forgets_your_answers(member: Member) -> None:
    ask(member, "words:4", extra_body=EXACT)
    assert ask(member, "words:4", extra_body=EXACT)[0] == "hit-exact"
    cleared = member.browser.delete("/v1/cache")
    assert cleared.status_code == 200, cleared.text
    assert cleared.json()["entries"] >= 1
    assert ask(member, "words:4", extra_body=EXACT)[0] == "miss"
    refused = member.browser.delete("/v1/cache", params={"scope": "all"})
    assert refused.status_code == 403
    assert refused.headers["content-type"] == "application/problem+json"
