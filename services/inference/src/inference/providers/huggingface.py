"""Hugging Face through huggingface_hub's AsyncInferenceClient: TGI/TEI endpoints
(per-credential `base_url`) or Hugging Face's inference providers."""

from __future__ import annotations

import hashlib
from typing import Any

import httpx2
from huggingface_hub import AsyncInferenceClient
from huggingface_hub.errors import HfHubHTTPError, InferenceTimeoutError

from inference.providers.base import (
    ChatResult,
    ChunkStream,
    Credential,
    EmbeddingResult,
    ProviderError,
    Usage,
    chat_result,
    error_for_status,
    parse_retry_after,
    wants_usage,
)
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
    if isinstance(exc, ProviderError):
        return exc
    if isinstance(exc, InferenceTimeoutError | TimeoutError):
        return ProviderError("The provider did not answer in time.", kind="timeout", retryable=True)
    if isinstance(exc, HfHubHTTPError) and exc.response is not None:
        response = exc.response
        return error_for_status(
            response.status_code,
            str(getattr(exc, "server_message", None) or exc).splitlines()[0],
            parse_retry_after(response.headers.get("retry-after")),
        )
    name = type(exc).__name__.lower()
    if "timeout" in name:
        return ProviderError("The provider did not answer in time.", kind="timeout", retryable=True)
    if "connect" in name or isinstance(exc, OSError):
        return ProviderError("Could not reach the provider.", kind="connection", retryable=True)
    return ProviderError(
        f"The provider's answer could not be read ({type(exc).__name__}).",
        kind="malformed",
        retryable=True,
    )


def _as_dict(value: Any) -> dict[str, Any]:
    return dict(value) if isinstance(value, dict) else dict(vars(value))


def _usage(raw: Any) -> Usage | None:
    if not raw:
        return None
    data = raw if isinstance(raw, dict) else vars(raw)
    if data.get("prompt_tokens") is None:
        return None
    return Usage(int(data.get("prompt_tokens") or 0), int(data.get("completion_tokens") or 0))


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


class _LimitedInferenceClient(AsyncInferenceClient):
    """An AsyncInferenceClient whose HTTP client reads answers within AnswerLimits. It
    makes its httpx2 client on first use, from a process-wide factory: the limits are put
    on that client, this one's own, rather than on the factory, every client's."""

    def __init__(self, *, answer_limits: AnswerLimits, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._answer_limits = answer_limits

    async def _get_async_client(self) -> httpx2.AsyncClient:
        made = self._async_client is None
        client: httpx2.AsyncClient = await super()._get_async_client()  # type: ignore[no-untyped-call]
        if made:
            self._answer_limits.install(client)
        return client


class HuggingFaceProvider:
    name = "huggingface"

    def __init__(self, *, read_timeout: float, answer_limits: AnswerLimits) -> None:
        self._timeout = read_timeout
        self._answer_limits = answer_limits
        self._clients: dict[tuple[str | None, str | None, str], AsyncInferenceClient] = {}

    def _client(self, credential: Credential) -> AsyncInferenceClient:
        """One client (and its connection pool) per credential and endpoint, reused."""
        fingerprint = hashlib.sha256((credential.api_key or "").encode()).hexdigest()[:16]
        key = (credential.id, credential.base_url, fingerprint)
        client = self._clients.get(key)
        if client is None:
            if credential.base_url:
                client = _LimitedInferenceClient(
                    base_url=credential.base_url, token=credential.api_key, timeout=self._timeout,
                    answer_limits=self._answer_limits,
                )  # fmt: skip
            else:
                client = _LimitedInferenceClient(
                    token=credential.api_key, timeout=self._timeout,
                    answer_limits=self._answer_limits,
                )  # fmt: skip
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
        return chat_result(_jsonable(_as_dict(output)), _usage)

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
            read_usage=_usage,
            forward_usage=wants_usage(request),
        )

    async def embed(self, credential: Credential, model: str, inputs: list[str]) -> EmbeddingResult:
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
