"""Inference's governance refusals reach the user of a collection intact: the status, the
problem type, the detail, the members (model, scope, budget...) and Retry-After, for
texts upserted and for text queries; inference's other failures keep embeddings' own
problems."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from devkit.testing import LiveServer

from .conftest import MODEL, Embeddings, MakeEmbeddings, person

URN = "urn:llm-platform:problem:"
OWNER = person(601)


@dataclass
class Refusing:
    """An inference that answers every /v1/embeddings with one problem, as inference's
    error renderer writes it (RFC 9457, its own instance and trace id). Inference's
    governance (issue 18) is built beside this service; this serves the problems its
    design names until both are merged."""

    status: int = 500
    body: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    url: str = ""

    def app(self) -> Starlette:
        async def embeddings(_: Request) -> JSONResponse:
            body = {**self.body, "status": self.status, "instance": "/v1/embeddings",
                    "trace_id": "0" * 32, "request_id": "inference-request"}  # fmt: skip
            return JSONResponse(body, status_code=self.status, headers=self.headers,
                                media_type="application/problem+json")  # fmt: skip

        return Starlette(routes=[Route("/v1/embeddings", embeddings, methods=["POST"])])


@pytest.fixture
async def refusing() -> AsyncIterator[Refusing]:
    stand_in = Refusing()
    async with LiveServer(stand_in.app()) as server:
        stand_in.url = server.url
        yield stand_in


GOVERNANCE = {
    "model-not-allowed": (
        403,
        {"title": "Forbidden", "model": MODEL, "scope": "team",
         "detail": f"The team's policy does not allow the model {MODEL!r}."},
        {},
    ),
    "model-not-priced": (
        403,
        {"title": "Forbidden", "model": MODEL,
         "detail": f"{MODEL} has no price and a budget applies: give it a price with "
                   "INFERENCE_PRICES."},
        {},
    ),
    "budget-exceeded": (
        429,
        {"title": "Too Many Requests", "scope": "key", "budget_usd": "25.00",
         "spend_usd": "25.000001000", "budget_resets_at": "2027-01-01T00:00:00+00:00",
         "detail": "The key's budget of 25.00 USD a month is spent; it resets on 1 January."},
        {"Retry-After": "86400"},
    ),
    "rate-limited": (
        429,
        {"title": "Too Many Requests", "scope": "user", "limit": 5000,
         "detail": "The user's limit of 5000 tokens a minute is reached."},
        {"Retry-After": "17"},
    ),
    "budget-unavailable": (
        503,
        {"title": "Service Unavailable",
         "detail": "What the key has spent cannot be told now; budgets fail closed."},
        {"Retry-After": "1"},
    ),
}  # fmt: skip


@pytest.mark.parametrize("slug", list(GOVERNANCE))
async def test_governance_refusals_reach_the_user_intact(
    slug: str, service: Embeddings, make_embeddings: MakeEmbeddings, refusing: Refusing
) -> None:
    collection = await service.collection(OWNER, f"refused {slug}")
    status, members, headers = GOVERNANCE[slug]
    refusing.status, refusing.body = status, {"type": URN + slug, **members}
    refusing.headers = headers
    path = f"/v1/collections/{collection['id']}"

    async with make_embeddings(inference_url=refusing.url) as refused:
        answers = [
            await refused.call(OWNER, "POST", f"{path}/documents",
                               json={"documents": [{"id": "a", "text": "refused text"}]}),
            await refused.query(OWNER, collection["id"], text="refused query"),
        ]  # fmt: skip
    for answer in answers:
        assert answer.status_code == status, answer.text
        assert answer.headers["content-type"] == "application/problem+json"
        assert answer.headers.get("retry-after") == headers.get("Retry-After")
        body = answer.json()
        assert body["type"] == URN + slug
        assert {k: body[k] for k in members} == members  # detail and members as inference said
        assert body["instance"] == answer.request.url.path  # ours, as are the ids
        assert body["trace_id"] != "0" * 32
        assert body.get("request_id") != "inference-request"


async def test_other_inference_failures_keep_embeddings_own_problems(
    service: Embeddings, make_embeddings: MakeEmbeddings, refusing: Refusing
) -> None:
    collection = await service.collection(OWNER, "other failures")
    cases = [
        (403, "missing-permission", 403, "missing-permission"),
        (429, "streams-limited", 429, "rate-limited"),
        (404, "model-not-found", 422, "model-unusable"),
        (503, "unavailable", 502, "inference-unavailable"),
    ]
    async with make_embeddings(inference_url=refusing.url) as refused:
        for status, slug, expected_status, expected_slug in cases:
            refusing.status = status
            refusing.body = {"type": URN + slug, "title": "x", "detail": "inference's words",
                             "secret_member": "not passed on"}  # fmt: skip
            answer = await refused.query(OWNER, collection["id"], text="anything")
            assert answer.status_code == expected_status, answer.text
            assert answer.json()["type"] == URN + expected_slug
            assert "secret_member" not in answer.json()
