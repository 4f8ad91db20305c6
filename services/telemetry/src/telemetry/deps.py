"""Dependencies of the telemetry routes."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from common.deps import app_state
from common.errors import Forbidden
from common.identity import CurrentIdentity, Identity
from telemetry.runtime import Runtime
from telemetry.service import READ_ALL, caller_id

READ_OWN = "telemetry:read_own"
WRITE = "telemetry:write"


async def reader(identity: CurrentIdentity) -> Identity:
    """A user who may read their own calls (or, with telemetry:read_all, everyone's)."""
    caller_id(identity)
    if not (identity.has(READ_OWN) or identity.has(READ_ALL)):
        raise Forbidden(f"This needs the {READ_OWN} permission.")
    return identity


async def reporter(identity: CurrentIdentity) -> Identity:
    """A user with telemetry:write (their own calls), or a platform service (anyone's)."""
    if identity.kind == "service":
        return identity
    caller_id(identity)
    if not identity.has(WRITE):
        raise Forbidden(f"This needs the {WRITE} permission.")
    return identity


Reader = Annotated[Identity, Depends(reader)]
Reporter = Annotated[Identity, Depends(reporter)]
RuntimeDep = Annotated[Runtime, Depends(app_state("runtime"))]
