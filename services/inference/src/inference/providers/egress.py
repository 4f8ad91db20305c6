"""Where inference may connect on a member's behalf: the egress policy for provider URLs.

A credential's `base_url` is chosen by whoever stores the credential, so every connection
to a provider goes through one guard (the SSRF defence):

- The host is resolved when the connection is opened (off the event loop), every address
  it resolves to is checked, and the connection goes to a checked address itself: DNS cannot
  answer one address to the check and another to the connect (no rebinding gap). TLS still
  names the host (SNI and certificate check), and so does the Host header.
- Refused: loopback, private (RFC 1918, shared 100.64/10, benchmarking, documentation...),
  link-local (169.254.169.254, the cloud metadata service), unique-local, site-local,
  multicast, unspecified and reserved addresses, the IPv6 forms that carry one of those
  (IPv4-mapped, NAT64, 6to4), and the networks in INFERENCE_REFUSED_NETWORKS (a cluster's
  pod and service ranges when they are not private addresses). A host with one refused
  address is refused whole.
- Unless the address is in INFERENCE_ALLOWED_PRIVATE_NETWORKS: an admin's CIDRs for
  providers on the private network (a vLLM in the cluster; `make run` allows loopback).
- Never, even on an allowed network, the platform's own endpoints: inference's own port on
  loopback, its PostgreSQL and Redis (when their URLs name an address), and the `ip:port`
  pairs in INFERENCE_REFUSED_ENDPOINTS (`make run` lists the gateway and the services).
  An endpoint on a loopback address stands for every loopback address.
- Redirects are never followed: a 3xx answer is a provider error (RedirectRefused).

Two HTTP stacks call providers, so the guard has one adapter per stack: an aiohttp
connector (the openai SDK's transport) and an httpcore2 network backend (huggingface_hub's
httpx2 client). Both call `resolve`, which raises DestinationRefused; the providers turn it
into a problem that names the policy, never the target's answer.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import anyio
import httpcore2
import httpx2
from aiohttp.abc import ResolveResult

from inference.providers.base import ProviderError
from inference.settings import InferenceSettings, IPNetwork, parse_endpoint

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

ALLOW_SETTING = "INFERENCE_ALLOWED_PRIVATE_NETWORKS"
OWN_SERVICE = "is one of the platform's own services, never a provider"
LOOPBACK: tuple[IPNetwork, ...] = (
    ipaddress.IPv4Network("127.0.0.0/8"),
    ipaddress.IPv6Network("::1/128"),
)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_UNIQUE_LOCAL = ipaddress.IPv6Network("fc00::/7")


class DestinationRefused(ProviderError):
    """The egress policy refused the provider's address; nothing was sent to it."""

    def __init__(self, message: str) -> None:
        super().__init__(message, kind="egress_refused", retryable=False)


class RedirectRefused(ProviderError):
    """The provider answered with a redirect, which is never followed."""

    def __init__(self) -> None:
        super().__init__(
            "The provider answered with a redirect; inference never follows redirects "
            "(egress policy): set the credential's base_url to the provider's own address.",
            kind="redirect",
            retryable=False,
        )


def egress_error(exc: BaseException) -> ProviderError | None:
    """The DestinationRefused or RedirectRefused behind `exc` (SDKs wrap what a transport
    raises: the openai SDK in an APIConnectionError), if any."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, DestinationRefused | RedirectRefused):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _unmapped(address: IPAddress) -> IPAddress:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _category(address: IPAddress) -> str | None:
    """What kind of non-public address this is, or None for a public one."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            return _category(embedded)
        if address in _UNIQUE_LOCAL:
            return "a unique-local address"
        if address.is_site_local:
            return "a site-local address"
    if address.is_unspecified:
        return "an unspecified address"
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address (where cloud metadata services answer)"
    if address.is_multicast:
        return "a multicast address"
    if address.is_reserved:
        return "a reserved address"
    if not address.is_global:
        return "a private address"
    return None


def _url_endpoint(url: str, default_port: int) -> tuple[IPNetwork, int] | None:
    """The address and port a Redis or PostgreSQL URL names, when it names one (a host
    name other than localhost, or a Unix socket, gives None)."""
    parts = urlsplit(url)
    host = parts.hostname
    if not host:
        return None
    port = parts.port or default_port
    if host == "localhost":
        return LOOPBACK[0], port
    try:
        return ipaddress.ip_network(host), port
    except ValueError:
        return None


