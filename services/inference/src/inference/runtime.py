"""What the inference service holds for its life: built once by the lifespan (main.py),
kept on `app.state.runtime`, handed to the service functions first."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from inference.cache import CacheStore
from inference.crypto import Keyring
from inference.events import EventSink
from inference.failover import Failover
from inference.governance import Governance
from inference.pricing import PriceBook
from inference.providers.base import Provider
from inference.providers.egress import EgressPolicy
from inference.routing import Routing
from inference.settings import InferenceSettings
from inference.streams import StreamSlots


class TtlCache:
    """A tiny in-process cache: entries live `ttl` seconds."""

    def __init__(self, ttl: float) -> None:
        self._ttl = ttl
        self._items: dict[Any, tuple[float, Any]] = {}

    def get(self, key: Any) -> Any:
        item = self._items.get(key)
        if item is None or item[0] < time.monotonic():
            self._items.pop(key, None)
            return None
        return item[1]

    def put(self, key: Any, value: Any, *, ttl: float | None = None) -> None:
        if len(self._items) > 10_000:
            self._items.clear()
        self._items[key] = (time.monotonic() + (self._ttl if ttl is None else ttl), value)

    def clear(self) -> None:
        self._items.clear()


@dataclass
class Runtime:
    """What a model call needs, built once in the lifespan. `clock` (seconds since the
    epoch) times budget periods, holds and token windows; tests replace it."""

    settings: InferenceSettings
    keyring: Keyring
    egress: EgressPolicy
    providers: dict[str, Provider]
    failover: Failover
    sink: EventSink
    credentials: TtlCache
    aliases: TtlCache
    # The weighted aliases' round robin and the least-latency view (inference.routing).
    routing: Routing
    # Each credential's model list (GET /v1/models), by credential id.
    model_lists: TtlCache
    streams: StreamSlots
    governance: Governance
    # Every price (inference.pricing): the catalog's, INFERENCE_PRICES', the admins'.
    prices: PriceBook
    # The response cache (inference.cache).
    cache: CacheStore
    clock: Callable[[], float] = time.time
