"""Signed internal identity: how the gateway (and services calling each other) say who is asking.

Header `X-Internal-Identity: <payload>.<mac>`, both base64url. The payload is compact JSON
`{"sub", "roles", "permissions", "sid", "kid", "team", "policies", "hold", "iss", "iat",
"kind", "aud"}`; the MAC is
HMAC-SHA256 under INTERNAL_SIGNING_KEY over the payload, the HTTP method and the request
target exactly as sent (raw path and query), so a captured header cannot be replayed
against another route or query, and it expires after a max age. `aud` names the service
the header is for (its `service_name`, e.g. `inference`): each service refuses a header
signed for another, so one captured at one service cannot be replayed at a second that
serves the same method and path.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import time
from collections.abc import Generator
from dataclasses import dataclass, field, fields
from typing import Annotated, Any, Literal, get_args

import httpx
from fastapi import Depends, Request

from common.errors import Unauthorized

HEADER = "X-Internal-Identity"
CLOCK_SKEW_SECONDS = 5.0

IdentityKind = Literal["user", "api_key", "service", "anonymous"]
KINDS: frozenset[str] = frozenset(get_args(IdentityKind))


@dataclass(frozen=True)
class Identity:
    """Who the request is for. `iss` is the component that signed it."""

    sub: str
    kind: IdentityKind
    iss: str
    roles: tuple[str, ...] = ()
    permissions: tuple[str, ...] = ()
    sid: str | None = None
    kid: str | None = None
    # The team of the API key (common.policy), and the policies that govern the caller's
    # model calls, in their wire form (common.policy.Policies.to_wire; None: none).
    team: str | None = None
    policies: dict[str, Any] | None = None
    # What the gateway held of the caller's budgets for this model call, in the wire form
    # of common.budgets.GatewayHold (None: nothing); inference settles it.
    hold: dict[str, Any] | None = None
    iat: float = field(default=0.0)

    @property
    def user_id(self) -> str | None:
        return self.sub if self.kind in ("user", "api_key") else None

    def has(self, permission: str) -> bool:
        return permission in self.permissions


# The fields of an Identity left out of its payload when None.
_OPTIONAL = ("sid", "kid", "team", "policies", "hold")
assert {f.name for f in fields(Identity)} == {
    "sub", "kind", "iss", "roles", "permissions", "iat", *_OPTIONAL
}  # fmt: skip


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(key: bytes, payload: str, method: str, path: str) -> bytes:
    message = f"{payload}\n{method.upper()}\n{path}".encode()
    return hmac.new(key, message, hashlib.sha256).digest()


def sign(
    identity: Identity,
    key: bytes,
    *,
    method: str,
    path: str,
    audience: str,
    now: float | None = None,
) -> str:
    """A header value for one request to the service `audience`, stamped with the time."""
    # Built by hand, not with dataclasses.asdict (which deep-copies policies and hold: most
    # of the gateway's cost of signing), and without the fields that are None.
    body: dict[str, Any] = {
        "sub": identity.sub, "kind": identity.kind, "iss": identity.iss,
        "roles": list(identity.roles), "permissions": list(identity.permissions),
        "iat": time.time() if now is None else now, "aud": audience,
    }  # fmt: skip
    for name in _OPTIONAL:
        value = getattr(identity, name)
        if value is not None:
            body[name] = value
    payload = _b64(json.dumps(body, separators=(",", ":"), sort_keys=True).encode())
    return f"{payload}.{_b64(_mac(key, payload, method, path))}"


class InvalidIdentity(Unauthorized):
    slug = "internal-identity"


def verify(
    header: str | None,
    key: bytes,
    *,
    method: str,
    path: str,
    audience: str,
    max_age: float,
    now: float | None = None,
) -> Identity:
    """The identity in a header, if its MAC is right, it is for `audience` (this service)
    and it is fresh; else InvalidIdentity."""
    if not header:
        raise InvalidIdentity("This service only answers requests that come through the gateway.")
    payload, _, mac = header.partition(".")
    try:
        given = _unb64(mac)
    except (binascii.Error, ValueError):
        raise InvalidIdentity("Malformed internal identity.") from None
    if not hmac.compare_digest(given, _mac(key, payload, method, path)):
        raise InvalidIdentity("Invalid internal identity signature.")
    try:
        body: dict[str, Any] = json.loads(_unb64(payload))
        if body["kind"] not in KINDS or not math.isfinite(float(body["iat"])):
            raise ValueError("bad kind or time")
        aud = body.get("aud")
        team, policies, hold = body.get("team"), body.get("policies"), body.get("hold")
        if not isinstance(team, str | None) or not isinstance(policies, dict | None):
            raise ValueError("bad team or policies")
        if not isinstance(hold, dict | None):
            raise ValueError("bad hold")
        identity = Identity(
            sub=str(body["sub"]),
            kind=body["kind"],
            iss=str(body["iss"]),
            roles=tuple(body.get("roles", ())),
            permissions=tuple(body.get("permissions", ())),
            sid=body.get("sid"),
            kid=body.get("kid"),
            team=team,
            policies=policies,
            hold=hold,
            iat=float(body["iat"]),
        )
    except (ValueError, KeyError, TypeError):
        raise InvalidIdentity("Malformed internal identity.") from None
    if aud != audience:
        raise InvalidIdentity("This internal identity was signed for another service.")
    current = time.time() if now is None else now
    age = current - identity.iat
    if age > max_age or age < -CLOCK_SKEW_SECONDS:
        raise InvalidIdentity("Internal identity expired.")
    return identity


def service_identity(service: str) -> Identity:
    """How a service names itself when it calls a peer on its own account."""
    return Identity(sub=f"service:{service}", kind="service", iss=service)


async def require_identity(request: Request) -> Identity:
    """FastAPI dependency: the verified caller, or 401 problem+json."""
    cached = getattr(request.state, "identity", None)
    if isinstance(cached, Identity):
        return cached
    settings = request.app.state.settings
    identity = verify(
        request.headers.get(HEADER),
        settings.internal_signing_key.get_secret_value().encode(),
        method=request.method,
        path=request_target(request.scope),
        audience=settings.service_name,
        max_age=settings.identity_max_age_seconds,
    )
    request.state.identity = identity
    if identity.user_id:
        request.scope.setdefault("state", {})["user_id"] = identity.user_id
    return identity


CurrentIdentity = Annotated[Identity, Depends(require_identity)]


def request_target(scope: Any) -> str:
    """The raw path and query of an ASGI request, as the client sent them."""
    raw = scope.get("raw_path") or scope["path"].encode()
    target = raw.split(b"?", 1)[0].decode("latin-1")
    query = scope.get("query_string", b"")
    return f"{target}?{query.decode('latin-1')}" if query else target


class SignedIdentity(httpx.Auth):
    """httpx auth flow that signs each outgoing request with an identity, for the service
    `audience` (the one the client talks to).

    `identity` is fixed (a service acting as itself) or looked up per request from the
    `identity` extension, so one pooled client can act on behalf of many users.
    """

    def __init__(self, key: bytes, identity: Identity | None = None, *, audience: str) -> None:
        self._key = key
        self._identity = identity
        self._audience = audience

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        identity = request.extensions.get("identity", self._identity)
        if isinstance(identity, Identity):
            request.headers[HEADER] = sign(
                identity,
                self._key,
                method=request.method,
                path=request.url.raw_path.decode("ascii"),
                audience=self._audience,
            )
        yield request
