"""Admission: the gateway's checks on every proxied request (route, credentials, CSRF,
RBAC, rate), before gateway/proxy.py forwards it."""

from __future__ import annotations

from typing import TYPE_CHECKING

import structlog
from redis.exceptions import RedisError
from starlette.requests import Request

from common.addresses import client_bucket
from common.errors import BadRequest, MethodNotAllowed, NotFound
from common.identity import Identity
from gateway.errors import InvalidKeysLimited, MissingPermission, RateLimited, SessionRequired
from gateway.metrics import RATE_LIMITED
from gateway.rbac import PUBLIC, SESSION_ONLY, SIGNED_IN, allowed_methods, route_for
from gateway.security import Principal, RateDecision, redis_unavailable

log = structlog.get_logger(__name__)

if TYPE_CHECKING:
    from gateway.runtime import Runtime

ANONYMOUS = Identity(sub="anonymous", kind="anonymous", iss="gateway")


async def caller_identity(runtime: Runtime, request: Request) -> Identity:
    """Who is calling this route, checked; raises the problem that stops the request.

    Sets `route_template` in the scope (metrics and logs are labelled by it, never the raw
    path), `user_id` in the scope's state, and the rate-limit headers to return."""
    _refuse_ambiguous_paths(request)
    route = route_for(request.method, request.url.path)
    if route is None:
        allowed = allowed_methods(request.url.path)
        if allowed:
            raise MethodNotAllowed(headers={"Allow": ", ".join(allowed)})
        raise NotFound("No such route.")
    request.scope["route_template"] = route.template
    client = client_bucket(request.scope["state"]["client_address"])
    security = runtime.security
    try:
        if route.needs == PUBLIC:
            limit = runtime.settings.rate_limit_anonymous_per_minute
            _remember(request, await security.hit(f"ip:{client}", "anonymous", limit))
            return ANONYMOUS
        admission = await security.admit(
            request, model=route.model, holds=route.holds, client=client
        )
    except RedisError as exc:
        # Never let a request through unchecked: without Redis nothing is authenticated.
        security.outage.failed()
        log.warning("redis unavailable: request refused", error=repr(exc))
        raise redis_unavailable() from None
    except InvalidKeysLimited:
        RATE_LIMITED.labels("invalid_api_keys").inc()
        raise
    except RateLimited:
        budget = "anonymous" if route.needs == PUBLIC else "model" if route.model else "default"
        RATE_LIMITED.labels(budget).inc()
        raise
    principal = admission.principal
    request.scope["state"]["user_id"] = principal.user_id
    _remember(request, admission.rate)
    security.check_csrf(request, principal)
    _authorize(principal, route.needs)
    return principal.identity()


def _refuse_ambiguous_paths(request: Request) -> None:
    """Dot segments and encoded slashes could name one route to the RBAC check and another
    to the upstream (which may normalise them): such paths are refused outright. An encoded
    slash is taken only in the tail of a route that ends in a path parameter, after its
    fixed part (`/v1/models/openai%2Fgpt-4o`, as the openai SDK's `models.retrieve` sends a
    model's name): whatever the tail says, it is the same route to both."""
    raw = bytes(request.scope.get("raw_path") or b"").split(b"?", 1)[0].lower()
    segments = request.url.path.split("/")
    if b"%5c" in raw or b"\\" in raw or "." in segments or ".." in segments:
        raise BadRequest("Paths may not contain dot segments or encoded slashes.")
    if b"%2f" in raw and not _slash_in_path_tail(request.method, request.url.path, raw):
        raise BadRequest("Paths may not contain dot segments or encoded slashes.")


def _slash_in_path_tail(method: str, path: str, raw: bytes) -> bool:
    route = route_for(method, path)
    if route is None or not route.template.endswith(":path}"):
        return False
    fixed = route.template[: route.template.rindex("{")].lower().encode()
    return raw.startswith(fixed) and b"%2f" not in raw[: len(fixed)]


def _authorize(principal: Principal, needs: str) -> None:
    if needs == SIGNED_IN:
        return
    if needs == SESSION_ONLY:
        if principal.kind != "user":
            raise SessionRequired("This needs a logged-in session, not an API key.")
        return
    if needs not in principal.permissions:
        raise MissingPermission(f"This needs the {needs} permission.")


def _remember(request: Request, decision: RateDecision | None) -> None:
    if decision is not None:
        request.scope["state"]["rate_limit_headers"] = decision.headers()
