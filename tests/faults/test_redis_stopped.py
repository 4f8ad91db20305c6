"""Redis stopped under load: the gateway refuses what it cannot check (503, fast), recovers
by itself when Redis is back, and no call event is lost."""

from __future__ import annotations

import time

import httpx

from devkit.e2e import FakeOpenAI, RunningPlatform, StoppableRedis, new_member_with_key

from .load import Answer, Load, counted_calls

CHAT = {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "words:3"}]}


def problem(answer: Answer) -> bool:
    return answer.content_type.startswith("application/problem+json")


def test_redis_stopped_then_back_under_load(
    faulty: RunningPlatform, fault_redis: StoppableRedis, provider: FakeOpenAI
) -> None:
    key = new_member_with_key(faulty, provider, "redis-fault@example.com")
    headers = {"Authorization": f"Bearer {key}"}

    def chat(client: httpx.Client) -> httpx.Response:
        return client.post("/v1/chat/completions", json=CHAT, headers=headers)

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
            # Every call that starts a second after Redis went away is refused, quickly and
            # clearly: 503 problem+json within 1 s, never a 200 (its key could not be checked)
            # and never a hang.
            load.wait_for(lambda answers: sum(a.sent > stopped + 1 for a in answers) >= 20,
                          within=30)  # fmt: skip
            down = load.since(stopped + 1)
            assert {a.status for a in down} == {503}, [(a.status, a.body[:200]) for a in down]
            assert all(problem(a) for a in down)
            assert max(a.took for a in down) < 1.0
            held = [a for a in load.between(0, stopped) if a.sent + a.took > stopped + 1]
            assert [a.status for a in held] == [200] * 4, held
        finally:
            fault_redis.start()  # the next tests share this platform
        back = time.monotonic()
        recovered = load.wait_for(
            lambda answers: any(a.status == 200 and a.sent > back for a in answers), within=5
        )
        assert recovered - back < 5
        load.wait_for(lambda answers: sum(a.status == 200 and a.sent > back for a in answers) >= 20,
                      within=30)  # fmt: skip

    served = sum(a.status == 200 for a in load.answers)
    # Every call that was answered is counted, once: the events inference buffered while
    # the stream was away arrive.
    calls = counted_calls(faulty.gateway, headers, served, retry_errors=True)
    assert calls == served
