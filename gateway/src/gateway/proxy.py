"""Forwarding one request to its upstream and streaming the answer back unbuffered."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import structlog
from fastapi import Request
from starlette.responses import Response, StreamingResponse

from common.errors import BadGateway, GatewayTimeout, Problem
from common.identity import HEADER as IDENTITY_HEADER
from common.identity import Identity

log = structlog.get_logger(__name__)

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
# Never forwarded: the caller's credentials (the gateway has checked them; services trust
# the signed identity only), an identity header the caller tried to supply, and what httpx sets.
NOT_FORWARDED = HOP_BY_HOP | {
    "host",
    "content-length",
    "cookie",
    "authorization",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "forwarded",
    "x-real-ip",
    "x-request-id",
    IDENTITY_HEADER.lower(),
}
# Answers up to this size with a Content-Length are relayed in one piece; streams (SSE,
# chunked) and larger bodies are relayed chunk by chunk as they arrive.
BUFFERED_MAX_BYTES = 256 * 1024
# The gateway's own server sets these on the way out.
NOT_RETURNED = HOP_BY_HOP | {"date", "server", "x-request-id"}


class PayloadTooLarge(Problem):
    status, slug, title = 413, "payload-too-large", "Content Too Large"


def _connection_tokens(headers: httpx.Headers | list[tuple[bytes, bytes]]) -> set[str]:
    """Headers named in `Connection:` are hop-by-hop too (RFC 9110 section 7.6.1)."""
    items = (
        headers.multi_items()
        if isinstance(headers, httpx.Headers)
        else [(k.decode("latin-1"), v.decode("latin-1")) for k, v in headers]
    )
    return {
        token.strip().lower()
        for name, value in items
        if name.lower() == "connection"
        for token in value.split(",")
    }


def request_headers(request: Request) -> list[tuple[str, str]]:
    raw = request.headers.raw
    dropped = NOT_FORWARDED | _connection_tokens(raw)
    headers = [
        (name.decode("latin-1"), value.decode("latin-1"))
        for name, value in raw
        if name.decode("latin-1").lower() not in dropped
    ]
    client = request.client.host if request.client else ""
    headers.append(("x-forwarded-for", client))
    headers.append(("x-forwarded-proto", request.url.scheme))
    # The id the gateway logs under (the caller's, if it was valid): one id end to end.
    request_id = getattr(request.state, "request_id", None)
    if request_id:
        headers.append(("x-request-id", request_id))
    return headers


def response_headers(headers: httpx.Headers) -> list[tuple[str, str]]:
    dropped = NOT_RETURNED | _connection_tokens(headers)
    return [(name, value) for name, value in headers.multi_items() if name.lower() not in dropped]


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"Request bodies are limited to {limit} bytes.")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"Request bodies are limited to {limit} bytes.")
        chunks.append(chunk)
    return b"".join(chunks)


async def forward(
    request: Request,
    *,
    upstream: str,
    client: httpx.AsyncClient,
    identity: Identity,
    max_body_bytes: int,
) -> Response:
    body = await read_body(request, max_body_bytes)
    target = request.scope.get("raw_path", request.url.path.encode()).decode("latin-1")
    if request.url.query:
        target += "?" + request.url.query
    outgoing = client.build_request(
        request.method,
        target,
        headers=request_headers(request),
        content=body,
        extensions={"identity": identity},
    )
    try:
        response = await client.send(outgoing, stream=True)
    except httpx.TimeoutException:
        log.warning("upstream timeout", upstream=upstream)
        raise GatewayTimeout(f"The {upstream} service did not answer in time.") from None
    except httpx.TransportError as exc:
        log.warning("upstream unreachable", upstream=upstream, error=type(exc).__name__)
        raise BadGateway(f"The {upstream} service is unavailable.") from None

    headers = [
        (name.lower().encode("latin-1"), value.encode("latin-1"))
        for name, value in response_headers(response.headers)
    ]
    length = response.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) <= BUFFERED_MAX_BYTES:
        # A small answer of known size: one write to the client instead of a stream of them.
        try:
            body = await response.aread()
        except httpx.TransportError as exc:
            log.warning("upstream body broke", upstream=upstream, error=type(exc).__name__)
            raise BadGateway(f"The {upstream} service's answer broke off.") from None
        finally:
            await response.aclose()
        buffered = Response(body, status_code=response.status_code)
        buffered.raw_headers = headers
        return buffered

    async def stream() -> AsyncIterator[bytes]:
        try:
            async for chunk in response.aiter_raw():
                yield chunk
        except httpx.TransportError as exc:
            # Headers are already sent: abort the connection (no final chunk), so the client
            # sees a broken response rather than a complete-looking, truncated one.
            log.warning("upstream stream broke", upstream=upstream, error=type(exc).__name__)
            raise
        finally:
            await response.aclose()

    streaming = StreamingResponse(stream(), status_code=response.status_code)
    streaming.raw_headers = headers
    return streaming
