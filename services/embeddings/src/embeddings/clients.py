"""The inference service, asked for vectors: signed as us, on behalf of the user."""

from __future__ import annotations

import asyncio
import base64
import binascii
import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import httpx

from common.errors import MissingPermission, TooManyRequests
from common.http import peer_client
from common.identity import Identity
from embeddings.errors import DimensionMismatch, InferenceUnavailable, ModelUnusable, PolicyRefused
from embeddings.settings import EmbeddingsSettings
from embeddings.vectors import unpack_base64_le


class Inference:
    """POST /v1/embeddings on the inference service, in batches, a few at a time."""

    def __init__(self, settings: EmbeddingsSettings, client: httpx.AsyncClient | None = None):
        self.client = client or peer_client(
            settings.inference_url,
            settings,
            peer="inference",
            timeout=settings.inference_timeout_seconds,
        )
        self.batch_size = settings.embed_batch_size
        self.concurrency = settings.embed_concurrency
        self.service = settings.service_name

    async def aclose(self) -> None:
        await self.client.aclose()

    def on_behalf_of(self, identity: Identity) -> Identity:
        """The user's identity, issued by us: inference checks their permissions."""
        return replace(identity, iss=self.service, hold=None)

    async def embed(
        self,
        identity: Identity,
        model: str,
        texts: Sequence[str],
        *,
        dimension: int | None = None,
    ) -> list[list[float]]:
        """One vector per text, in order. Checks the count, finiteness and the dimension."""
        batches = [texts[i : i + self.batch_size] for i in range(0, len(texts), self.batch_size)]
        gate = asyncio.Semaphore(self.concurrency)

        async def one(batch: Sequence[str]) -> list[list[float]]:
            async with gate:
                return await self._call(identity, model, list(batch))

        vectors = [v for part in await asyncio.gather(*(one(b) for b in batches)) for v in part]
        expected = dimension if dimension is not None else (len(vectors[0]) if vectors else 0)
        for vector in vectors:
            if len(vector) != expected:
                raise DimensionMismatch(
                    f"The model {model!r} returned {len(vector)} dimensions, not {expected}: "
                    "if it is an alias, it now routes to another model."
                )
            if not all(math.isfinite(x) for x in vector):
                raise InferenceUnavailable(f"The model {model!r} returned a non-finite vector.")
        return vectors

    async def _call(self, identity: Identity, model: str, texts: list[str]) -> list[list[float]]:
        try:
            response = await self.client.post(
                "/v1/embeddings",
                json={"model": model, "input": texts, "encoding_format": "base64"},
                extensions={"identity": self.on_behalf_of(identity)},
            )
        except httpx.HTTPError as exc:
            raise InferenceUnavailable(
                f"The inference service did not answer ({type(exc).__name__})."
            ) from None
        if response.status_code != 200:
            raise _problem(response, model)
        try:
            data: list[dict[str, Any]] = response.json()["data"]
            ordered = sorted(data, key=lambda item: int(item["index"]))
            vectors = [unpack_base64_le(base64.b64decode(item["embedding"])) for item in ordered]
        except (ValueError, KeyError, TypeError, binascii.Error):
            raise InferenceUnavailable("The inference service answered malformed JSON.") from None
        if len(vectors) != len(texts):
            raise InferenceUnavailable(
                f"The inference service returned {len(vectors)} vectors for {len(texts)} texts."
            )
        return vectors


# Inference's refusals under the caller's policy (services/inference/README.md,
# "Governance"), by problem type: the caller sees them as if they had called inference.
PROBLEM_TYPE = "urn:llm-platform:problem:"
GOVERNANCE_PROBLEMS = frozenset(
    {"model-not-allowed", "model-not-priced", "budget-exceeded", "rate-limited",
     "budget-unavailable"}
)  # fmt: skip
GOVERNANCE_MEMBERS = ("model", "scope", "budget_usd", "spend_usd", "budget_resets_at",
                      "tpm_limit")  # fmt: skip


def _governance_problem(response: httpx.Response, body: Any) -> PolicyRefused | None:
    """Inference's refusal under the caller's policy, passed on; None for anything else."""
    if not isinstance(body, dict) or not isinstance(body.get("type"), str):
        return None
    slug = body["type"].removeprefix(PROBLEM_TYPE)
    if slug not in GOVERNANCE_PROBLEMS or response.status_code not in (403, 429, 503):
        return None
    members = {
        name: value if not isinstance(value, str) else value[:300]
        for name in GOVERNANCE_MEMBERS
        if isinstance(value := body.get(name), str | int | None) and name in body
    }
    retry = response.headers.get("retry-after")
    return PolicyRefused(
        str(body.get("detail") or "")[:500] or None,
        status=response.status_code,
        slug=slug,
        title=str(body.get("title") or "")[:100],
        headers={"Retry-After": retry[:20]} if retry else None,
        **members,
    )


def _problem(response: httpx.Response, model: str) -> Exception:
    detail = ""
    body: Any = None
    try:
        body = response.json()
        detail = str(body.get("detail") or body.get("title") or "")[:500]
    except (ValueError, AttributeError):
        pass
    status = response.status_code
    refused = _governance_problem(response, body)
    if refused is not None:
        return refused
    if status == 403:
        return MissingPermission(f"Embedding with {model!r} needs the inference:invoke permission.")
    if status == 429:
        retry = response.headers.get("retry-after")
        return TooManyRequests(
            f"Inference is rate limited: {detail}",
            headers={"Retry-After": retry} if retry else None,
        )
    if 400 <= status < 500:
        return ModelUnusable(f"Inference could not embed with {model!r}: {detail or status}")
    return InferenceUnavailable(f"Inference failed ({status}): {detail}")
