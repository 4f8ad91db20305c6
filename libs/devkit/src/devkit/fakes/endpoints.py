"""What the fakes' endpoints share: reading the bearer key, parsing the JSON body, and
answering early (a 401, a malformed body) by raising `Refused` with the protocol's response.

Each fake keeps its own wording and error shape; only the mechanics live here.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

__all__ = ["Refused", "answer_refused", "bearer_key", "json_body", "same_secret"]


class Refused(Exception):
    """Raised by an endpoint to answer `response` at once (the app renders it as is)."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status_code)
        self.response = response


async def answer_refused(request: Request, exc: Exception) -> Response:
    """The exception handler for `Refused`."""
    assert isinstance(exc, Refused)
    return exc.response


def bearer_key(request: Request) -> str | None:
    """The key of an `Authorization: Bearer <key>` header, or None without one."""
    scheme, _, key = request.headers.get("authorization", "").partition(" ")
    return key if scheme.lower() == "bearer" and key else None


def same_secret(key: str, expected: str | None) -> bool:
    """Whether `key` is `expected`, compared in constant time (never when none is set)."""
    return expected is not None and secrets.compare_digest(key.encode(), expected.encode())


async def json_body(request: Request, unparsable: Callable[[], Response]) -> Any:
    """The parsed body; raises `Refused(unparsable())` when it is not JSON."""
    try:
        return await request.json()
    except ValueError:
        raise Refused(unparsable()) from None