@dataclass(frozen=True)
class EgressPolicy:
    """Which addresses a provider may be called at (see the module's docstring)."""

    allowed: tuple[IPNetwork, ...] = ()
    refused: tuple[IPNetwork, ...] = ()
    own_endpoints: tuple[tuple[IPNetwork, int], ...] = ()

    @classmethod
    def from_settings(cls, settings: InferenceSettings) -> EgressPolicy:
        """From the inference settings: their three lists, plus inference's own port on
        loopback and the database and Redis it uses."""
        endpoints = [parse_endpoint(str(e)) for e in settings.refused_endpoints]
        endpoints.append((LOOPBACK[0], settings.port))
        for url, port in ((settings.redis_url, 6379), (settings.database_url, 5432)):
            found = _url_endpoint(url, port)
            if found is not None:
                endpoints.append(found)
        return cls(
            allowed=tuple(ipaddress.ip_network(str(n)) for n in settings.allowed_private_networks),
            refused=tuple(ipaddress.ip_network(str(n)) for n in settings.refused_networks),
            own_endpoints=tuple(endpoints),
        )

    def _own(self, address: IPAddress, port: int) -> bool:
        for network, own_port in self.own_endpoints:
            if port != own_port:
                continue
            if address in network:
                return True
            # Every loopback address (and the unspecified one, which Linux connects to the
            # host itself) reaches a service listening on one of them.
            local = any(network.overlaps(lo) for lo in LOOPBACK if lo.version == network.version)
            if local and (address.is_loopback or address.is_unspecified):
                return True
        return False

    def refusal(self, address: IPAddress, port: int) -> str | None:
        """Why `address:port` may not be called (a phrase: "is a loopback address"), or
        None when it may."""
        address = _unmapped(address)
        if self._own(address, port):
            return OWN_SERVICE
        if any(address in network for network in self.allowed):
            return None
        if any(address in network for network in self.refused):
            return "is in a network refused by INFERENCE_REFUSED_NETWORKS"
        category = _category(address)
        return f"is {category}" if category else None

    def check_literal(self, host: str, port: int) -> None:
        """Refuse a URL host that is an address the policy refuses (what can be judged
        without DNS: a host name is resolved, and judged, at each connection)."""
        address = ip_literal(host)
        if address is not None:
            reason = self.refusal(address, port)
            if reason is not None:
                raise DestinationRefused(refused_message(host, port, reason, resolved=False))


def ip_literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.removeprefix("[").removesuffix("]"))
    except ValueError:
        return None


def refused_message(host: str, port: int, reason: str, *, resolved: bool) -> str:
    subject = f"{host} (port {port})" + (" resolves to an address that" if resolved else "")
    if reason == OWN_SERVICE:
        return f"{subject} {reason}: the egress policy refuses it."
    return (
        f"{subject} {reason}. The egress policy calls providers only at public addresses; "
        f"an admin may allow a private network with {ALLOW_SETTING}."
    )


async def resolve(policy: EgressPolicy, host: str, port: int, within: float) -> list[IPAddress]:
    """The addresses to connect to for `host:port`, each one allowed by `policy`.

    Raises DestinationRefused when any address is refused, OSError when the name does not
    resolve, TimeoutError after `within` seconds. Resolution runs in a worker thread."""
    literal = ip_literal(host)
    if literal is not None:
        policy.check_literal(host, port)
        return [literal]
    with anyio.fail_after(within):
        infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses: list[IPAddress] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).partition("%")[0])
        reason = policy.refusal(address, port)
        if reason is not None:
            raise DestinationRefused(refused_message(host, port, reason, resolved=True))
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise OSError(f"{host} has no address")
    return addresses


# One connection pool per provider, shared by every credential's client.
POOL_LIMITS = httpx2.Limits(max_connections=500, max_keepalive_connections=100)


# ---------------------------------------------------------------- redirects


async def refuse_redirects(response: httpx2.Response) -> None:
    """An httpx2 response hook: a 3xx is never followed, nor read as an answer."""
    if 300 <= response.status_code < 400:
        raise RedirectRefused


