"""One pooled httpx client per upstream service, made in the lifespan."""

from __future__ import annotations

import httpx

from common.http import peer_client
from gateway.settings import GatewaySettings


def upstream_clients(settings: GatewaySettings) -> dict[str, httpx.AsyncClient]:
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
