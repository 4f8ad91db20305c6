"""Dependencies of the telemetry routes."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from common.deps import app_state, authorize, require
from common.identity import CurrentIdentity, Identity
from telemetry.runtime import Runtime
from telemetry.service import READ_ALL

READ_OWN = "telemetry:read_own"
WRITE = "telemetry:write"


async def reporter(identity: CurrentIdentity) -> Identity:
    """A user with telemetry:write (their own calls), or a platform service (anyone's)."""
    return identity if identity.kind == "service" else authorize(identity, WRITE)


# A user who may read their own calls (or, with telemetry:read_all, everyone's).
Reader = Annotated[Identity, Depends(require(READ_OWN, READ_ALL))]
Reporter = Annotated[Identity, Depends(reporter)]
RuntimeDep = Annotated[Runtime, Depends(app_state("runtime"))]
