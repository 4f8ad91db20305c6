"""The gateway's long-lived infrastructure as one object: built by the lifespan (main.py),
kept on `app.state.runtime`, closed when the app stops. A proxied request reads it once
(gateway/proxy.py); the gateway's own routes get it as `RuntimeDep` (gateway/deps.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from redis.asyncio import Redis

from common.redis import create_redis
from gateway.clients import Upstreams
from gateway.forwarded import TrustedProxies
from gateway.openapi import TITLE, VERSION, OpenAPICache
from gateway.proxy import BudgetHolds, InFlight
from gateway.repository import CredentialCache, HeldBudgets, RateCounters
from gateway.security import Security
from gateway.settings import GatewaySettings
from gateway.upstream_health import UpstreamHealth


@dataclass(frozen=True, slots=True)
class Runtime:
    settings: GatewaySettings
    clock: Callable[[], float]
    # Made by create_app: the request middleware asks it whose trace context to join.
    trusted_proxies: TrustedProxies
    upstreams: Upstreams
    redis: Redis
    security: Security
    # Each caller's share of each upstream's connections on this replica.
    in_flight: InFlight
    # Budget holds of model calls that inference did not take over, given back.
    budget_holds: BudgetHolds
    # HMAC key of the identity header sent to the services.
    signing_key: bytes
    openapi: OpenAPICache
    # Each upstream's last readiness probe (a task the lifespan starts).
    upstream_health: UpstreamHealth

    @classmethod
    def start(
        cls,
        settings: GatewaySettings,
        *,
        clock: Callable[[], float],
        trusted_proxies: TrustedProxies,
    ) -> Runtime:
        """Clients and pools, made inside the running event loop; nothing is called yet."""
        upstreams = Upstreams(settings)
        timeout = settings.redis_timeout_seconds
        redis = create_redis(settings.redis_url, wait_seconds=timeout, socket_timeout=timeout)
        return cls(
            settings=settings,
            clock=clock,
            trusted_proxies=trusted_proxies,
            upstreams=upstreams,
            redis=redis,
            security=Security(
                credentials=CredentialCache(redis),
                counters=RateCounters(redis),
                auth=upstreams.clients["auth"],
                settings=settings,
                clock=clock,
            ),
            in_flight=InFlight(settings.upstream_max_connections_per_user),
            budget_holds=BudgetHolds(HeldBudgets(redis)),
            signing_key=settings.internal_signing_key.get_secret_value().encode(),
            openapi=OpenAPICache(upstreams.clients, title=TITLE, version=VERSION),
            upstream_health=UpstreamHealth(upstreams.clients, clock=clock),
        )

    async def aclose(self) -> None:
        await self.upstream_health.aclose()
        await self.budget_holds.aclose()
        await self.upstreams.aclose()
        await self.redis.aclose()
