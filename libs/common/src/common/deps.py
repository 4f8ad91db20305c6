"""Dependencies every service shares: what the lifespan put on app.state, and who may call.

They are `async def` on purpose: FastAPI runs a plain `def` dependency in a worker thread,
a thread hop per request on the hot path."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import Depends, Request

from common.errors import MissingPermission, NotAUser
from common.identity import CurrentIdentity, Identity


def app_state(name: str) -> Callable[[Request], Coroutine[Any, Any, Any]]:
    """A dependency returning `app.state.<name>`, set by the app's lifespan."""

    async def get(request: Request) -> Any:
        return getattr(request.app.state, name)

    get.__name__ = f"app_state_{name}"
    return get


def authorize(identity: Identity, *permissions: str) -> Identity:
    """`identity` if it is a user's (a session or an API key, maybe relayed by a service on
    the user's behalf) holding one of `permissions` (any user, if none are named); else
    401 NotAUser or 403 MissingPermission."""
    if identity.user_id is None:
        raise NotAUser("This is done for a user: sign in or use an API key.")
    if permissions and not any(identity.has(p) for p in permissions):
        raise MissingPermission(f"This needs the {permissions[0]} permission.")
    return identity


async def current_user(identity: CurrentIdentity) -> Identity:
    """The caller, a user (see `authorize`)."""
    return authorize(identity)


def require(*permissions: str) -> Callable[[Identity], Coroutine[Any, Any, Identity]]:
    """A dependency: the caller, a user holding one of `permissions` (see `authorize`).

    It checks the verified identity itself rather than depending on `current_user`: one
    dependency fewer for FastAPI to solve on every request."""
    if not permissions:
        raise ValueError("name the permission(s) required; current_user takes any user")

    async def check(identity: CurrentIdentity) -> Identity:
        return authorize(identity, *permissions)

    check.__name__ = f"require_{'_or_'.join(permissions)}"
    return check


CurrentUser = Annotated[Identity, Depends(current_user)]
