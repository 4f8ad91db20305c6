"""Dependencies of the inference routes."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from common.deps import app_state
from common.errors import Forbidden, Unauthorized
from common.identity import CurrentIdentity, Identity
from inference.runtime import Runtime


async def caller(identity: CurrentIdentity) -> Identity:
    """A user (session or API key), possibly relayed by another service on their behalf."""
    if identity.user_id is None:
        raise Unauthorized("Model calls are made for a user; sign in or use an API key.")
    return identity


def require(permission: str) -> object:
    async def check(identity: Annotated[Identity, Depends(caller)]) -> Identity:
        if not identity.has(permission):
            raise Forbidden(f"This needs the {permission} permission.")
        return identity

    return Depends(check)


Caller = Annotated[Identity, Depends(caller)]
RuntimeDep = Annotated[Runtime, Depends(app_state("runtime"))]
