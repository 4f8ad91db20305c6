"""The gateway's checks on every proxied request: route, credentials, CSRF, RBAC, rate."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from redis.exceptions import RedisError

from common.errors import BadRequest, Forbidden, MethodNotAllowed, NotFound, ServiceUnavailable
from common.identity import Identity
from gateway.rbac import PUBLIC, SESSION_ONLY, SIGNED_IN, allowed_methods, route_for
from gateway.security import Principal, RateDecision, Security

ANONYMOUS = Identity(sub="anonymous", kind="anonymous", iss="gateway")


class MissingPermission(Forbidden):
    slug = "missing-permission"


class SessionRequired(Forbidden):
    slug = "session-required"


async def caller_identity(request: Request) -> Identity:
    """Who is calling this route, checked; raises the problem that stops the request."""
    _refuse_ambiguous_paths(request)
    route = route_for(request.method, request.url.path)
    if route is None:
        allowed = allowed_methods(request.url.path)
        if allowed:
            raise MethodNotAllowed(headers={"Allow": ", ".join(allowed)})
        raise NotFound("No such route.")
    # Metrics and access logs are labelled by the route template, never the raw path.
    request.scope["route_template"] = route.template
    security: Security = request.app.state.security
    try:
        if route.needs == PUBLIC:
            client = request.client.host if request.client else "unknown"
            limit = request.app.state.settings.rate_limit_anonymous_per_minute
            decision = await security.hit(f"ip:{client}", "anonymous", limit)
            _remember(request, decision)
            return ANONYMOUS
        principal = await security.authenticate(request)
        request.scope.setdefault("state", {})["user_id"] = principal.user_id
        budget = security.budget(principal.roles)
        if route.model:
            decision = await security.hit(principal.rate_key, "model", budget.model)
        else:
            decision = await security.hit(principal.rate_key, "default", budget.default)
        _remember(request, decision)
    except RedisError:
        # Never let a request through unchecked: without Redis nothing is authenticated.
        raise ServiceUnavailable("Authentication is unavailable; try again shortly.") from None
    security.check_csrf(request, principal)
    _authorize(principal, route.needs)
    return principal.identity()


def _refuse_ambiguous_paths(request: Request) -> None:
    """Dot segments and encoded slashes could name one route to the RBAC check and another
    to the upstream (which may normalise them): such paths are refused outright."""
    raw = bytes(request.scope.get("raw_path") or b"").split(b"?", 1)[0].lower()
    segments = request.url.path.split("/")
    if b"%2f" in raw or b"%5c" in raw or b"\\" in raw or "." in segments or ".." in segments:
        raise BadRequest("Paths may not contain dot segments or encoded slashes.")


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
        request.state.rate_limit_headers = decision.headers()


CallerIdentity = Annotated[Identity, Depends(caller_identity)]
