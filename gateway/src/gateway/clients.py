"""Every HTTP client the gateway holds to the services: made in the lifespan, closed with it.

Two per upstream, for two kinds of call:
- `clients`: httpx, each call signed as the gateway itself (common.http.peer_client): the
  readiness checks, the services' OpenAPI documents, auth's API-key resolution.
- `proxied`: an aiohttp session, for the requests the gateway passes through
  (gateway/proxy.py), each signed with the caller's identity; its bytes pass untouched.

Both pools hold `GATEWAY_UPSTREAM_MAX_CONNECTIONS` connections per upstream (README.md).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import aiohttp
import httpx

from common.http import peer_client
from gateway.settings import GatewaySettings


@dataclass(frozen=True)
class Upstream:
    """Where proxied requests for one upstream go, and the pooled session that takes them."""

    name: str
    base_url: str
    session: aiohttp.ClientSession


class Upstreams:
    """The clients to each upstream (auth, inference, embeddings, telemetry), by name."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.clients = _signed_clients(settings)
        self.proxied = _proxy_sessions(settings)

    async def aclose(self) -> None:
        await asyncio.gather(*(client.aclose() for client in self.clients.values()))
        await asyncio.gather(*(upstream.session.close() for upstream in self.proxied.values()))


def _signed_clients(settings: GatewaySettings) -> dict[str, httpx.AsyncClient]:
    timeout = httpx.Timeout(
        settings.upstream_read_timeout_seconds,
        connect=settings.upstream_connect_timeout_seconds,
    )
    return {
        name: peer_client(
            url,
            settings,
            peer=name,
            timeout=timeout,
            max_connections=settings.upstream_max_connections,
        )
        for name, url in settings.upstream_urls().items()
    }


UPSTREAM_KEEP_ALIVE_SECONDS = 30.0


def _proxy_sessions(settings: GatewaySettings) -> dict[str, Upstream]:
    """One pooled aiohttp session per upstream (made inside the running event loop).

    Bytes pass through untouched (no decompression, no headers of aiohttp's own), and no
    cookie jar: one caller's Set-Cookie must never reach another's request."""
    timeout = aiohttp.ClientTimeout(
        total=None,
        # aiohttp's `connect` also counts the wait for a free pooled connection: a burst
        # past GATEWAY_UPSTREAM_MAX_CONNECTIONS queues for as long as an answer may take,
        # rather than failing after the (short) time a TCP connect is given.
        connect=settings.upstream_read_timeout_seconds,
        sock_connect=settings.upstream_connect_timeout_seconds,
        sock_read=settings.upstream_read_timeout_seconds,
    )
    return {
        name: Upstream(
            name,
            url.rstrip("/"),
            aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=settings.upstream_max_connections,
                    use_dns_cache=True,
                    # Idle connections are let go well before the services close theirs
                    # (common.serve.KEEP_ALIVE_SECONDS): never reused as they close.
                    keepalive_timeout=UPSTREAM_KEEP_ALIVE_SECONDS,
                ),
                timeout=timeout,
                auto_decompress=False,
                cookie_jar=aiohttp.DummyCookieJar(),
                skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent", "Content-Type"),
                trust_env=False,
            ),
        )
        for name, url in settings.upstream_urls().items()
    }
