"""What the gateway knows of its upstreams' health: probed in the background, never on a
request's path.

The gateway's own readiness (`/readyz`) covers only what it needs itself, its Redis: an
upstream that is down fails its own routes (502 problem+json), not the gateway, so that
Kubernetes keeps every gateway pod in service while, say, telemetry is down. Each
upstream's state is reported instead, per gateway replica:

- the gauge `gateway_upstream_up{upstream="telemetry"}`: 1 while its last probe succeeded,
  0 while it failed (absent until the first probe);
- `GET /readyz/upstreams`, always 200 (a report, not a probe: pointed at by a readiness
  probe, it could not take a replica out of service for an upstream's sake):

      {"status": "ok" | "degraded",
       "upstreams": {"auth": {"status": "up" | "down" | "unknown", "checked_at": 1764...}, ...}}

  Only up or down per service, and when that was seen: no address, error or detail of an
  upstream's own checks, so it needs no credentials. The Ingress does not route it (like
  /readyz and /metrics): it is for operators and tools inside the cluster.

A probe asks each upstream's own `/readyz` (its Postgres and Redis answer) within
PROBE_TIMEOUT_SECONDS: every STEADY_SECONDS while all are up, every UNSETTLED_SECONDS while
one is down or not yet known (a return is seen within a second). Probes are not traced.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import structlog
from opentelemetry.instrumentation.utils import suppress_instrumentation

from gateway.metrics import UPSTREAM_UP

PROBE_TIMEOUT_SECONDS = 2.0
STEADY_SECONDS = 5.0
UNSETTLED_SECONDS = 1.0

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Seen:
    up: bool
    at: float  # seconds since the epoch


class UpstreamHealth:
    """Each upstream's last probe, kept up to date by a task of the gateway's lifespan."""

    def __init__(
        self, clients: Mapping[str, httpx.AsyncClient], *, clock: Callable[[], float]
    ) -> None:
        self._clients = dict(clients)
        self._clock = clock
        self.seen: dict[str, Seen | None] = dict.fromkeys(self._clients)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._keep_probing(), name="upstream-health")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def all_up(self) -> bool:
        return all(seen is not None and seen.up for seen in self.seen.values())

    def report(self) -> dict[str, Any]:
        upstreams = {
            name: {"status": "unknown", "checked_at": None}
            if seen is None
            else {"status": "up" if seen.up else "down", "checked_at": seen.at}
            for name, seen in self.seen.items()
        }
        return {"status": "ok" if self.all_up() else "degraded", "upstreams": upstreams}

    async def probe(self) -> None:
        """Ask every upstream once, at the same time; record and report what answered."""
        with suppress_instrumentation():
            answers = await asyncio.gather(*(_ready(c) for c in self._clients.values()))
        now = self._clock()
        for name, up in zip(self._clients, answers, strict=True):
            before = self.seen[name]
            if before is not None and before.up != up:
                (log.info if up else log.warning)(
                    "upstream is up again" if up else "upstream is down", upstream=name
                )
            self.seen[name] = Seen(up, now)
            UPSTREAM_UP.labels(upstream=name).set(1 if up else 0)

    async def _keep_probing(self) -> None:
        while True:
            try:
                await self.probe()
            except Exception:  # never let the reporting die; the next round tries again
                log.exception("upstream probe failed")
            await asyncio.sleep(STEADY_SECONDS if self.all_up() else UNSETTLED_SECONDS)


async def _ready(client: httpx.AsyncClient) -> bool:
    try:
        response = await client.get("/readyz", timeout=PROBE_TIMEOUT_SECONDS)
    except httpx.HTTPError:
        return False
    return response.status_code == 200
