"""Client addresses as abuse counters see them (login throttling, per-address budgets)."""

from __future__ import annotations

import ipaddress


def client_bucket(ip: str) -> str:
    """The unit a per-address counter counts: an IPv4 address; an IPv6 client's /64 (one
    host commonly gets a whole /64, and could otherwise start afresh at each of its
    addresses); an IPv4-mapped IPv6 address as the IPv4 one; anything that is not an
    address as one "unknown" client."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return "unknown"
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)
