"""Provider credentials: encrypted at rest, never shown, owned, rotatable."""

from __future__ import annotations

import uuid

from pydantic import SecretStr

from inference.crypto import Keyring, KeyringError
from inference.service import rotate_keys

from .conftest import UPSTREAM_KEY, Inference, MakeInference, Upstream, admin, member

OTHER = "00000000-0000-0000-0000-00000000000b"


async def _raw_rows(inference: Inference) -> list[str]:
    async with inference.app.state.sessionmaker() as db:
        connection = await db.connection()
        rows = await connection.exec_driver_sql(
            "SELECT row_to_json(c)::text FROM inference.provider_credential c"
        )
        return [r[0] for r in rows]


async def test_a_credential_is_stored_encrypted_and_never_returned(
    inference: Inference, openai_upstream: Upstream
) -> None:
    created = await inference.credential(openai_upstream.url, name="mine")
    assert created["key_hint"] == UPSTREAM_KEY[-4:]
    assert "api_key" not in created
    listed = (await inference.call("GET", "/v1/providers/credentials")).json()
    assert [c["name"] for c in listed] == ["mine"]
    assert UPSTREAM_KEY not in str(listed)
    rows = await _raw_rows(inference)
    assert len(rows) == 1
    assert UPSTREAM_KEY not in rows[0]
    assert UPSTREAM_KEY.encode().hex() not in rows[0]  # bytea is shown as hex


