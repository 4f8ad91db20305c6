"""The auth service's long-lived infrastructure, in one object handed to its services."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from auth.passwords import Hasher
from auth.repository import LoginThrottle
from auth.settings import AuthSettings
from common.budgets import SpendCounters, TelemetrySpend
from common.http import peer_client
from common.principals import SessionStore

# Telemetry answers a spend query with one indexed sum per scope: a few connections do.
TELEMETRY_CONNECTIONS = 10


@dataclass
class Runtime:
    """Built once per process (the app's lifespan, the create-admin command) and passed
    first to every service function that needs more than the request's unit of work.

    `sessionmaker` is for work outside a request (common.db.transaction); a request's
    unit of work is the session dependency's. Tests replace `clock` and `sessionmaker`."""

    settings: AuthSettings
    sessionmaker: async_sessionmaker[AsyncSession]
    redis: Redis
    sessions: SessionStore
    hasher: Hasher
    login_throttle: LoginThrottle
    telemetry: httpx.AsyncClient
    spend: SpendCounters
    clock: Callable[[], float] = time.time

    @classmethod
    def create(
        cls,
        settings: AuthSettings,
        *,
        sessionmaker: async_sessionmaker[AsyncSession],
        redis: Redis,
    ) -> Runtime:
        telemetry = peer_client(
            settings.telemetry_url,
            settings,
            peer="telemetry",
            max_connections=TELEMETRY_CONNECTIONS,
        )
        return cls(
            settings=settings,
            sessionmaker=sessionmaker,
            redis=redis,
            sessions=SessionStore(redis),
            hasher=Hasher(
                time_cost=settings.argon2_time_cost,
                memory_kib=settings.argon2_memory_kib,
                parallelism=settings.argon2_parallelism,
            ),
            login_throttle=LoginThrottle(redis, settings),
            telemetry=telemetry,
            spend=SpendCounters(redis, TelemetrySpend(telemetry)),
        )

    async def aclose(self) -> None:
        await self.telemetry.aclose()
