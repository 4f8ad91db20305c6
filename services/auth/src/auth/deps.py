"""Dependencies of the auth routes: the runtime, the caller, its permissions, the request
context."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import Depends, Request

from auth.errors import SessionRequired
from auth.runtime import Runtime
from auth.service import Context
from common.deps import CurrentUser as CurrentUser  # shared caller checks, re-exported
from common.deps import app_state
from common.deps import require as require
from common.errors import Forbidden
from common.identity import CurrentIdentity, Identity
from common.tracing import current_trace_id

RuntimeDep = Annotated[Runtime, Depends(app_state("runtime"))]


def client_ip(request: Request) -> str:
    # Only the gateway reaches this service (signed identity) and it sets this header.
    forwarded = request.headers.get("x-forwarded-for", "")
    if forwarded:
        return forwarded.split(",")[0].strip()[:64]
    return request.client.host if request.client else ""


async def request_context(
    request: Request, runtime: RuntimeDep, identity: CurrentIdentity
) -> Context:
    return Context(
        now=runtime.clock(),
        ip=client_ip(request),
        user_agent=request.headers.get("user-agent", "")[:512],
        trace_id=current_trace_id(),
        actor_id=uuid.UUID(identity.user_id) if identity.user_id else None,
    )


async def current_session(identity: CurrentUser) -> Identity:
    if identity.kind != "user" or not identity.sid:
        raise SessionRequired("This needs a logged-in session, not an API key.")
    return identity


async def gateway_only(identity: CurrentIdentity) -> Identity:
    if identity.kind != "service" or identity.sub != "service:gateway":
        raise Forbidden("Only the gateway may call this.")
    return identity


async def service_only(identity: CurrentIdentity) -> Identity:
    if identity.kind != "service":
        raise Forbidden("Only the platform's services may call this.")
    return identity


Ctx = Annotated[Context, Depends(request_context)]
CurrentSession = Annotated[Identity, Depends(current_session)]
