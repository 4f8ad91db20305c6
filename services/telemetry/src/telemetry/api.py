"""Public routes of the telemetry service (reached through the gateway, identity verified)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from common.db import DbSession
from common.json_bodies import JsonRoute
from telemetry import service
from telemetry.deps import (
    Percentiles,
    Reader,
    Reporter,
    RuntimeDep,
    SpendReader,
    Wanted,
    WantedCalls,
)
from telemetry.schemas import (
    CallPage,
    EventBatch,
    GroupBy,
    IngestResult,
    Spend,
    SpendRequest,
    Usage,
)

PERCENTILE_MODES: dict[str, service.PercentileMode] = {
    "true": "approximate",
    "exact": "exact",
    "false": "none",
}
router = APIRouter(tags=["telemetry"], route_class=JsonRoute)
# Platform services only (never through the gateway: it routes no /internal path).
internal = APIRouter(prefix="/internal", include_in_schema=False, route_class=JsonRoute)


@router.get("/v1/usage")
async def usage(
    identity: Reader,
    db: DbSession,
    runtime: RuntimeDep,
    wanted: Wanted,
    group_by: GroupBy = "model",
    percentiles: Percentiles = "true",
) -> Usage:
    """Requests, errors, tokens, exact cost and latency percentiles (approximate, within
    2 %, unless `percentiles=exact`) per model, provider, user, API key, team or UTC day.
    Your own calls; a team's with `team=` if you own it; everyone's with
    telemetry:read_all."""
    return await service.usage(
        runtime, db, identity, wanted=wanted, group_by=group_by,
        percentiles=PERCENTILE_MODES[percentiles],
    )  # fmt: skip


@router.get("/v1/calls")
async def calls(
    identity: Reader,
    db: DbSession,
    runtime: RuntimeDep,
    wanted: WantedCalls,
    cursor: Annotated[str | None, Query(max_length=100)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> CallPage:
    """Calls, newest first, each with its trace id, API key and team; pass `next_cursor`
    back for more."""
    return await service.calls(runtime, db, identity, wanted=wanted, cursor=cursor, limit=limit)


@router.post("/v1/events")
async def report_events(
    body: EventBatch, identity: Reporter, db: DbSession, runtime: RuntimeDep
) -> IngestResult:
    """Report LLM calls made elsewhere (up to 1,000 a request). All or nothing: a batch
    with an invalid event is refused with 422 naming its index. Idempotent: an event
    already stored (same id and occurred_at) is counted as a duplicate and skipped."""
    return await service.report(runtime, db, identity, body)


@internal.post("/spend")
async def spend(body: SpendRequest, identity: SpendReader, db: DbSession) -> Spend:
    """What keys, users or teams spent since a time (1 to 100 queries): the exact sums of
    their calls' costs, in order. Inference seeds its budget counters with it, auth shows
    the spend of a policy; nobody else may ask (403)."""
    return await service.spend(db, body)
