"""Server-sent events as OpenAI streams them, for every service that streams an answer.

Each event is one line `data: <compact JSON>` and a blank line; the stream ends with
`data: [DONE]` (OpenAI's sentinel, which its SDKs wait for). No `event:` or `id:` fields.
Used as a module: `sse.event(chunk)`, `sse.DONE`, `sse.response(events)`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterable
from typing import Any

from fastapi.responses import StreamingResponse

MEDIA_TYPE = "text/event-stream"
# No caching, and no buffering by a proxy in front (nginx honours X-Accel-Buffering).
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
DONE = b"data: [DONE]\n\n"


def event(data: Any) -> bytes:
    """One event carrying `data` as compact JSON."""
    return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


def response(events: AsyncIterable[bytes]) -> StreamingResponse:
    """A streamed answer of `events` (each from `event`, then `DONE`)."""
    return StreamingResponse(events, media_type=MEDIA_TYPE, headers=HEADERS)
