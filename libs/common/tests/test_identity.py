"""The signed internal identity: round trip, every refusal, and the httpx auth flow."""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace

import httpx
import pytest

from common.identity import (
    CLOCK_SKEW_SECONDS,
    HEADER,
    CurrentIdentity,
    Identity,
    InvalidIdentity,
    SignedIdentity,
    service_identity,
    sign,
    verify,
)

KEY = secrets.token_bytes(32)
AUD = "inference"  # the service the headers are for
NOW = 1_700_000_000.0
MAX_AGE = 60.0
USER = Identity(
    sub="00000000-0000-0000-0000-000000000001",
    kind="api_key",
    iss="gateway",
    roles=("member", "admin"),
    permissions=("models:read", "completions:create"),
    sid="session-1",
    kid="key-7",
)


def _sign(
    identity: Identity = USER, *, key: bytes = KEY, at: float = NOW, audience: str = AUD
) -> str:
    return sign(identity, key, method="POST", path="/v1/completions", audience=audience, now=at)


def _verify(
    header: str | None, *, method: str = "POST", path: str = "/v1/completions", at: float = NOW
) -> Identity:
    return verify(header, KEY, method=method, path=path, audience=AUD, max_age=MAX_AGE, now=at)


def test_round_trip_keeps_every_field() -> None:
    identity = _verify(_sign())

    assert identity.sub == USER.sub
    assert identity.kind == "api_key"
    assert identity.iss == "gateway"
    assert identity.roles == ("member", "admin")
    assert identity.permissions == ("models:read", "completions:create")
    assert identity.sid == "session-1"
    assert identity.kid == "key-7"
    assert identity.iat == NOW
    assert identity.user_id == USER.sub
    assert identity.has("completions:create")
    assert not identity.has("admin:write")
    assert (identity.team, identity.policies, identity.hold) == (None, None, None)


def test_round_trip_keeps_team_policies_and_hold() -> None:
    hold = {"id": "c1", "amount": 5, "at": NOW, "until": NOW + 1, "scopes": ["key"],
            "windows": [[1, 2, 3]]}  # fmt: skip
    policies = {"key": {"max_budget_usd": "2.50", "allowed_models": ["openai/*"]}}
    governed = replace(USER, team="t-1", policies=policies, hold=hold)
    assert replace(_verify(_sign(governed)), iat=0.0) == governed
    # Fields that are None are left out of the payload; they read back as None.
    payload = json.loads(base64.urlsafe_b64decode(_sign().split(".")[0] + "=="))
    assert {"team", "policies", "hold"} & set(payload) == set()


def test_method_is_compared_case_insensitively() -> None:
    header = sign(USER, KEY, method="post", path="/v1/completions", audience=AUD, now=NOW)

    assert _verify(header).sub == USER.sub


def _tampered(header: str) -> str:
    payload, _, mac = header.partition(".")
    body = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    body["roles"] = ["admin", "owner"]
    forged = base64.urlsafe_b64encode(json.dumps(body).encode()).rstrip(b"=").decode()
    return f"{forged}.{mac}"


@pytest.mark.parametrize(
    ("header", "method", "path", "at"),
    [
        pytest.param(None, "POST", "/v1/completions", NOW, id="no-header"),
        pytest.param("", "POST", "/v1/completions", NOW, id="empty-header"),
        pytest.param("garbage", "POST", "/v1/completions", NOW, id="garbage"),
        pytest.param("a.b.c!", "POST", "/v1/completions", NOW, id="malformed-mac"),
        pytest.param(_tampered(_sign()), "POST", "/v1/completions", NOW, id="tampered-payload"),
        pytest.param(_sign(key=b"k" * 32), "POST", "/v1/completions", NOW, id="wrong-key"),
        pytest.param(_sign(), "GET", "/v1/completions", NOW, id="other-method"),
        pytest.param(_sign(), "POST", "/v1/completions/1", NOW, id="other-path"),
        pytest.param(_sign(), "POST", "/v1/completions", NOW + MAX_AGE + 1, id="too-old"),
        pytest.param(
            _sign(audience="embeddings"), "POST", "/v1/completions", NOW, id="other-service"
        ),
        pytest.param(
            _sign(at=NOW + CLOCK_SKEW_SECONDS + 1), "POST", "/v1/completions", NOW, id="future"
        ),
    ],
)
def test_verify_refuses(header: str | None, method: str, path: str, at: float) -> None:
    with pytest.raises(InvalidIdentity) as excinfo:
        _verify(header, method=method, path=path, at=at)

    assert excinfo.value.status == 401


@pytest.mark.parametrize(
    ("signed_at", "verified_at"),
    [
        pytest.param(NOW, NOW + MAX_AGE - 1, id="almost-too-old"),
        pytest.param(NOW + CLOCK_SKEW_SECONDS - 1, NOW, id="within-clock-skew"),
    ],
)
def test_verify_accepts_near_the_limits(signed_at: float, verified_at: float) -> None:
    assert _verify(_sign(at=signed_at), at=verified_at).sub == USER.sub


