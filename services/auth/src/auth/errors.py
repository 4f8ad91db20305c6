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


class AdminRefused(StartupRefused):
    """ADMIN_EMAIL / ADMIN_PASSWORD (or `create-admin`) cannot make the first admin."""
