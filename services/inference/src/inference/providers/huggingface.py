"""Hugging Face through huggingface_hub's AsyncInferenceClient: TGI/TEI endpoints
(per-credential `base_url`) or Hugging Face's inference providers.

Every client speaks through one httpx2 client whose transport is the egress guard's
(providers/egress.py): every address checked, no redirect followed."""

from __future__ import annotations

import hashlib
from typing import Any

import httpx2
from huggingface_hub import AsyncInferenceClient
from huggingface_hub.errors import HfHubHTTPError, InferenceTimeoutError
from huggingface_hub.utils._http import async_hf_request_event_hook, async_hf_response_event_hook

from inference.providers.base import (
    ChatResult,
    ChunkStream,
    Credential,
    EmbeddingResult,
    ProviderError,
    answer_message,
    chat_result,
    error_for_status,
    parse_retry_after,
    read_usage,
    timed_out,
    unreachable,
    unreadable,
    wants_usage,
)
from inference.providers.egress import EgressPolicy, egress_error, guarded_client
from inference.providers.limits import AnswerLimits

# chat_completion's own keyword arguments; other request fields travel as extra_body.
CHAT_KWARGS = frozenset(
    {
        "frequency_penalty", "logit_bias", "logprobs", "max_tokens", "n", "presence_penalty",
        "response_format", "seed", "stop", "temperature", "tool_choice", "tool_prompt",
        "tools", "top_logprobs", "top_p",
    }
)  # fmt: skip


def map_error(exc: Exception) -> ProviderError:
    refused = egress_error(exc)
    if refused is not None:
        return refused
    if isinstance(exc, ProviderError):
        return exc
    if isinstance(exc, InferenceTimeoutError | TimeoutError):
        return timed_out()
    if isinstance(exc, HfHubHTTPError) and exc.response is not None:
        response = exc.response
        return error_for_status(
            response.status_code,
            answer_message(response),
            parse_retry_after(response.headers.get("retry-after")),
        )
    name = type(exc).__name__.lower()
    if "timeout" in name:
        return timed_out()
    if "connect" in name or isinstance(exc, OSError):
        return unreachable()
    return unreadable(exc)


def _as_dict(value: Any) -> dict[str, Any]:
    return dict(value) if isinstance(value, dict) else dict(vars(value))


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


class _GuardedInferenceClient(AsyncInferenceClient):
    """AsyncInferenceClient speaking through the given httpx2 client.

    huggingface_hub builds each client's httpx2 client from one process-wide factory
    (`set_async_client_factory`); overriding `_get_async_client` gives this provider's
    clients the guarded one without changing anyone else's. The SSRF tests fail if
    huggingface_hub stops calling it."""

    def __init__(self, http: httpx2.AsyncClient, **kwargs: Any) -> None:
        if not callable(getattr(AsyncInferenceClient, "_get_async_client", None)):
            raise RuntimeError("AsyncInferenceClient._get_async_client is gone: the guard needs it")
        super().__init__(**kwargs)
        self._http = http

    async def _get_async_client(self) -> httpx2.AsyncClient:
        return self._http


class HuggingFaceProvider:
    name = "huggingface"

    def __init__(
        self,
        *,
        connect_timeout: float,
        read_timeout: float,
        egress: EgressPolicy,
        answer_limits: AnswerLimits,
    ) -> None:
        self._timeout = read_timeout
        self._clients: dict[tuple[str | None, str | None, str], AsyncInferenceClient] = {}
        # huggingface_hub's own client settings (its hooks: request ids, error bodies read
        # before they are raised), but no proxy from the environment (a proxy would connect
        # where the guard cannot see) and no redirect followed.
        self._http = guarded_client(
            egress, connect_timeout=connect_timeout, timeout=None,
            request_hooks=[async_hf_request_event_hook],
            response_hooks=[async_hf_response_event_hook],
        )  # fmt: skip
        # Answers read within the limits, error bodies included (its hook goes first).
        answer_limits.install(self._http)

    def _client(self, credential: Credential) -> AsyncInferenceClient:
        """One client per credential and endpoint, reused; one connection pool for all."""
        fingerprint = hashlib.sha256((credential.api_key or "").encode()).hexdigest()[:16]
        key = (credential.id, credential.base_url, fingerprint)
        client = self._clients.get(key)
        if client is None:
            if credential.base_url:
                client = _GuardedInferenceClient(
                    self._http,
                    base_url=credential.base_url,
                    token=credential.api_key,
                    timeout=self._timeout,
                )
            else:
                client = _GuardedInferenceClient(
                    self._http, token=credential.api_key, timeout=self._timeout
                )
            self._clients[key] = client
        return client

    def _kwargs(
        self, credential: Credential, model: str, request: dict[str, Any]
    ) -> dict[str, Any]:
        kwargs = {k: v for k, v in request.items() if k in CHAT_KWARGS}
        extra = {
            k: v
            for k, v in request.items()
            if k not in CHAT_KWARGS and k not in ("model", "messages", "stream", "stream_options")
        }
        if extra:
            kwargs["extra_body"] = extra
        if not credential.base_url:
            kwargs["model"] = model
        return kwargs

    async def chat(self, credential: Credential, model: str, request: dict[str, Any]) -> ChatResult:
        try:
            output = await self._client(credential).chat_completion(
                request["messages"], stream=False, **self._kwargs(credential, model, request)
            )
        except Exception as exc:
            raise map_error(exc) from exc
        return chat_result(_jsonable(_as_dict(output)), read_usage)

    async def chat_stream(
        self, credential: Credential, model: str, request: dict[str, Any]
    ) -> ChunkStream:
        return await ChunkStream.open(
            self._client(credential).chat_completion(  # type: ignore[call-overload]
                request["messages"],
                stream=True,
                stream_options={"include_usage": True},
                **self._kwargs(credential, model, request),
            ),
            to_dict=lambda chunk: _jsonable(_as_dict(chunk)),
            map_error=map_error,
            read_usage=read_usage,
            forward_usage=wants_usage(request),
        )

    async def list_models(self, credential: Credential) -> list[str]:
        # The Hub serves more models than a list can hold: they are searched with
        # GET /v1/hub/models, and called by name.
        return []

    def honours_dimensions(self, model: str, dimensions: int) -> bool:
        return False  # feature extraction answers the model's own size

    async def embed(
        self, credential: Credential, model: str, inputs: list[str], dimensions: int | None = None
    ) -> EmbeddingResult:
        client = self._client(credential)
        try:
            kwargs = {} if credential.base_url else {"model": model}
            array = await client.feature_extraction(inputs, **kwargs)  # type: ignore[arg-type]
        except Exception as exc:
            raise map_error(exc) from exc
        vectors = array.tolist()
        if vectors and not isinstance(vectors[0], list):
            vectors = [vectors]
        if len(vectors) != len(inputs) or any(v and isinstance(v[0], list) for v in vectors):
            raise ProviderError(
                "The endpoint returned token-level vectors; point it at a pooled (TEI) model.",
                kind="malformed",
                retryable=False,
                status=502,
            )
        return EmbeddingResult(vectors=vectors, usage=None, model=model)

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.close()  # type: ignore[no-untyped-call]
        self._clients.clear()
        await self._http.aclose()
