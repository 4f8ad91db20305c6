"""The auth service's work outside a request, each piece in a unit of work of its own:
the API keys' last-use times, and the first admin."""

from __future__ import annotations

from auth import repository, service
from auth.runtime import Runtime
from common.db import transaction


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
