"""Keyset pagination cursors: the sort key of a page's last row, opaque to clients.

Format: base64url without padding of a compact JSON array of the key's parts, in order:
a time as integer microseconds since the Unix epoch (UTC; Postgres keeps microseconds),
a UUID as its 32 hex digits, an integer id as itself, from 1 to 2**63 - 1 (a positive
bigint). `(created_at, id)` is `[1767323045678901,"5f0c6f5e8b1a4d0e9c3b2a7d1e4f6b80"]`,
71 characters once encoded.

Decoding names the parts it expects; a cursor that is anything else (not base64url, not
JSON, other parts, a boolean for an integer, a time out of range...) is refused with 422
`invalid-cursor`, as FastAPI refuses any other invalid query parameter.
"""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar, overload

from common.errors import InvalidCursor

Part = datetime | uuid.UUID | int
A = TypeVar("A", datetime, uuid.UUID, int)
B = TypeVar("B", datetime, uuid.UUID, int)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)
BIGINT_MAX = 2**63 - 1
# Far more than any cursor given out: a longer one is refused before it is parsed.
MAX_LENGTH = 256
REFUSED = "The cursor is not one this API gave out."


def encode_cursor(*key: Part) -> str:
    """The cursor for a row whose sort key is `key` (times must be aware)."""
    parts = [_encode_part(part) for part in key]
    text = json.dumps(parts, separators=(",", ":"))
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


@overload
def decode_cursor(cursor: str, first: type[A], /) -> tuple[A]: ...
@overload
def decode_cursor(cursor: str, first: type[A], second: type[B], /) -> tuple[A, B]: ...
def decode_cursor(cursor: str, *kinds: type) -> tuple[Any, ...]:
    """The key `encode_cursor` put in `cursor`, its parts of the `kinds` given; else 422."""
    if len(cursor) > MAX_LENGTH:
        raise InvalidCursor(REFUSED)
    try:
        parts = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if not isinstance(parts, list) or len(parts) != len(kinds):
            raise ValueError("not the parts of this cursor")
        return tuple(_decode_part(part, kind) for part, kind in zip(parts, kinds, strict=True))
    except (ValueError, OverflowError):  # binascii.Error, UnicodeDecodeError: ValueErrors
        raise InvalidCursor(REFUSED) from None


def _encode_part(part: Part) -> str | int:
    if isinstance(part, datetime):
        return (part - EPOCH) // MICROSECOND
    if isinstance(part, uuid.UUID):
        return part.hex
    return part


def _decode_part(part: object, kind: type) -> Part:
    if kind is uuid.UUID:
        if not isinstance(part, str):
            raise ValueError("not text")
        return uuid.UUID(hex=part)
    # bool is an int to Python, not to JSON or Postgres.
    if type(part) is not int:
        raise ValueError("not an integer")
    if kind is datetime:
        return EPOCH + part * MICROSECOND
    if not 0 < part <= BIGINT_MAX:
        raise ValueError("not a positive bigint")
    return part
