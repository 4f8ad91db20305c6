"""One pooled httpx client per peer, signing every call with an internal identity."""

from __future__ import annotations

import httpx

from common.identity import SignedIdentity, service_identity
from common.settings import ServiceSettings


def peer_client(
    base_url: str,
    settings: ServiceSettings,
    *,
    peer: str,
    timeout: httpx.Timeout | float = 30.0,
    max_connections: int = 100,
) -> httpx.AsyncClient:
    """A client for the peer service named `peer` (its service_name: the audience of every
    signed call). Calls are signed as this service unless a request carries another
    identity in `extensions={"identity": ...}` (acting for a user)."""
    return httpx.AsyncClient(
        base_url=base_url,
        auth=SignedIdentity(
            settings.internal_signing_key.get_secret_value().encode(),
            service_identity(settings.service_name),
            audience=peer,
        ),
        timeout=timeout,
        limits=httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        ),
        trust_env=False,
    )
