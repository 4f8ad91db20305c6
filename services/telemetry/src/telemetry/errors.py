"""The telemetry service's problems, one class per condition."""

from __future__ import annotations

from common.errors import Forbidden, MissingPermission, Problem, ServiceUnavailable


class Invalid(Problem):
    """A query or a batch of events that cannot be served (shaped like FastAPI's 422)."""

    status, slug, title = 422, "validation", "Unprocessable Content"


class OthersUsage(MissingPermission):
    """Another user's calls need telemetry:read_all."""


class ServicesOnly(Forbidden):
    """An internal route that only some platform services may call."""

    slug = "services-only"


class AuthUnavailable(ServiceUnavailable):
    """Whose calls a team view shows depends on auth, which cannot be asked now: the view
    is refused rather than widened or narrowed."""

    slug = "auth-unavailable"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"Retry-After": "1"})
