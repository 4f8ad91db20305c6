"""Dependencies of the telemetry routes."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from common.deps import app_state, authorize, require
from common.identity import CurrentIdentity, Identity
from telemetry.errors import ServicesOnly
from telemetry.runtime import Runtime
from telemetry.service import READ_ALL

READ_OWN = "telemetry:read_own"
WRITE = "telemetry:write"


async def reporter(identity: CurrentIdentity) -> Identity:
    """A user with telemetry:write (their own calls), or a platform service (anyone's)."""
    return identity if identity.kind == "service" else authorize(identity, WRITE)


# The services that ask what was spent: inference (its budget counters) and auth (the
# spend it shows). A user never may, nor may any other service.
SPEND_READERS = frozenset({"service:inference", "service:auth"})


async def spend_reader(identity: CurrentIdentity) -> Identity:
    if identity.kind != "service" or identity.sub not in SPEND_READERS:
        raise ServicesOnly("Only inference and auth may ask what was spent.")
    return identity


# A user who may read their own calls (or, with telemetry:read_all, everyone's).
Reader = Annotated[Identity, Depends(require(READ_OWN, READ_ALL))]
Reporter = Annotated[Identity, Depends(reporter)]
SpendReader = Annotated[Identity, Depends(spend_reader)]
RuntimeDep = Annotated[Runtime, Depends(app_state("runtime"))]
