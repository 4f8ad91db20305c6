"""Any OpenAI-compatible endpoint through the official SDK (OpenAI, vLLM, Ollama, ...)."""

from __future__ import annotations

import hashlib
from typing import Any

import httpx2
import openai
from openai import AsyncOpenAI

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

DEFAULT_BASE_URL = "https://api.openai.com/v1"
# What we send ourselves; everything else in the request is passed through untouched.
OWN_FIELDS = frozenset({"model", "messages", "stream", "stream_options"})


def _usage(raw: Any) -> Usage | None:
    if not isinstance(raw, dict) or raw.get("prompt_tokens") is None:
        return None
    return Usage(
        prompt_tokens=int(raw.get("prompt_tokens") or 0),
        completion_tokens=int(raw.get("completion_tokens") or 0),
    )


def map_error(exc: Exception) -> ProviderError:
    """The SDK's exceptions, classified for retries and for the caller."""
    if isinstance(exc, openai.APITimeoutError):
        return ProviderError("The provider did not answer in time.", kind="timeout", retryable=True)
    if isinstance(exc, openai.APIConnectionError):
        return ProviderError("Could not reach the provider.", kind="connection", retryable=True)
    if isinstance(exc, openai.APIStatusError):
        body = exc.body if isinstance(exc.body, dict) else {}
        message = str(body.get("message") or exc.message or exc)
        return error_for_status(
            exc.status_code, message, parse_retry_after(exc.response.headers.get("retry-after"))
        )
    if isinstance(exc, ProviderError):
        return exc
    return ProviderError(
        f"The provider's answer could not be read ({type(exc).__name__}).",
        kind="malformed",
        retryable=True,
    )


class OpenAIProvider:
    name = "openai"

    def __init__(self, *, connect_timeout: float, read_timeout: float) -> None:
        self._timeout = httpx2.Timeout(read_timeout, connect=connect_timeout)
        # One connection pool for every credential's client (the SDK speaks httpx2).
        self._http = httpx2.AsyncClient(
            timeout=self._timeout,
            limits=httpx2.Limits(max_connections=500, max_keepalive_connections=100),
        )
        self._clients: dict[tuple[str | None, str, str], AsyncOpenAI] = {}

    def _client(self, credential: Credential) -> AsyncOpenAI:
        base_url = credential.base_url or DEFAULT_BASE_URL
        fingerprint = hashlib.sha256((credential.api_key or "").encode()).hexdigest()[:16]
        key = (credential.id, base_url, fingerprint)
        client = self._clients.get(key)
        if client is None:
            client = AsyncOpenAI(
                api_key=credential.api_key or "none",
                base_url=base_url,
                max_retries=0,  # the router retries, with its own policy and deadline
                timeout=self._timeout,
                http_client=self._http,
            )
            self._clients[key] = client
        return client

    @staticmethod
    def _params(request: dict[str, Any]) -> dict[str, Any]:
        extra = {k: v for k, v in request.items() if k not in OWN_FIELDS}
        return {"extra_body": extra} if extra else {}

    async def chat(self, credential: Credential, model: str, request: dict[str, Any]) -> ChatResult:
        try:
            completion = await self._client(credential).chat.completions.create(
                model=model, messages=request["messages"], stream=False, **self._params(request)
            )
            body = completion.model_dump(exclude_unset=True, mode="json")
        except Exception as exc:
            raise map_error(exc) from exc
        return chat_result(body, _usage)

    async def chat_stream(
        self, credential: Credential, model: str, request: dict[str, Any]
    ) -> ChunkStream:
        options = request.get("stream_options")
        return await ChunkStream.open(
            self._client(credential).chat.completions.create(
                model=model,
                messages=request["messages"],
                stream=True,
                stream_options={
                    **(options if isinstance(options, dict) else {}),
                    "include_usage": True,
                },
                **self._params(request),
            ),
            to_dict=lambda chunk: chunk.model_dump(exclude_unset=True, mode="json"),
            map_error=map_error,
            read_usage=_usage,
            forward_usage=wants_usage(request),
        )

    async def embed(self, credential: Credential, model: str, inputs: list[str]) -> EmbeddingResult:
        try:
            response = await self._client(credential).embeddings.create(
                model=model, input=inputs, encoding_format="float"
            )
        except Exception as exc:
            raise map_error(exc) from exc
        vectors = [item.embedding for item in sorted(response.data, key=lambda d: d.index)]
        usage = (
            Usage(prompt_tokens=response.usage.prompt_tokens, completion_tokens=0)
            if response.usage
            else None
        )
        return EmbeddingResult(vectors=vectors, usage=usage, model=response.model)

    async def aclose(self) -> None:
        await self._http.aclose()
