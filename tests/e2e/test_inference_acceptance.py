"""Issue 4's acceptance through the gateway of `make run`: the official openai SDK against a
local OpenAI-protocol server, faults injected, an alias falling back, the local model."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import openai
import pytest

from devkit import devstack

from .conftest import (
    ADMIN_EMAIL,
    ADMIN_PASSWORD,
    PROVIDER_KEY,
    FakeOpenAI,
    Login,
    RunningPlatform,
)


@pytest.fixture
def sdk(
    platform: RunningPlatform, member_key: str, fake_openai: FakeOpenAI
) -> Iterator[openai.OpenAI]:
    fake_openai.control.reset()
    client = openai.OpenAI(base_url=f"{platform.gateway}/v1", api_key=member_key, max_retries=0)
    yield client
    client.close()


def test_chat_with_and_without_stream_and_embeddings(sdk: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "words:9"}]
    completion = sdk.chat.completions.create(model="openai/gpt-4o-mini", messages=messages)  # type: ignore[arg-type]
    text = completion.choices[0].message.content
    assert text
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 9
    streamed = sdk.chat.completions.create(
        model="openai/gpt-4o-mini",
        messages=messages,
        stream=True,  # type: ignore[arg-type]
    )
    pieces = [c.choices[0].delta.content or "" for c in streamed if c.choices]
    assert "".join(pieces) == text
    vectors = sdk.embeddings.create(model="openai/text-embedding-3-small", input=["a", "b"])
    assert len(vectors.data) == 2


def test_local_model_embeddings_work_offline(sdk: openai.OpenAI) -> None:
    result = sdk.embeddings.create(
        model="local/all-MiniLM-L6-v2", input=["a cat on a mat", "a kitten on a rug"]
    )
    assert [len(d.embedding) for d in result.data] == [384, 384]
    assert result.usage.prompt_tokens > 0


def test_two_upstream_500s_then_a_200_is_a_200(sdk: openai.OpenAI, fake_openai: FakeOpenAI) -> None:
    fake_openai.control.fail("/v1/chat/completions", status=500, times=2)
    completion = sdk.chat.completions.create(
        model="openai/gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
    )
    assert completion.choices[0].message.content
    assert len(fake_openai.control.requests_to("/v1/chat/completions")) == 3


def test_an_alias_with_a_dead_first_target_falls_back(
    platform: RunningPlatform,
    login: Login,
    sdk: openai.OpenAI,
    fake_openai: FakeOpenAI,
    refused_port: int,
) -> None:
    admin = login(ADMIN_EMAIL, ADMIN_PASSWORD)
    dead = admin.post(
        "/v1/providers/credentials",
        json={"provider": "openai", "name": "dead", "api_key": "sk-dead-000000000000",
              "base_url": f"http://127.0.0.1:{refused_port}/v1", "shared": True},
    ).json()  # fmt: skip
    alive = admin.post(
        "/v1/providers/credentials",
        json={"provider": "openai", "name": "alive", "api_key": PROVIDER_KEY,
              "base_url": fake_openai.url, "shared": True},
    ).json()  # fmt: skip
    alias = admin.post(
        "/v1/providers/aliases",
        json={"alias": "team-chat", "shared": True, "targets": [
            {"model": "openai/gpt-4o", "credential_id": dead["id"]},
            {"model": "openai/gpt-4o-mini", "credential_id": alive["id"]},
        ]},
    )  # fmt: skip
    assert alias.status_code == 201, alias.text
    assert "team-chat" in [m.id for m in sdk.models.list().data]
    completion = sdk.chat.completions.create(
        model="team-chat", messages=[{"role": "user", "content": "hi"}]
    )
    assert completion.model == "team-chat"
    assert (
        fake_openai.control.requests_to("/v1/chat/completions")[-1].json["model"] == "gpt-4o-mini"
    )


def test_the_provider_key_is_in_neither_the_database_nor_the_logs(
    platform: RunningPlatform, sdk: openai.OpenAI
) -> None:
    sdk.chat.completions.create(
        model="openai/gpt-4o-mini", messages=[{"role": "user", "content": "x"}]
    )
    database_url = platform.env["DATABASE_URL"]
    dump = subprocess.run(
        [devstack._pg_bin("pg_dump"), "--data-only", "--schema=inference", database_url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "provider_credential" in dump
    assert PROVIDER_KEY not in dump
    assert PROVIDER_KEY not in platform.log()
