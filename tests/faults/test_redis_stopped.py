"""Redis stopped, or paused, under load: the gateway refuses what it cannot check (503,
fast), recovers by itself when Redis is back, and no call event is lost."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx

from devkit.e2e import FakeOpenAI, RunningPlatform, StoppableRedis, new_member_with_key

from .load import Answer, Load, counted_calls

CHAT = {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "words:3"}]}


def problem(answer: Answer) -> bool:
    return answer.content_type.startswith("application/problem+json")


def chatting_member(
    faulty: RunningPlatform, provider: FakeOpenAI, email: str
) -> tuple[dict[str, str], Callable[[httpx.Client], httpx.Response]]:
    """A new member's API key headers, and a chat call with them."""
    headers = {"Authorization": f"Bearer {new_member_with_key(faulty, provider, email)}"}

    def chat(client: httpx.Client) -> httpx.Response:
        return client.post("/v1/chat/completions", json=CHAT, headers=headers)

    return headers, chat


def refused_quickly(load: Load, since: float) -> list[Answer]:
    """Waits for 20 calls sent after `since`; each must be a 503 problem+json given within
    a second (never a 200: no key could be checked; never a hang)."""
    load.wait_for(lambda answers: sum(a.sent > since for a in answers) >= 20, within=30)
    down = load.since(since)
    assert {a.status for a in down} == {503}, [(a.status, a.body[:200]) for a in down]
    assert all(problem(a) for a in down)
    assert max(a.took for a in down) < 1.0
    return down


def recovers(load: Load, back: float) -> None:
    """A 200 within 5 s of Redis's return, then 20 more."""
    recovered = load.wait_for(
        lambda answers: any(a.status == 200 and a.sent > back for a in answers), within=5
    )
    assert recovered - back < 5
    load.wait_for(lambda answers: sum(a.status == 200 and a.sent > back for a in answers) >= 20,
                  within=30)  # fmt: skip


def test_redis_stopped_then_back_under_load(
    faulty: RunningPlatform, fault_redis: StoppableRedis, provider: FakeOpenAI
) -> None:
    headers, chat = chatting_member(faulty, provider, "redis-fault@example.com")
    with Load(chat, faulty.gateway, workers=4) as load:
        load.wait_for(lambda answers: sum(a.status == 200 for a in answers) >= 20, within=30)
        # Four calls held at the provider for 2 s: admitted before Redis goes, answered
        # while it is away (their call events wait in inference's buffer).
        provider.control.delay("/v1/chat/completions", first_byte_seconds=2.0, times=4)
        load.wait_for(lambda _: provider.control.pending("/v1/chat/completions") == 0,
                      within=10)  # fmt: skip
        stopped = time.monotonic()
        fault_redis.stop()
        try:
            refused_quickly(load, stopped + 1)
            held = [a for a in load.between(0, stopped) if a.sent + a.took > stopped + 1]
            assert [a.status for a in held] == [200] * 4, held
        finally:
            fault_redis.start()  # the next tests share this platform (with its data)
        recovers(load, time.monotonic())

    served = sum(a.status == 200 for a in load.answers)
    # Every call that was answered is counted, once: the events inference buffered while
    # the stream was away arrive.
    calls = counted_calls(faulty.gateway, headers, served, retry_errors=True)
    assert calls == served


def test_redis_paused_is_refused_quickly_then_recovers(
    faulty: RunningPlatform, fault_redis: StoppableRedis, provider: FakeOpenAI
) -> None:
    """A Redis that accepts connections and answers nothing (paused, swapping, cut off by
    the network) is the harder case: nothing is refused, every command just waits. The
    gateway still answers 503 within a second instead of hanging, and recovers by itself."""
    headers, chat = chatting_member(faulty, provider, "redis-paused@example.com")
    with Load(chat, faulty.gateway, workers=8) as load:
        load.wait_for(lambda answers: sum(a.status == 200 for a in answers) >= 20, within=30)
        paused = time.monotonic()
        fault_redis.pause()
        try:
            # Every call sent once the pause has taken hold (a signal takes a moment) is
            # refused within a second: the first ones after the gateway's Redis timeout,
            # the next at once. The calls in flight at the pause are refused as soon, bar
            # those already admitted (inference waits on Redis for them).
            refused_quickly(load, paused + 0.1)
            first_refused = min(a.sent + a.took for a in load.answers if a.status == 503)
            assert first_refused - paused < 1.0
        finally:
            fault_redis.resume()
        recovers(load, time.monotonic())

    served = sum(a.status == 200 for a in load.answers)
    assert counted_calls(faulty.gateway, headers, served, retry_errors=True) == served
