"""The auth service's problems, one class per condition."""

from __future__ import annotations

from common.app import StartupRefused
from common.errors import Conflict, Forbidden, NotFound, Problem, TooManyRequests, Unauthorized

# Shared with every service (common.errors): a caller that is not a user.
from common.errors import NotAUser as NotAUser


class EmailTaken(Conflict):
    slug = "email-taken"


class WeakPassword(Problem):
    status, slug, title = 422, "weak-password", "Unprocessable Content"


class RegistrationClosed(Forbidden):
    slug = "registration-closed"


class InvalidCredentials(Unauthorized):
    slug = "invalid-credentials"

    def __init__(self) -> None:
        super().__init__("Invalid email or password.")


class AccountDisabled(Forbidden):
    slug = "account-disabled"


class LoginThrottled(TooManyRequests):
    slug = "login-throttled"


class SessionRequired(Forbidden):
    slug = "session-required"


class InvalidScopes(Problem):
    status, slug, title = 422, "invalid-scopes", "Unprocessable Content"


class InvalidExpiry(Problem):
    status, slug, title = 422, "invalid-expiry", "Unprocessable Content"


class UserNotFound(NotFound):
    slug = "user-not-found"


class ApiKeyNotFound(NotFound):
    slug = "api-key-not-found"


class SessionNotFound(NotFound):
    slug = "session-not-found"


class SelfLockout(Conflict):
    slug = "self-lockout"


class TeamNotFound(NotFound):
    slug = "team-not-found"


class TooManyApiKeys(Conflict):
    slug = "too-many-api-keys"


class TeamNameTaken(Conflict):
    slug = "team-name-taken"


class MemberNotFound(NotFound):
    slug = "member-not-found"


class TeamOwnerRequired(Forbidden):
    slug = "team-owner-required"


class InvalidPolicy(Problem):
    """A policy that cannot be (a period without a budget); member `field`."""

    status, slug, title = 422, "invalid-policy", "Unprocessable Content"


class PolicyExceeds(Problem):
    """A key's policy allows more than its user's or its team's; members `field`, `scope`."""

    status, slug, title = 422, "policy-exceeds", "Unprocessable Content"


class PolicyChangeRefused(Forbidden):
    """The caller may not make this policy change (only narrow it, or not at all); member
    `fields` when some would be raised."""

    slug = "policy-change-refused"


class AdminRefused(StartupRefused):
    """ADMIN_EMAIL / ADMIN_PASSWORD (or `create-admin`) cannot make the first admin."""