def _peer(request: httpx.Request) -> httpx.Response:
    """A peer service: answers with the identity it verified, or 401."""
    try:
        identity = verify(
            request.headers.get(HEADER),
            KEY,
            method=request.method,
            path=request.url.raw_path.decode(),
            audience=AUD,
            max_age=MAX_AGE,
        )
    except InvalidIdentity as exc:
        return httpx.Response(401, json={"detail": exc.detail})
    return httpx.Response(200, json={"sub": identity.sub, "kind": identity.kind})


async def test_signed_identity_signs_each_request_and_honours_a_per_request_identity() -> None:
    auth = SignedIdentity(KEY, service_identity("embeddings"), audience=AUD)
    async with httpx.AsyncClient(
        transport=httpx.MockTransport(_peer), auth=auth, base_url="http://peer"
    ) as client:
        as_service = await client.get("/v1/models")
        as_user = await client.post(
            "/v1/usage", params={"page": 2}, json={}, extensions={"identity": USER}
        )
        as_service_again = await client.delete("/v1/usage/1")

    assert as_service.status_code == 200
    assert as_service.json() == {"sub": "service:embeddings", "kind": "service"}
    assert as_user.status_code == 200
    assert as_user.json() == {"sub": USER.sub, "kind": "api_key"}
    assert as_service_again.status_code == 200
    assert as_service_again.json() == {"sub": "service:embeddings", "kind": "service"}


async def test_signed_identity_without_an_identity_sends_no_header() -> None:
    async with httpx.AsyncClient(
        transport=httpx.MockTransport(_peer),
        auth=SignedIdentity(KEY, audience=AUD),
        base_url="http://peer",
    ) as client:
        anonymous = await client.get("/v1/models")
        as_user = await client.get("/v1/models", extensions={"identity": USER})

    assert anonymous.status_code == 401
    assert as_user.status_code == 200
    assert as_user.json()["sub"] == USER.sub


@pytest.mark.parametrize(
    "target",
    [
        "/v1/collections/c1/documents/faq%233",
        "/v1/docs/what%3F",
        "/v1/docs/a%5Cb",
        "/v1/x?q=a%20b&n=1",
    ],
)
async def test_a_service_accepts_what_a_peer_signed_whatever_the_encoding(target: str) -> None:
    """The MAC covers the request target as sent: escaped ?, # and \\ in ids survive."""
    from typing import ClassVar

    from fastapi import APIRouter

    from common.app import create_service_app
    from common.settings import ServiceSettings
    from devkit.testing import asgi_client

    class EchoSettings(ServiceSettings):
        service_name: ClassVar[str] = "identityecho"

    router = APIRouter()

    @router.get("/v1/{rest:path}")
    async def echo(identity: CurrentIdentity) -> dict[str, str]:
        return {"sub": identity.sub}

    key = "k" * 40
    settings = EchoSettings(environment="test", internal_signing_key=key)
    app = create_service_app(settings, public=router, lifespan=_no_lifespan, title="echo")
    async with asgi_client(app, identity=USER, key=key.encode()) as client:
        response = await client.get(target)
    async with asgi_client(app) as client:
        tampered = await client.get(
            target,
            headers={
                HEADER: sign(USER, key.encode(), method="GET", path="/v1/other", audience=AUD)
            },
        )
    assert response.status_code == 200, response.text
    assert tampered.status_code == 401


def test_a_signature_does_not_cover_another_query() -> None:
    header = sign(USER, KEY, method="GET", path="/v1/usage?user=me", audience=AUD, now=NOW)
    with pytest.raises(InvalidIdentity):
        verify(
            header, KEY, method="GET", path="/v1/usage?user=all", audience=AUD, max_age=MAX_AGE,
            now=NOW,
        )  # fmt: skip


@pytest.mark.parametrize(
    "field",
    [{"iat": "NaN"}, {"kind": "root"}, {"aud": None}, {"aud": ["inference"]}, {"hold": [1]}],
)
def test_malformed_claims_are_refused(field: dict[str, object]) -> None:
    import base64
    import hashlib
    import hmac
    import json

    body = {"sub": "u", "kind": "user", "iss": "gateway", "iat": NOW, "aud": AUD, **field}
    payload = base64.urlsafe_b64encode(json.dumps(body).encode()).rstrip(b"=").decode()
    mac = hmac.new(KEY, f"{payload}\nGET\n/v1/x".encode(), hashlib.sha256).digest()
    header = payload + "." + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()
    with pytest.raises(InvalidIdentity):
        verify(header, KEY, method="GET", path="/v1/x", audience=AUD, max_age=1e12, now=NOW)


@asynccontextmanager
async def _no_lifespan(_: object) -> AsyncIterator[None]:
    yield
