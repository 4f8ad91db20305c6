"""PostgreSQL stopped under load: what needs it answers 503 quickly, readiness says so while
liveness stays up, and everything recovers by itself: no call event lost or counted twice."""

from __future__ import annotations

import time

import httpx

from devkit.e2e import FakeOpenAI, RunningPlatform, StoppablePostgres, new_member_with_key

from .load import Load, counted_calls

CHAT = {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "words:3"}]}
SERVICES = ("auth", "inference", "embeddings", "telemetry")


def probes(platform: RunningPlatform, path: str) -> dict[str, int]:
    return {name: httpx.get(f"{platform.url(name)}{path}", timeout=5).status_code
            for name in SERVICES}  # fmt: skip


def test_postgres_stopped_then_back_under_load(
    faulty: RunningPlatform, fault_postgres: StoppablePostgres, provider: FakeOpenAI
) -> None:
    key = new_member_with_key(faulty, provider, "pg-fault@example.com")
    headers = {"Authorization": f"Bearer {key}"}

    def chat(client: httpx.Client) -> httpx.Response:
        return client.post("/v1/chat/completions", json=CHAT, headers=headers)

    def credentials(client: httpx.Client) -> httpx.Response:  # inference's tables
        return client.get("/v1/providers/credentials", headers=headers)

    with Load(chat, faulty.gateway, workers=2) as chats, \
            Load(credentials, faulty.gateway, workers=2) as reads:  # fmt: skip
        for load in (chats, reads):
            load.wait_for(lambda answers: sum(a.status == 200 for a in answers) >= 10, within=30)
        stopped = time.monotonic()
        fault_postgres.stop()
        try:
            reads.wait_for(lambda answers: len([a for a in answers if a.sent > stopped + 1]) >= 20,
                           within=60)  # fmt: skip
            down = reads.since(stopped + 1)
            assert {a.status for a in down} == {503}, [(a.status, a.body[:200]) for a in down]
            assert all(a.content_type.startswith("application/problem+json") for a in down)
            assert max(a.took for a in down) < 5.0
            # Chat reads nothing from the database per call (its credential is cached): it
            # goes on; whatever fails of it is a 503 problem too.
            failed = [a for a in chats.since(stopped) if a.status != 200]
            assert {a.status for a in failed} <= {503}, [(a.status, a.body[:200]) for a in failed]
            # Liveness stays up (a restart would not help); readiness says the database is away.
            assert probes(faulty, "/healthz") == dict.fromkeys(SERVICES, 200)
            assert probes(faulty, "/readyz") == dict.fromkeys(SERVICES, 503)
        finally:
            fault_postgres.start()
        back = time.monotonic()
        for load in (chats, reads):
            load.wait_for(
                lambda answers: sum(a.status == 200 and a.sent > back for a in answers) >= 10,
                within=30,
            )
    assert probes(faulty, "/readyz") == dict.fromkeys(SERVICES, 200)

    # Every chat call answered is counted once: telemetry stored what it read from the
    # stream while the database was away once it came back (never acknowledged before).
    served = sum(a.status == 200 for a in chats.answers)
    calls = counted_calls(faulty.gateway, headers, served)
    assert calls == served
