"""The embeddings service's problems, one class per condition."""

from __future__ import annotations

from common.errors import BadGateway, Conflict, NotFound, Problem


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


class PolicyRefused(Problem):
    """Inference refused the call under the caller's own policy (the models, budget or
    token limit of their key, user or team): passed on as inference said it, its status,
    type, title, detail and members (clients.GOVERNANCE_PROBLEMS)."""

    def __init__(
        self,
        detail: str | None,
        *,
        status: int,
        slug: str,
        title: str,
        headers: dict[str, str] | None = None,
        **extra: object,
    ) -> None:
        super().__init__(detail, headers=headers, **extra)
        self.status, self.slug, self.title = status, slug, title
