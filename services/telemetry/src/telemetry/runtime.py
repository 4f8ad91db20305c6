"""The telemetry service's long-lived infrastructure, in one object."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import TYPE_CHECKING, Any

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from telemetry.clients import Auth
from telemetry.settings import TelemetrySettings

if TYPE_CHECKING:
    from telemetry.consumer import StreamConsumer


@dataclass(eq=False)
class Runtime:
    """Built once by the lifespan (main.py), on `app.state.runtime`; the routes get it
    with RuntimeDep, the stream consumers and the background loops are given it."""

    settings: TelemetrySettings
    engine: AsyncEngine
    # Background units of work (common.db.transaction): partitions, the usage cache's marks,
    # the pre-warm, the consumers' batches with dead letters.
    sessionmaker: async_sessionmaker[AsyncSession]
    redis: Redis
    # Asked who owns a team (a team's usage and calls).
    auth: Auth
    # The monthly partitions of llm_call known to exist (asked again after an insert found
    # none: service.forget_partitions).
    partition_months: set[date] = field(default_factory=set)
    consumers: list[StreamConsumer] = field(default_factory=list)
    # Closed days' approximate usage (service.approximate_by_day): (scope key, day) to
    # (the day's epoch when computed, the day's figures).
    approximate_days: dict[tuple[str, date], tuple[int, dict[str, Any]]] = field(
        default_factory=dict
    )
    # The same for the other groupings (service.approximate_grouped): (scope key, grouping,
    # first and last closed day) to (those days' epochs, their usage_sums rows added up).
    approximate_groups: dict[
        tuple[str, str, date, date], tuple[tuple[int | None, ...], list[dict[str, Any]]]
    ] = field(default_factory=dict)

    @property
    def retention(self) -> timedelta:
        """Calls are kept at least this long."""
        return timedelta(days=self.settings.retention_days)
