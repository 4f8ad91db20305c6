"""The embeddings service's long-lived infrastructure, built once by the lifespan (main.py)
and put on `app.state.runtime`; routes get it with deps.RuntimeDep."""

from __future__ import annotations

import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from embeddings.clients import Inference
from embeddings.repository import DocumentTable
from embeddings.settings import EmbeddingsSettings


@dataclass(frozen=True)
class Searchable:
    """What a search needs of a collection. None of it changes while its documents table
    exists: a model change moves to a new table (and drops this one) in the same
    transaction, and a delete drops it, so a search through a stale copy fails with
    "no such table" instead of answering from the wrong collection."""

    owner_id: uuid.UUID
    model: str
    table: DocumentTable


class SearchableCollections:
    """This replica's copy of the collections it searched lately (a bounded LRU): a query
    reads the collection row only on a miss, or when its table has gone."""

    def __init__(self, size: int = 10_000) -> None:
        self.size = size
        self._known: OrderedDict[uuid.UUID, Searchable] = OrderedDict()

    def get(self, collection_id: uuid.UUID) -> Searchable | None:
        found = self._known.get(collection_id)
        if found is not None:
            self._known.move_to_end(collection_id)
        return found

    def remember(self, collection_id: uuid.UUID, found: Searchable) -> None:
        self._known[collection_id] = found
        if len(self._known) > self.size:
            self._known.popitem(last=False)

    def forget(self, collection_id: uuid.UUID) -> None:
        self._known.pop(collection_id, None)


@dataclass
class Runtime:
    """What the rules need beyond one unit of work."""

    settings: EmbeddingsSettings
    # Only for the reads outside any unit of work (repository.outside_transaction: the
    # query's, an upsert's look before it embeds); everything else is in a unit of work.
    engine: AsyncEngine
    # The worker's units of work (common.db.transaction); a request's is its DbSession.
    sessionmaker: async_sessionmaker[AsyncSession]
    inference: Inference
    redis: Redis
    # Tells the background worker that a collection has work (an index to build, a model
    # change to run).
    poke: Callable[[uuid.UUID], None]
    searchable: SearchableCollections = field(default_factory=SearchableCollections)
