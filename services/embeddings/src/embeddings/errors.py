"""The embeddings service's problems, one class per condition."""

from __future__ import annotations

from common.errors import (
    BadGateway,
    Conflict,
    Forbidden,
    NotFound,
    Problem,
    ServiceUnavailable,
    TooManyRequests,
)


class CollectionNotFound(NotFound):
    slug = "collection-not-found"


class DocumentNotFound(NotFound):
    slug = "document-not-found"


class NameTaken(Conflict):
    slug = "name-taken"


class Busy(Conflict):
    """The collection is changing model; what was asked cannot be done meanwhile."""

    slug = "collection-busy"


class Invalid(Problem):
    """The request is well-formed JSON but cannot be done as asked (names what is wrong)."""

    status, slug, title = 422, "validation", "Unprocessable Content"


class InvalidFilter(Invalid):
    slug = "invalid-filter"


class DimensionMismatch(Invalid):
    slug = "dimension-mismatch"


class ModelUnusable(Invalid):
    """Inference refused the model (unknown, no credential, rejected input)."""

    slug = "model-unusable"


class InferenceUnavailable(BadGateway):
    slug = "inference-unavailable"


# Inference's governance refusals (issue 18), passed on as inference gave them: the user of
# a collection learns which model, scope or budget refused the call, and when to try again.


class ModelNotAllowed(Forbidden):
    """The policy of the caller's key, user or team does not allow the model."""

    slug = "model-not-allowed"


class ModelNotPriced(Forbidden):
    """The model has no price, and a budget applies: the call cannot be costed."""

    slug = "model-not-priced"


class BudgetExceeded(TooManyRequests):
    """The budget of the caller's key, user or team is spent (or held by calls in flight)."""

    slug = "budget-exceeded"


class BudgetUnavailable(ServiceUnavailable):
    """What the caller's budgeted scopes spent cannot be told now: budgets fail closed."""

    slug = "budget-unavailable"
