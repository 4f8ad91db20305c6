"""Dependencies every service shares: what the lifespan put on app.state."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request


def app_state(name: str) -> Callable[[Request], Coroutine[Any, Any, Any]]:
    """A dependency returning `app.state.<name>`, set by the app's lifespan.

    async on purpose: FastAPI runs a plain `def` dependency in a worker thread, a thread
    hop per request on the hot path."""

    async def get(request: Request) -> Any:
        return getattr(request.app.state, name)

    get.__name__ = f"app_state_{name}"
    return get
