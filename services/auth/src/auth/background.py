"""The auth service's work outside a request, each piece in a unit of work of its own:
the API keys' last-use times, the first admin, the budget announcements and the teams'
budget gauge."""

from __future__ import annotations

import structlog
from pydantic import ValidationError

from auth import repository, service
from auth.metrics import show_team_budgets
from auth.models import AuditEvent
from auth.policies import policy_of
from auth.runtime import Runtime
from auth.schemas import BudgetAlert
from common.db import transaction

log = structlog.get_logger(__name__)


async def flush_api_key_use(runtime: Runtime) -> int:
    """Write the last-use times the gateway collected in Redis, in one statement; how
    many. Should the write fail, they wait in Redis for the next round."""
    async with repository.taken_api_key_use(runtime.redis) as last_used:
        if last_used:
            async with transaction(runtime.sessionmaker) as db:
                await repository.record_api_key_use(db, last_used=last_used)
    return len(last_used)


async def create_admin(
    runtime: Runtime, *, email: str, password: str, promote_existing: bool, via: str
) -> bool:
    """service.ensure_admin (the email normalised), committed; `via` (the start-up, the
    command) is audited as the user agent."""
    ctx = service.Context(now=runtime.clock(), ip="", user_agent=via, trace_id=None)
    async with transaction(runtime.sessionmaker) as db:
        return await service.ensure_admin(
            runtime,
            db,
            ctx,
            email=email,
            password=password,
            promote_existing=promote_existing,
        )


# ---------------------------------------------------------------- budgets

# Announcements taken per unit of work, and units of work per round at most (the rest
# waits for the next round: a backlog never holds one transaction long).
ALERT_BATCH = 500
ALERT_BATCHES_PER_ROUND = 20
TARGET_TYPES = {"key": "api_key", "user": "user", "team": "team"}


def _alert_event(raw: bytes) -> AuditEvent | None:
    try:
        alert = BudgetAlert.model_validate_json(raw)
    except ValidationError:
        log.warning("budget alert dropped: not one", size=len(raw))
        return None
    return AuditEvent(
        action="budget.threshold",
        outcome="success",
        target_type=TARGET_TYPES[alert.scope],
        target_id=str(alert.id),
        detail=alert.model_dump(mode="json", exclude_none=True),
    )


async def record_budget_alerts(runtime: Runtime) -> int:
    """Turn the budget announcements (common.budgets.ALERTS: 50, 80, 100 % of a budget)
    into audit events `budget.threshold`, in batches; how many. A batch whose write fails
    goes back to the list for the next round."""
    recorded = 0
    for _ in range(ALERT_BATCHES_PER_ROUND):
        async with repository.taken_budget_alerts(runtime.redis, count=ALERT_BATCH) as raw:
            events = [e for e in map(_alert_event, raw) if e is not None]
            if events:
                async with transaction(runtime.sessionmaker) as db:
                    await repository.add_audit_events(db, events=events)
        recorded += len(events)
        if len(raw) < ALERT_BATCH:
            break
    return recorded


async def refresh_team_budgets(runtime: Runtime) -> int:
    """Set llm_team_budget_used_ratio for every team with a budget (and remove the series
    of every other); how many teams have one."""
    async with transaction(runtime.sessionmaker) as db:
        teams = await repository.teams_with_budget(db)
    policies = [policy_of(team) for team in teams]
    spend = await service.read_spend(
        runtime, [("team", team.id, policy) for team, policy in zip(teams, policies, strict=True)]
    )
    used: dict[tuple[str, str], float | None] = {}
    for team, policy, read in zip(teams, policies, spend, strict=True):
        budget = policy.max_budget_usd
        assert budget is not None
        ratio = None
        if read.spend_usd is not None:
            ratio = float(read.spend_usd / budget) if budget > 0 else 1.0
        used[(str(team.id), team.name)] = ratio
    show_team_budgets(used)
    return len(teams)
