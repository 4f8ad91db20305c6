"""Dependencies of the embeddings routes."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import Depends

from common.deps import app_state, require
from common.identity import Identity
from embeddings.errors import CollectionNotFound
from embeddings.runtime import Runtime

# Dependencies are `async def`: FastAPI runs a plain `def` one in a worker thread, a hop
# per request.


async def collection_id(id: str) -> uuid.UUID:
    """The path's collection id; not a UUID is no such collection."""
    try:
        return uuid.UUID(id)
    except ValueError:
        raise CollectionNotFound("No such collection.") from None


Reader = Annotated[Identity, Depends(require("embeddings:read"))]
Writer = Annotated[Identity, Depends(require("embeddings:write"))]
CollectionId = Annotated[uuid.UUID, Depends(collection_id)]
RuntimeDep = Annotated[Runtime, Depends(app_state("runtime"))]
