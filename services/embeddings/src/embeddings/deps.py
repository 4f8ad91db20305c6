"""Dependencies of the embeddings routes."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import Depends

from common.deps import app_state
from common.errors import Forbidden
from common.identity import CurrentIdentity, Identity
from embeddings.errors import CollectionNotFound
from embeddings.runtime import Runtime
from embeddings.service import owner_of


def require(permission: str) -> object:
    """The caller, a user (session or API key) holding `permission`."""

    async def check(identity: CurrentIdentity) -> Identity:
        owner_of(identity)  # 401 for anyone but a user
        if not identity.has(permission):
            raise Forbidden(f"This needs the {permission} permission.")
        return identity

    return Depends(check)


# Dependencies are `async def`: FastAPI runs a plain `def` one in a worker thread, a hop
# per request.


async def collection_id(id: str) -> uuid.UUID:
    """The path's collection id; not a UUID is no such collection."""
    try:
        return uuid.UUID(id)
    except ValueError:
        raise CollectionNotFound("No such collection.") from None


Reader = Annotated[Identity, require("embeddings:read")]
Writer = Annotated[Identity, require("embeddings:write")]
CollectionId = Annotated[uuid.UUID, Depends(collection_id)]
RuntimeDep = Annotated[Runtime, Depends(app_state("runtime"))]
