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

from common.errors import MissingPermission, Problem, TooManyRequests
from common.http import peer_client
from common.identity import Identity
from embeddings.errors import (
    BudgetExceeded,
    BudgetUnavailable,
    DimensionMismatch,
    InferenceUnavailable,
    ModelNotAllowed,
    ModelNotPriced,
    ModelUnusable,
)
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
        return replace(identity, iss=self.service)

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


# The problems of inference passed on intact (status, type, detail, Retry-After and their
# members): by (status, type), the class that renders the same type here.
RELAYED: dict[tuple[int, str], type[Problem]] = {
    (cls.status, cls().type): cls
    for cls in (ModelNotAllowed, ModelNotPriced, BudgetExceeded, TooManyRequests, BudgetUnavailable)
}
# What a relayed problem's body may carry besides its own members (each renderer adds
# `instance`, `trace_id` and `request_id` of its own): a few scalars, each bounded.
_STANDARD = frozenset({"type", "title", "status", "detail", "instance", "trace_id", "request_id"})
MAX_MEMBERS = 16
MAX_TEXT = 500


def _problem(response: httpx.Response, model: str) -> Exception:
    body: dict[str, Any] = {}
    try:
        parsed = response.json()
        body = parsed if isinstance(parsed, dict) else {}
    except ValueError:
        pass
    detail = str(body.get("detail") or body.get("title") or "")[:MAX_TEXT]
    status = response.status_code
    retry = response.headers.get("retry-after")
    headers = {"Retry-After": retry[:32]} if retry else None
    relayed = RELAYED.get((status, str(body.get("type"))))
    if relayed is not None:
        return relayed(detail or None, headers=headers, **_members(body))
    if status == 403:
        return MissingPermission(f"Embedding with {model!r} needs the inference:invoke permission.")
    if status == 429:
        return TooManyRequests(f"Inference is rate limited: {detail}", headers=headers)
    if 400 <= status < 500:
        return ModelUnusable(f"Inference could not embed with {model!r}: {detail or status}")
    return InferenceUnavailable(f"Inference failed ({status}): {detail}")


def _members(body: dict[str, Any]) -> dict[str, Any]:
    """The problem's own members (`model`, `scope`, `budget_usd`, `budget_resets_at`, ...):
    scalars only, at most MAX_MEMBERS, texts cut at MAX_TEXT."""
    members: dict[str, Any] = {}
    for name, value in body.items():
        if name in _STANDARD or not isinstance(name, str) or len(name) > 64:
            continue
        if isinstance(value, str):
            value = value[:MAX_TEXT]
        elif not _finite_scalar(value):
            continue
        members[name] = value
        if len(members) == MAX_MEMBERS:
            break
    return members


def _finite_scalar(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    return value is None or isinstance(value, bool | int)
