"""The gateway's problems, one class per condition."""

from __future__ import annotations

# ClientClosed and MissingPermission: every service's (common.errors), re-exported.
from common.errors import ClientClosed as ClientClosed
from common.errors import Forbidden, NotAUser, Problem, ServiceUnavailable, TooManyRequests
from common.errors import MissingPermission as MissingPermission

# Credentials


class Unauthenticated(NotAUser):
    """No valid session or API key: the shared 401 (common.errors.NotAUser), with the
    challenge a client library expects."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": 'Bearer realm="llm-platform"'})


class AuthUnavailable(ServiceUnavailable):
    slug = "auth-unavailable"


class CsrfFailed(Forbidden):
    slug = "csrf"


# Role-based access (gateway/rbac.py)


class SessionRequired(Forbidden):
    slug = "session-required"


# Budgets


class RateLimited(TooManyRequests):
    slug = "rate-limited"


class InvalidKeysLimited(RateLimited):
    slug = "too-many-invalid-api-keys"


class TooManyInFlight(TooManyRequests):
    slug = "too-many-in-flight"


# The proxied exchange


class PayloadTooLarge(Problem):
    status, slug, title = 413, "payload-too-large", "Content Too Large"