async def test_members_neither_see_nor_use_each_others_credentials(
    inference: Inference, openai_upstream: Upstream
) -> None:
    mine = await inference.credential(openai_upstream.url, name="mine")
    theirs = member(OTHER)
    assert (await inference.call("GET", "/v1/providers/credentials", identity=theirs)).json() == []
    gone = await inference.call(
        "DELETE", f"/v1/providers/credentials/{mine['id']}", identity=theirs
    )
    assert gone.status_code == 404
    chat = await inference.call(
        "POST",
        "/v1/chat/completions",
        identity=theirs,
        json={"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert chat.status_code == 400
    assert "No credential for provider openai" in chat.json()["detail"]
    assert openai_upstream.control.requests == []


async def test_shared_credentials_need_the_admin_permission_and_serve_everyone(
    inference: Inference, openai_upstream: Upstream
) -> None:
    refused = await inference.call(
        "POST",
        "/v1/providers/credentials",
        json={"provider": "openai", "name": "s", "api_key": "sk-x", "shared": True},
    )
    assert refused.status_code == 403
    await inference.credential(openai_upstream.url, shared=True, name="team")
    chat = await inference.call(
        "POST",
        "/v1/chat/completions",
        identity=member(OTHER),
        json={"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert chat.status_code == 200, chat.text
    listed = await inference.call("GET", "/v1/providers/credentials", identity=member(OTHER))
    assert [c["shared"] for c in listed.json()] == [True]
    member_delete = await inference.call(
        "DELETE", f"/v1/providers/credentials/{listed.json()[0]['id']}", identity=member(OTHER)
    )
    assert member_delete.status_code == 404
    admin_delete = await inference.call(
        "DELETE", f"/v1/providers/credentials/{listed.json()[0]['id']}", identity=admin()
    )
    assert admin_delete.status_code == 204


async def test_bad_credential_bodies_are_422_and_store_nothing(inference: Inference) -> None:
    for body in (
        {"provider": "nope", "name": "x", "api_key": "k"},
        {"provider": "openai", "name": "", "api_key": "k"},
        {"provider": "openai", "name": "x", "api_key": "k", "base_url": "not a url"},
        {"provider": "openai", "name": "x", "api_key": "k", "extra": 1},
    ):
        response = await inference.call("POST", "/v1/providers/credentials", json=body)
        assert response.status_code == 422, body
        assert response.headers["content-type"] == "application/problem+json"
    assert await _raw_rows(inference) == []


async def test_a_key_no_http_header_can_carry_is_refused(inference: Inference) -> None:
    """Found by the fuzzer (tests/fuzz): a key with a non-ASCII character was stored, and
    every call that sent it failed with a 500, GET /v1/models included, for good."""
    for key in ("sk-\u00a7", "sk key", "sk-\nkey", "sk-\x00"):
        for provider in ("openai", "anthropic", "huggingface"):
            response = await inference.call(
                "POST", "/v1/providers/credentials",
                json={"provider": provider, "name": "x", "api_key": key},
            )  # fmt: skip
            assert response.status_code == 422, (key, provider)
            assert response.json()["errors"][0]["loc"] == ["body", "api_key"]
    assert await _raw_rows(inference) == []
    assert (await inference.call("GET", "/v1/models")).status_code == 200


async def test_a_name_the_database_refuses_is_422_and_stores_nothing(
    inference: Inference,
) -> None:
    """Found by the fuzzer: a NUL in the name reached the INSERT, a 500."""
    response = await inference.call(
        "POST", "/v1/providers/credentials",
        json={"provider": "openai", "name": "my\u0000key", "api_key": "sk-x"},
    )  # fmt: skip
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert await _raw_rows(inference) == []


async def test_a_stored_key_no_header_can_carry_is_a_clear_400_not_a_500(
    inference: Inference, openai_upstream: Upstream
) -> None:
    """A key stored before keys were checked: its calls say what to do, and the model list
    (which asks every provider the caller has a key for) still answers."""
    created = await inference.credential(openai_upstream.url, name="old")
    keyring = inference.app.state.runtime.keyring
    async with inference.app.state.sessionmaker() as db:
        connection = await db.connection()
        await connection.exec_driver_sql(
            "UPDATE inference.provider_credential SET key_ciphertext = $1 WHERE id = $2",
            (keyring.encrypt("sk-\u00a7", row_id=created["id"]), uuid.UUID(created["id"])),
        )
        await db.commit()
    chat = await inference.call(
        "POST", "/v1/chat/completions",
        json={"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]},
    )  # fmt: skip
    assert chat.status_code == 400, chat.text
    assert chat.json()["type"].endswith(":credential-unusable")
    assert "'old'" in chat.json()["detail"]
    assert "add it again" in chat.json()["detail"]
    assert "\u00a7" not in chat.text
    assert (await inference.call("GET", "/v1/models")).status_code == 200


def test_ciphertexts_are_bound_to_their_row_and_key() -> None:
    keyring = Keyring(f"k1:{Keyring.generate_key()}")
    blob = keyring.encrypt("sk-secret", row_id="row-1")
    assert keyring.decrypt(blob, row_id="row-1") == "sk-secret"
    try:
        keyring.decrypt(blob, row_id="row-2")
    except KeyringError:
        pass
    else:
        raise AssertionError("a ciphertext moved to another row decrypted")
    other = Keyring(f"k1:{Keyring.generate_key()}")
    try:
        other.decrypt(blob, row_id="row-1")
    except KeyringError:
        pass
    else:
        raise AssertionError("another key with the same id decrypted")


async def test_rotation_reencrypts_every_row_and_the_old_key_can_go(
    make_inference: MakeInference, openai_upstream: Upstream
) -> None:
    old, new = Keyring.generate_key(), Keyring.generate_key()
    async with make_inference(encryption_keys=SecretStr(f"old:{old}")) as service:
        await service.credential(openai_upstream.url, name="a")
        await service.credential(openai_upstream.url, name="b", identity=member(OTHER))
        async with service.app.state.sessionmaker() as db:
            rotated, total = await rotate_keys(db, Keyring(f"new:{new},old:{old}"))
            again, _ = await rotate_keys(db, Keyring(f"new:{new},old:{old}"))
            await db.commit()
        assert (rotated, total, again) == (2, 2, 0)
        rows = await _raw_rows(service)
        assert all('"key_id":"new"' in r for r in rows)
        # Only the new key now: calls still work.
        service.app.state.runtime.keyring = Keyring(f"new:{new}")
        chat = await service.call(
            "POST",
            "/v1/chat/completions",
            json={"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]},
        )
        assert chat.status_code == 200, chat.text


async def test_cached_credentials_survive_failed_requests_and_see_deletions(
    make_inference: MakeInference, openai_upstream: Upstream
) -> None:
    """With the in-memory cache on (as in production), a request that fails and rolls back
    does not spoil later ones, and deleting a credential takes effect at once here."""
    async with make_inference(cache_seconds=30) as inference:
        created = await inference.credential(openai_upstream.url)
        body = {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}
        assert (await inference.call("POST", "/v1/chat/completions", json=body)).status_code == 200
        openai_upstream.control.fail("/v1/chat/completions", status=400)
        assert (await inference.call("POST", "/v1/chat/completions", json=body)).status_code == 400
        for _ in range(3):
            ok = await inference.call("POST", "/v1/chat/completions", json=body)
            assert ok.status_code == 200, ok.text
        gone = await inference.call("DELETE", f"/v1/providers/credentials/{created['id']}")
        assert gone.status_code == 204
        after = await inference.call("POST", "/v1/chat/completions", json=body)
        assert after.status_code == 400
        assert "No credential" in after.json()["detail"]
