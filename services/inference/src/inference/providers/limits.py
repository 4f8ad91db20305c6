"""Limits on what a provider sends back, enforced as the SDKs' HTTP clients read it.

Both SDKs read a plain answer, or an error's body, whole, and a stream line by line, with
no limit of their own: a member's own endpoint could answer with gigabytes, or with one
line that never ends. `AnswerLimits.install` hooks into the httpx2 client an SDK speaks
through, so that each answer:
- is asked for uncompressed, and refused when it comes compressed anyway: a limit on the
  bytes read must also be one on the bytes decoded (a 1 MB gzip body inflates to 1 GB);
- is refused before it is read when its Content-Length is over its limit;
- has its bytes counted as they arrive: past `body_bytes` for a plain answer (or an error),
  `stream_bytes` for a whole event stream, or `event_bytes` for one event of it, reading
  stops and the call fails with a ProviderError of kind "too_large" (a 502, not retried).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx2

from inference.providers.base import ProviderError

EVENT_STREAM = "text/event-stream"
# A blank line ends a server-sent event; lines end with LF, CRLF or CR, so a blank line is
# two line ends in a row that are not one CRLF. (Literals only: nothing to backtrack.)
EVENT_END = re.compile(rb"\n\n|\r\r|\n\r")


@dataclass(frozen=True)
class AnswerLimits:
    """The most a provider may send: a plain answer or an error's body; a whole event
    stream; one event of a stream."""

    body_bytes: int
    stream_bytes: int
    event_bytes: int

    def install(self, client: httpx2.AsyncClient) -> None:
        """Apply the limits to every answer `client` receives. The response hook runs
        first, so a hook that reads a body (huggingface_hub reads error bodies) reads
        through the limits too."""
        hooks = client.event_hooks
        client.event_hooks = {
            "request": [*hooks["request"], self._uncompressed],
            "response": [self._limit, *hooks["response"]],
        }

    async def _uncompressed(self, request: httpx2.Request) -> None:
        request.headers["Accept-Encoding"] = "identity"

    async def _limit(self, response: httpx2.Response) -> None:
        encoding = response.headers.get("content-encoding", "").strip().lower()
        if encoding not in ("", "identity"):
            await response.aclose()
            raise ProviderError(
                f"The provider sent a compressed answer ({encoding}) although asked for an "
                "uncompressed one; its size could not be limited.",
                kind="too_large",
                retryable=False,
                status=502,
            )
        streamed = response.headers.get("content-type", "").startswith(EVENT_STREAM)
        limit = (
            _Limit("stream", self.stream_bytes, "MAX_STREAM_BYTES")
            if streamed
            else _Limit("answer", self.body_bytes, "MAX_RESPONSE_BYTES")
        )
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit.bytes:
            await response.aclose()
            raise limit.exceeded()
        assert isinstance(response.stream, httpx2.AsyncByteStream)
        event = _Limit("stream event", self.event_bytes, "MAX_STREAM_CHUNK_BYTES")
        response.stream = _LimitedStream(response.stream, limit, event if streamed else None)


@dataclass(frozen=True)
class _Limit:
    what: str
    bytes: int
    setting: str

    def exceeded(self) -> ProviderError:
        return ProviderError(
            f"The provider's {self.what} exceeded {self.bytes} bytes (INFERENCE_{self.setting}).",
            kind="too_large",
            retryable=False,
            status=502,
        )


class _LimitedStream(httpx2.AsyncByteStream):
    """A response body that fails once it is over `total`, or once one server-sent event
    in it is over `event`."""

    def __init__(self, inner: httpx2.AsyncByteStream, total: _Limit, event: _Limit | None) -> None:
        self._inner = inner
        self._total = total
        self._event = event

    async def __aiter__(self) -> AsyncIterator[bytes]:
        total = 0
        in_event = 0  # bytes since the last event ended
        last = b""  # the previous chunk's last byte: an event's end may straddle two chunks
        async for chunk in self._inner:
            total += len(chunk)
            if total > self._total.bytes:
                raise self._total.exceeded()
            if self._event is not None and chunk:
                # The chunk's events: the end of the one in progress, whole ones, the start
                # of the next (which is in progress now).
                pieces = EVENT_END.split(last + chunk)
                if len(pieces) == 1:
                    in_event += len(chunk)
                    longest = in_event
                else:
                    whole = max(map(len, pieces[1:-1]), default=0)
                    longest = max(in_event + len(pieces[0]) - len(last), whole)
                    in_event = len(pieces[-1])
                if max(longest, in_event) > self._event.bytes:
                    raise self._event.exceeded()
                last = chunk[-1:]
            yield chunk

    async def aclose(self) -> None:
        await self._inner.aclose()
