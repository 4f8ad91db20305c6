"""The inference service's problems, one class per condition."""

from __future__ import annotations

from common.errors import (
    BadGateway,
    BadRequest,
    Conflict,
    Forbidden,
    MissingPermission,
    NotFound,
    Problem,
    ServiceUnavailable,
    TooManyRequests,
)


class ModelNotFound(NotFound):
    slug = "model-not-found"


class NoCredential(BadRequest):
    slug = "no-credential"


class CredentialUnusable(NoCredential):
    """A stored key that cannot be sent (a character outside visible ASCII, stored before
    keys were checked at creation): treated as no credential, and said so."""

    slug = "credential-unusable"


class CredentialNotFound(NotFound):
    slug = "credential-not-found"


class AliasNotFound(NotFound):
    slug = "alias-not-found"


class NameTaken(Conflict):
    slug = "name-taken"


class SharedNeedsAdmin(MissingPermission):
    """A shared credential needs providers:manage_shared."""


class InvalidRequest(Problem):
    status, slug, title = 422, "validation", "Unprocessable Content"


class TooManyAliases(Problem):
    status, slug, title = 409, "too-many-aliases", "Conflict"


class DimensionsUnsupported(Problem):
    """`dimensions` asked of an embedding model that cannot answer that size."""

    status, slug, title = 400, "dimensions-unsupported", "Bad Request"


class ProviderRejected(Problem):
    """The provider refused the request itself (not retried): its message, verbatim."""

    status, slug, title = 400, "provider-rejected", "Bad Request"


class EgressRefused(Problem):
    """The egress policy refuses the credential's base_url (inference/providers/egress.py):
    at creation for an address, at call time for what a host name resolved to."""

    status, slug, title = 422, "egress-refused", "Unprocessable Content"


class ProviderRedirected(BadGateway):
    """The provider answered with a redirect, which is never followed."""

    slug = "provider-redirect"


class ProviderAuthFailed(BadGateway):
    slug = "provider-auth"


class UpstreamFailed(BadGateway):
    slug = "upstream-failed"


class AnswerRefused(BadGateway):
    """The provider's answer was over a size limit (or compressed, so it could not be
    limited): refused, not retried."""

    slug = "answer-refused"


class Overloaded(ServiceUnavailable):
    """The local model has more work queued than it may (INFERENCE_LOCAL_MAX_QUEUED_TEXTS)."""

    slug = "overloaded"


class TooManyStreams(TooManyRequests):
    slug = "too-many-streams"


class DeadlineExceeded(Problem):
    status, slug, title = 504, "deadline-exceeded", "Gateway Timeout"


class CircuitOpen(Problem):
    status, slug, title = 503, "circuit-open", "Service Unavailable"


class HubError(BadGateway):
    slug = "hub-unavailable"


class TooManyHubCalls(TooManyRequests):
    """The caller already has INFERENCE_HUB_CALLS_PER_USER Hub calls in flight (here)."""

    slug = "too-many-hub-calls"


class ModelNotAllowed(Forbidden):
    """A policy of the call's key, user or team does not allow the model (members `model`
    and `scope`)."""

    slug = "model-not-allowed"


class ModelNotPriced(Forbidden):
    """A call under a budget to a model without a price: it cannot be costed."""

    slug = "model-not-priced"


class BudgetExceeded(TooManyRequests):
    """A scope's budget is spent, or held by calls in flight (members `scope`,
    `budget_usd`, `spend_usd`, `budget_resets_at`)."""

    slug = "budget-exceeded"


class TokensPerMinute(TooManyRequests):
    """A scope's tokens-per-minute limit is reached (members `scope`, `tpm_limit`)."""

    slug = "rate-limited"


class BudgetUnavailable(ServiceUnavailable):
    """A budgeted call is refused because what its scopes spent cannot be told (Redis or
    telemetry do not answer): budgets fail closed."""

    slug = "budget-unavailable"


class PriceNotFound(NotFound):
    """No admin's price for that model (the catalog's and INFERENCE_PRICES' stay)."""

    slug = "price-not-found"


class TooManyPrices(Problem):
    status, slug, title = 409, "too-many-prices", "Conflict"
