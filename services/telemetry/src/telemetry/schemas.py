"""The bodies of the ingestion and query API (a call event: common.llm_events.CallEvent)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    computed_field,
    model_validator,
)

from common.llm_events import CallEvent
from common.policy import ScopeKind

GroupBy = Literal["model", "provider", "user", "day", "key", "team"]


def exact(amount: Decimal) -> str:
    """An exact amount as a decimal string with all its digits, never an exponent: a cache
    hit's cost `0.000000000` (and a sum of them) would otherwise read `0E-9`."""
    return format(amount, "f")


Usd = Annotated[Decimal, PlainSerializer(exact, return_type=str, when_used="json")]


@dataclass(frozen=True)
class CallFilter:
    """The calls a query asks for: a time range [start, end) (by default the 30 days up to
    now; a time without an offset is UTC) and filters. Which of them the caller may see is
    telemetry.service.scope_for's to say."""

    start: datetime | None = None
    end: datetime | None = None
    model: str | None = None
    user: uuid.UUID | None = None
    team: uuid.UUID | None = None
    status: str | None = None


class EventBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    events: Annotated[list[CallEvent], Field(min_length=1, max_length=1000)]


class IngestResult(BaseModel):
    received: int
    inserted: int = Field(description="New calls stored.")
    duplicates: int = Field(description="Calls already stored (same id and time): skipped.")


class UsageTotals(BaseModel):
    """A group's figures that add up over groups (and the error rate of the sums)."""

    requests: int
    errors: int = Field(description='Calls whose status is not "ok".')
    error_rate: float
    prompt_tokens: int
    completion_tokens: int
    cached_prompt_tokens: int = Field(
        description="Of prompt_tokens, those the provider served from its prompt cache (billed "
        "at the cached input price); calls that do not report it count 0."
    )
    reasoning_tokens: int = Field(
        description="Of completion_tokens, those spent on reasoning; calls that do not report "
        "it count 0."
    )
    cost_usd: Usd = Field(description="Exact sum of the calls' costs, as a decimal string.")
    unpriced_calls: int = Field(
        description="Successful calls without a cost (their model has no price): they count 0 "
        "in cost_usd. Give the model a price to cost its calls."
    )
    cache_hits: int = Field(
        description="Calls answered from the response cache (exact or semantic): requests like "
        "any other, costing 0."
    )
    saved_usd: Usd = Field(
        description="Exact sum of what the provider would have charged for the answers "
        "replayed from the response cache, as a decimal string."
    )


class UsageGroup(UsageTotals):
    key: str | date | None = Field(
        description="The model, provider, user id, API key id, team id or UTC day; null for "
        "calls without a user, a key (a browser session's) or a team."
    )
    latency_ms_p50: float | None
    latency_ms_p95: float | None
    ttft_ms_p50: float | None = Field(description="Time to first token: streamed calls only.")


class Usage(BaseModel):
    group_by: GroupBy
    from_: datetime = Field(serialization_alias="from")
    to: datetime
    groups: list[UsageGroup]

    @computed_field(  # type: ignore[prop-decorator]
        description="The groups' figures added up: every call of the range and filters is in "
        "exactly one group. (Percentiles do not add up: see each group's.)"
    )
    @property
    def totals(self) -> UsageTotals:
        sums = {
            name: sum(getattr(group, name) for group in self.groups)
            for name in UsageTotals.model_fields
            if name != "error_rate"
        }
        rate = sums["errors"] / sums["requests"] if sums["requests"] else 0.0
        return UsageTotals.model_validate({**sums, "error_rate": rate})


class CallRead(BaseModel):
    id: uuid.UUID
    occurred_at: datetime
    received_at: datetime
    source: str
    user_id: uuid.UUID | None
    api_key_id: str | None
    team_id: uuid.UUID | None
    operation: str
    provider: str
    model: str
    alias: str | None
    status: str
    error_type: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    cached_prompt_tokens: int | None = Field(
        description="Of prompt_tokens, those served from the provider's prompt cache; null "
        "when the provider did not report it."
    )
    reasoning_tokens: int | None = Field(
        description="Of completion_tokens, those spent on reasoning; null when not reported."
    )
    usage_estimated: bool
    cost_usd: Usd | None
    latency_ms: float
    ttft_ms: float | None
    stream: bool
    attempts: int
    fallback: bool
    trace_id: str | None = Field(description="Open it in Jaeger to see the call's trace.")
    cache: Literal["exact", "semantic"] | None = Field(
        description="The answer was replayed from the response cache (no provider was called; "
        "cost_usd is 0); null: not a hit."
    )
    saved_usd: Usd | None = Field(
        description="A cache hit: what the provider would have charged for the answer."
    )


class CallPage(BaseModel):
    data: list[CallRead]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next (older) page.")


class SpendQuery(BaseModel):
    """What a key (`id`: its id), a user or a team (`id`: a UUID) spent since a time."""

    model_config = ConfigDict(extra="forbid")

    scope: ScopeKind
    id: Annotated[str, Field(min_length=1, max_length=64)]
    since: datetime | None = Field(
        description="ISO 8601 (without an offset: UTC); null: all the calls kept."
    )

    @model_validator(mode="after")
    def _uuid_for_users_and_teams(self) -> SpendQuery:
        if self.scope != "key":
            try:
                self.id = str(uuid.UUID(self.id))
            except ValueError:
                raise ValueError(f"a {self.scope}'s id is a UUID") from None
        return self


class SpendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    queries: Annotated[list[SpendQuery], Field(min_length=1, max_length=100)]


class Spend(BaseModel):
    spend_usd: list[str] = Field(
        description="The exact sum of the costs of each query's calls (a decimal string), "
        "in the order of the queries; calls without a price count as 0."
    )
