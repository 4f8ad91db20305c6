"""Who the client is: the socket's peer, or, when that peer is a trusted reverse proxy
(GATEWAY_TRUSTED_PROXIES), the address the proxy reports in X-Forwarded-For.

X-Forwarded-For lists the addresses a request came through, each proxy appending the one
it received the request from (`client, proxy1`; the last proxy is the socket peer).
Anyone can write the left part, so the list is read from the right: the client is the
first address that is not itself a trusted proxy (the leftmost when all are). An entry
that is not an address ends the reading, and the last trusted proxy read is the client.

The same trust decides whether an inbound W3C trace context is joined (common.middleware).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from starlette.types import Scope

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
FORWARDED_FOR = b"x-forwarded-for"
# Proxies a request may have come through; entries further left are not read.
MAX_HOPS = 16


def _address(text: str) -> Address | None:
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # a dual-stack socket's view of an IPv4 peer
    return address


class TrustedProxies:
    def __init__(self, networks: Iterable[Network]) -> None:
        self._networks = tuple(networks)

    def _trusted(self, address: Address | None) -> bool:
        return address is not None and any(address in net for net in self._networks)

    def peer_trusted(self, scope: Scope) -> bool:
        """Whether the socket's peer is a trusted proxy."""
        client = scope.get("client")
        return bool(self._networks) and client is not None and self._trusted(_address(client[0]))

    def client_address(self, scope: Scope) -> str:
        """The client's address; "" when the connection has no peer address."""
        client = scope.get("client")
        peer = client[0] if client else ""
        if not self.peer_trusted(scope):
            return peer
        forwarded = [
            entry
            for name, value in scope["headers"]
            if name == FORWARDED_FOR
            for entry in value.decode("latin-1").split(",")
        ]
        found = peer
        for entry in reversed(forwarded[-MAX_HOPS:]):
            address = _address(entry)
            if address is None:
                break
            found = str(address)
            if not self._trusted(address):
                break
        return found
