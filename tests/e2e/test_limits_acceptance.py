"""Issue 16's acceptance through the gateway of `make run`: one member's dead endpoint does
not fail another member's calls to the same model, and model names that callers make up
do not grow inference's metrics."""

from __future__ import annotations

import httpx

from .conftest import FakeOpenAI, RunningPlatform, new_member_with_key

CHAT = {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def caller(platform: RunningPlatform, key: str) -> httpx.Client:
    return httpx.Client(
        base_url=platform.gateway, headers={"Authorization": f"Bearer {key}"}, timeout=60
    )


def test_a_members_dead_credential_does_not_fail_another_members_calls(
    platform: RunningPlatform, fake_openai: FakeOpenAI, refused_port: int
) -> None:
    dead = f"http://127.0.0.1:{refused_port}/v1"
    alice = new_member_with_key(platform, fake_openai, "dead-endpoint@example.com", base_url=dead)
    bob = new_member_with_key(platform, fake_openai, "live-endpoint@example.com")
    with caller(platform, alice) as alice_client, caller(platform, bob) as bob_client:
        # Three attempts a call, five failures open a circuit (make run's defaults).
        failed = [alice_client.post("/v1/chat/completions", json=CHAT) for _ in range(2)]
        skipped = alice_client.post("/v1/chat/completions", json=CHAT)
        bobs = bob_client.post("/v1/chat/completions", json=CHAT)

    assert [r.status_code for r in failed] == [502, 502]
    assert skipped.status_code == 503  # Alice's circuit for the model is open ...
    assert skipped.json()["type"].endswith(":circuit-open")
    assert bobs.status_code == 200, bobs.text  # ... and Bob's calls to it go through
    assert bobs.json()["choices"][0]["message"]["content"] == "echo: hi"


def model_labels(platform: RunningPlatform) -> set[str]:
    """The values of the `model` label in inference's own /metrics."""
    text = httpx.get(f"{platform.url('inference')}/metrics", timeout=10).text
    lines = [line for line in text.splitlines() if line.startswith("inference_")]
    return {line.split('model="', 1)[1].split('"', 1)[0] for line in lines if 'model="' in line}


def test_made_up_model_names_leave_a_handful_of_metric_labels(
    platform: RunningPlatform, fake_openai: FakeOpenAI
) -> None:
    before = model_labels(platform)
    # 200 calls, from two members: each may make 120 model calls a minute.
    for member in ("junk-a@example.com", "junk-b@example.com"):
        key = new_member_with_key(platform, fake_openai, member)
        with caller(platform, key) as client:
            for n in range(100):
                body = {"model": f"local/junk-{member[5]}{n}", "input": "x"}
                response = client.post("/v1/embeddings", json=body)
                assert response.status_code == 400, response.text
    after = model_labels(platform)

    assert after - before <= {"other"}
    assert len(after) <= 10, after
