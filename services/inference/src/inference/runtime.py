"""What the inference service holds for its life: built once by the lifespan (main.py),
kept on `app.state.runtime`, handed to the service functions first."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from inference.cache import CacheStore
from inference.crypto import Keyring
from inference.errors import TooManyHubCalls
from inference.events import EventSink
from inference.failover import Failover
from inference.governance import Governance
from inference.pricing import PriceBook
from inference.providers.base import Provider
from inference.providers.egress import EgressPolicy
from inference.routing import Routing
from inference.settings import InferenceSettings
from inference.streams import StreamSlots

R = TypeVar("R")


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


class HubCalls:
    """The Hub's calls (huggingface_hub is synchronous) in threads of their own, never the
    default executor's (the semantic cache's work): a slow or unreachable Hub then delays
    only Hub calls. Each user has at most `per_user` in flight on this replica, counted
    until its thread returns (a thread outlives a caller's timeout), so one member's
    searches cannot take every thread from the others."""

    def __init__(self, *, threads: int, per_user: int) -> None:
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="hub")
        self._per_user = per_user
        self._in_flight: Counter[str] = Counter()

    async def run(self, user: str, ask: Callable[[], R], timeout: float) -> R:  # noqa: ASYNC109 (the thread outlives it)
        """`ask()` in a Hub thread, within `timeout` seconds (TimeoutError); TooManyHubCalls
        when `user` already has `per_user` calls in flight."""
        if self._in_flight[user] >= self._per_user:
            raise TooManyHubCalls(
                f"You have {self._per_user} Hub calls in flight already; try again shortly.",
                headers={"Retry-After": "1"},
            )
        self._in_flight[user] += 1
        done = asyncio.get_running_loop().run_in_executor(self._executor, ask)
        done.add_done_callback(lambda finished: self._release(user, finished))
        return await asyncio.wait_for(asyncio.shield(done), timeout)

    def _release(self, user: str, finished: asyncio.Future[Any]) -> None:
        self._in_flight[user] -= 1
        if self._in_flight[user] <= 0:
            del self._in_flight[user]
        if not finished.cancelled():
            finished.exception()  # retrieved: a call whose caller gave up raised for no one

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


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
    # Hub search and model info, in threads of their own, a few per user.
    hub: HubCalls
    clock: Callable[[], float] = time.time
