"""Public routes of the telemetry service (reached through the gateway, identity verified)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query

from common.db import DbSession
from common.json_bodies import JsonRoute
from telemetry import service
from telemetry.deps import Reader, Reporter, RuntimeDep, SpendReader
from telemetry.schemas import (
    CallPage,
    EventBatch,
    GroupBy,
    IngestResult,
    Spend,
    SpendRequest,
    Usage,
)

router = APIRouter(tags=["telemetry"], route_class=JsonRoute)
# Platform services only (never through the gateway: it routes no /internal path).
internal = APIRouter(prefix="/internal", include_in_schema=False, route_class=JsonRoute)

From = Annotated[
    datetime | None,
    Query(alias="from", description="Start (inclusive); default: 30 days before `to`."),
]
To = Annotated[datetime | None, Query(description="End (exclusive); default: now.")]
Model = Annotated[str | None, Query(max_length=300, description="Only this provider/model.")]
User = Annotated[
    uuid.UUID | None,
    Query(description="Only this user's calls (telemetry:read_all, or a team's owner)."),
]
Team = Annotated[
    uuid.UUID | None,
    Query(
        description="Only this team's calls: all of them for its owners (and "
        "telemetry:read_all), your own in it for anyone else."
    ),
]


@router.get("/v1/usage")
async def usage(
    identity: Reader,
    db: DbSession,
    runtime: RuntimeDep,
    group_by: GroupBy = "model",
    from_: From = None,
    to: To = None,
    model: Model = None,
    user: User = None,
    team: Team = None,
) -> Usage:
    """Requests, errors, tokens, exact cost and latency percentiles per model, provider,
    user, API key, team or UTC day. Your own calls; a team's with `team=` if you own it;
    everyone's with telemetry:read_all."""
    return await service.usage(
        runtime,
        db,
        identity,
        group_by=group_by,
        start=from_,
        end=to,
        model=model,
        user=user,
        team=team,
    )


@router.get("/v1/calls")
async def calls(
    identity: Reader,
    db: DbSession,
    runtime: RuntimeDep,
    cursor: Annotated[str | None, Query(max_length=100)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    model: Model = None,
    status: Annotated[str | None, Query(max_length=32)] = None,
    from_: From = None,
    to: To = None,
    user: User = None,
    team: Team = None,
) -> CallPage:
    """Calls, newest first, each with its trace id, API key and team; pass `next_cursor`
    back for more."""
    return await service.calls(
        runtime,
        db,
        identity,
        cursor=cursor,
        limit=limit,
        model=model,
        status=status,
        start=from_,
        end=to,
        user=user,
        team=team,
    )


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
