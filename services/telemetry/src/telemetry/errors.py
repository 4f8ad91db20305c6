"""The telemetry service's problems, one class per condition."""

from __future__ import annotations

from common.errors import MissingPermission, Problem


class Invalid(Problem):
    """A query or a batch of events that cannot be served (shaped like FastAPI's 422)."""

    status, slug, title = 422, "validation", "Unprocessable Content"


class OthersUsage(MissingPermission):
    """Another user's calls need telemetry:read_all."""