def guarded_client(
    policy: EgressPolicy,
    *,
    connect_timeout: float,
    timeout: httpx2.Timeout | None,
    request_hooks: Iterable[Any] = (),
    response_hooks: Iterable[Any] = (),
) -> httpx2.AsyncClient:
    """An httpx2 client for a provider: one pool for every credential, its connections
    through the guard (GuardedTransport), no proxy from the environment (a proxy would
    connect where the guard cannot see) and no redirect followed (refuse_redirects runs
    first among the response hooks)."""
    return httpx2.AsyncClient(
        transport=GuardedTransport(policy, resolve_timeout=connect_timeout, limits=POOL_LIMITS),
        follow_redirects=False,
        trust_env=False,
        timeout=timeout,
        event_hooks={
            "request": list(request_hooks),
            "response": [refuse_redirects, *response_hooks],
        },
    )


# ---------------------------------------------------------------- aiohttp (openai SDK)


class GuardedConnector(aiohttp.TCPConnector):
    """aiohttp's TCP connector, its addresses chosen by `resolve`.

    `_resolve_host` is where aiohttp turns the URL's host, a name or an address (aiohttp
    never asks a resolver about an address), into the addresses it then connects to; so it
    is overridden rather than the resolver. It is private: the constructor checks it is
    still there, and the SSRF tests fail if aiohttp stops calling it."""

    def __init__(self, policy: EgressPolicy, *, resolve_timeout: float, **kwargs: Any) -> None:
        if not callable(getattr(aiohttp.TCPConnector, "_resolve_host", None)):
            raise RuntimeError("aiohttp.TCPConnector._resolve_host is gone: the guard needs it")
        super().__init__(use_dns_cache=False, **kwargs)
        self._policy = policy
        self._resolve_timeout = resolve_timeout

    async def _resolve_host(self, host: str, port: int, traces: Any = None) -> list[ResolveResult]:
        addresses = await resolve(self._policy, host, port, self._resolve_timeout)
        return [
            ResolveResult(
                hostname=host, host=str(address), port=port,
                family=socket.AF_INET6 if address.version == 6 else socket.AF_INET,
                proto=socket.IPPROTO_TCP, flags=socket.AI_NUMERICHOST,
            )
            for address in addresses
        ]  # fmt: skip


# ---------------------------------------------------------------- httpcore2 (huggingface_hub)


class GuardedBackend(httpcore2.AsyncNetworkBackend):
    """httpcore2's network backend, connecting only to addresses `resolve` allowed.

    httpcore2 asks its backend for a TCP stream to the URL's host and starts TLS on it
    with the host as `server_hostname`, so certificates are checked against the name."""

    def __init__(self, policy: EgressPolicy, *, resolve_timeout: float) -> None:
        self._policy = policy
        self._resolve_timeout = resolve_timeout
        self._inner = httpcore2.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore2's interface)
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        budget = min(timeout or self._resolve_timeout, self._resolve_timeout)
        deadline = time.monotonic() + (timeout or self._resolve_timeout)
        try:
            addresses = await resolve(self._policy, host, port, budget)
        except TimeoutError as exc:
            raise httpcore2.ConnectTimeout(f"resolving {host} timed out") from exc
        except OSError as exc:
            raise httpcore2.ConnectError(str(exc)) from exc
        failure: Exception | None = None
        for address in addresses:  # one after the other, within the connect timeout
            try:
                return await self._inner.connect_tcp(
                    str(address), port, timeout=max(deadline - time.monotonic(), 0.001),
                    local_address=local_address, socket_options=socket_options,
                )  # fmt: skip
            except (httpcore2.ConnectError, httpcore2.ConnectTimeout) as exc:
                failure = exc
        assert failure is not None
        raise failure

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore2's interface)
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        raise DestinationRefused("A Unix socket is never a provider.")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class GuardedTransport(httpx2.AsyncHTTPTransport):
    """httpx2's transport over a connection pool that uses GuardedBackend.

    httpx2 does not take a network backend, so the pool it built is replaced by one that
    does (same settings). `_pool` is private: the constructor checks it is there."""

    def __init__(
        self, policy: EgressPolicy, *, resolve_timeout: float, limits: httpx2.Limits
    ) -> None:
        super().__init__(limits=limits)
        if not isinstance(getattr(self, "_pool", None), httpcore2.AsyncConnectionPool):
            raise RuntimeError("httpx2.AsyncHTTPTransport._pool is gone: the guard needs it")
        self._pool = httpcore2.AsyncConnectionPool(
            ssl_context=httpx2.create_ssl_context(),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=GuardedBackend(policy, resolve_timeout=resolve_timeout),
        )
