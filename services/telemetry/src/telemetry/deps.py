"""Dependencies of the telemetry routes."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import datetime
from typing import Annotated, Literal

from fastapi import Depends, Query

from common.deps import app_state, authorize, require
from common.identity import CurrentIdentity, Identity
from telemetry.errors import ServicesOnly
from telemetry.runtime import Runtime
from telemetry.schemas import CallFilter
from telemetry.service import READ_ALL

READ_OWN = "telemetry:read_own"
WRITE = "telemetry:write"


async def reporter(identity: CurrentIdentity) -> Identity:
    """A user with telemetry:write (their own calls), or a platform service (anyone's)."""
    return identity if identity.kind == "service" else authorize(identity, WRITE)


# The services that ask what was spent: inference (its budget counters) and auth (the
# spend it shows). A user never may, nor may any other service.
SPEND_READERS = frozenset({"service:inference", "service:auth"})


async def spend_reader(identity: CurrentIdentity) -> Identity:
    if identity.kind != "service" or identity.sub not in SPEND_READERS:
        raise ServicesOnly("Only inference and auth may ask what was spent.")
    return identity


# A user who may read their own calls (or, with telemetry:read_all, everyone's).
Reader = Annotated[Identity, Depends(require(READ_OWN, READ_ALL))]
Reporter = Annotated[Identity, Depends(reporter)]
SpendReader = Annotated[Identity, Depends(spend_reader)]
RuntimeDep = Annotated[Runtime, Depends(app_state("runtime"))]


# What `from` and `to` take, as documented: ISO 8601, or Unix seconds (pydantic reads both;
# the document said ISO 8601 only, and the fuzzer's numbers were answered).
INSTANT = {
    "anyOf": [
        {"type": "string", "format": "date-time"},
        {"type": "number", "description": "Unix seconds."},
        {"type": "null"},
    ]
}
From = Annotated[
    datetime | None,
    Query(
        alias="from",
        description="Start (inclusive), ISO 8601 or Unix seconds; default: 30 days before `to`.",
        json_schema_extra=INSTANT,
    ),
]
To = Annotated[
    datetime | None,
    Query(description="End (exclusive), ISO 8601 or Unix seconds; default: now.",
          json_schema_extra=INSTANT),
]  # fmt: skip
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
Percentiles = Annotated[
    Literal["true", "exact", "false"],
    Query(
        description="Latency p50/p95 and TTFT p50. true (default): approximate, from "
        "log-bucketed histograms kept in the hourly and daily rollups: within 2 % of the "
        "exact value for latencies from 0.1 ms to 24 hours (outside, clamped to those "
        "bounds), as fast as the other figures over any range and number of calls. exact: "
        "percentile_cont over every call of the range (slow over many calls: seconds at "
        "10M). false: no percentiles (null). Every other figure is exact whichever you "
        "ask (read from the rollups, but with exact, from the calls)."
    ),
]
Status = Annotated[str | None, Query(max_length=32, description="Only calls with this status.")]


async def wanted(
    from_: From = None, to: To = None, model: Model = None, user: User = None, team: Team = None
) -> CallFilter:
    """The calls a usage query asks for (service.scope_for says which the caller may see)."""
    return CallFilter(start=from_, end=to, model=model, user=user, team=team)


async def wanted_calls(
    asked: Annotated[CallFilter, Depends(wanted)], status: Status = None
) -> CallFilter:
    """The calls a page of the call list asks for: the same, and a status."""
    return replace(asked, status=status)


Wanted = Annotated[CallFilter, Depends(wanted)]
WantedCalls = Annotated[CallFilter, Depends(wanted_calls)]
