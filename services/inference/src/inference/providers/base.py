"""The interface every provider adapter implements, and the errors they raise."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class Credential:
    """What an adapter needs to reach a provider: the decrypted key and an endpoint (and,
    for Azure OpenAI, the API version its requests name)."""

    id: str | None
    api_key: str | None
    base_url: str | None
    api_version: str | None = None


@dataclass
class Usage:
    """Tokens of one call. `cached_tokens` (read from the provider's prompt cache) and
    `cache_write_tokens` (written to it: Anthropic bills them above the input price) are
    part of `prompt_tokens`; `reasoning_tokens` part of `completion_tokens`."""

    prompt_tokens: int
    completion_tokens: int
    estimated: bool = False
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0


def _count(value: Any) -> int:
    """A token count from a provider's answer: a non-negative int, else 0."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def read_usage(raw: Any) -> Usage | None:
    """The Usage of an OpenAI usage object (a dict, or the SDK's object): prompt and
    completion tokens, `prompt_tokens_details.cached_tokens`,
    `completion_tokens_details.reasoning_tokens`, and `cache_creation_input_tokens` (the
    Anthropic provider's, as LiteLLM names it). None when it has no prompt tokens. Details
    larger than their total are capped at it."""
    if raw is None:
        return None
    data = raw if isinstance(raw, dict) else getattr(raw, "__dict__", {})
    if not isinstance(data.get("prompt_tokens"), int):
        return None
    prompt, completion = _count(data["prompt_tokens"]), _count(data.get("completion_tokens"))
    details = data.get("prompt_tokens_details")
    details = details if isinstance(details, dict) else getattr(details, "__dict__", {})
    cached = min(_count(details.get("cached_tokens")), prompt)
    written = min(_count(data.get("cache_creation_input_tokens")), prompt - cached)
    completion_details = data.get("completion_tokens_details")
    if not isinstance(completion_details, dict):
        completion_details = getattr(completion_details, "__dict__", {})
    reasoning = min(_count(completion_details.get("reasoning_tokens")), completion)
    return Usage(prompt, completion, cached_tokens=cached, cache_write_tokens=written,
                 reasoning_tokens=reasoning)  # fmt: skip


@dataclass
class ChatResult:
    """A complete (non-streamed) chat completion in OpenAI's shape."""

    body: dict[str, Any]
    usage: Usage | None


@dataclass
class EmbeddingResult:
    vectors: list[list[float]]
    usage: Usage | None
    model: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


class ChatStream(Protocol):
    """OpenAI chat.completion.chunk dicts; `usage` is known once the stream ended."""

    usage: Usage | None

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]: ...

    async def aclose(self) -> None: ...


class ChunkStream:
    """A provider's stream of chat chunks as OpenAI chunk dicts.

    The first chunk was already read (so failures before it could still be retried). The
    usage chunk, which we always ask for, is recorded in `usage`, and passed on only when
    the caller asked for it too. Errors mid-stream come out as ProviderError.
    """

    def __init__(
        self,
        first: Any,
        rest: AsyncIterator[Any],
        *,
        to_dict: Callable[[Any], dict[str, Any]],
        map_error: Callable[[Exception], ProviderError],
        read_usage: Callable[[Any], Usage | None],
        close: Callable[[], Awaitable[None]],
        forward_usage: bool,
    ) -> None:
        self._first: Any = first
        self._rest = rest
        self._to_dict = to_dict
        self._map_error = map_error
        self._read_usage = read_usage
        self._close = close
        self._forward_usage = forward_usage
        self.usage: Usage | None = None

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[dict[str, Any]]:
        try:
            while True:
                if self._first is not None:
                    chunk, self._first = self._first, None
                else:
                    try:
                        chunk = await anext(self._rest)
                    except StopAsyncIteration:
                        return
                    except Exception as exc:
                        raise self._map_error(exc) from exc
                data = self._to_dict(chunk)
                usage = self._read_usage(data.get("usage"))
                if usage is not None:
                    self.usage = usage
                    if not data.get("choices") and not self._forward_usage:
                        continue
                yield data
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        await self._close()

    @classmethod
    async def open(
        cls,
        opening: Awaitable[Any],
        *,
        to_dict: Callable[[Any], dict[str, Any]],
        map_error: Callable[[Exception], ProviderError],
        read_usage: Callable[[Any], Usage | None],
        forward_usage: bool,
    ) -> ChunkStream:
        """Start a provider's stream and read its first chunk: until then a failure is a
        ProviderError that failover may retry."""
        try:
            stream = await opening
            rest = stream.__aiter__()
            first = await anext(rest)
        except StopAsyncIteration:
            raise ProviderError(
                "The provider's stream was empty.", kind="malformed", retryable=True
            ) from None
        except Exception as exc:
            raise map_error(exc) from exc
        closer = getattr(stream, "aclose", None) or getattr(rest, "aclose", None)

        async def close() -> None:
            if closer is not None:
                await closer()

        return cls(
            first, rest, to_dict=to_dict, map_error=map_error, read_usage=read_usage,
            close=close, forward_usage=forward_usage,
        )  # fmt: skip


def wants_usage(request: dict[str, Any]) -> bool:
    """Did the caller ask for the usage chunk at the end of a stream?"""
    options = request.get("stream_options")
    return isinstance(options, dict) and bool(options.get("include_usage"))


def chat_result(body: dict[str, Any], read_usage: Callable[[Any], Usage | None]) -> ChatResult:
    """A complete chat answer, if it has choices (else a malformed, retryable answer)."""
    if not isinstance(body.get("choices"), list):
        raise ProviderError(
            "The provider's answer has no choices.", kind="malformed", retryable=True
        )
    return ChatResult(body=body, usage=read_usage(body.get("usage")))


# A provider's message goes into the caller's problem detail, a span's status and log
# lines: only its first MESSAGE_MAX_CHARS characters do (a 200 kB one was seen, and every
# log line is scanned for secrets, per character).
MESSAGE_MAX_CHARS = 500


def clip(text: str, limit: int = MESSAGE_MAX_CHARS) -> str:
    """`text` cut to `limit` characters, saying how many more there were."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text) - limit} more characters)"


class ProviderError(Exception):
    """A failed call to a provider, classified for failover (retry, next target, or stop).

    `retryable`: worth another attempt or another target (timeouts, connection errors,
    408/409/429/5xx, malformed answers). Otherwise a client error (400/401/403/404/422)
    that comes back to the caller with the provider's own message, clipped.
    """

    def __init__(
        self,
        message: str,
        *,
        kind: str,
        retryable: bool,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        message = clip(message)
        super().__init__(message)
        self.message = message
        self.kind = kind
        self.retryable = retryable
        self.status = status
        self.retry_after = retry_after


RETRYABLE_STATUS = frozenset({408, 409, 429}) | frozenset(range(500, 600))


def timed_out() -> ProviderError:
    return ProviderError("The provider did not answer in time.", kind="timeout", retryable=True)


def unreachable() -> ProviderError:
    return ProviderError("Could not reach the provider.", kind="connection", retryable=True)


def unreadable(exc: BaseException) -> ProviderError:
    """Any other failure of a call: the answer (if any) could not be read; retried."""
    return ProviderError(
        f"The provider's answer could not be read ({type(exc).__name__}).",
        kind="malformed",
        retryable=True,
    )


def error_for_status(status: int, message: str, retry_after: float | None = None) -> ProviderError:
    return ProviderError(
        message,
        kind="rate_limited" if status == 429 else f"http_{status}",
        retryable=status in RETRYABLE_STATUS,
        status=status,
        retry_after=retry_after,
    )


def error_message(body: Any) -> str | None:
    """The message of an error answer in a provider's own shape: OpenAI's
    `{"error": {"message"}}`, TGI's and Ollama's `{"error": "..."}`, vLLM's
    `{"object": "error", "message"}`. Anything else (an HTML page, a bare status, another
    service's JSON) gives None: its body never reaches the caller, whoever answered."""
    if not isinstance(body, dict):
        return None
    error = body.get("error")
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return str(error["message"])
    if isinstance(error, str):
        return error
    if body.get("object") == "error" and isinstance(body.get("message"), str):
        return str(body["message"])
    return None


NOT_AN_API_ERROR = "The provider's error answer is not in an API's error format (not shown)."


def answer_message(response: Any) -> str:
    """What the caller may read of an error answer (an httpx2 response, read): the
    provider's own message, or NOT_AN_API_ERROR."""
    try:
        body = response.json()
    except Exception:  # not read, or not JSON: not an API's error answer
        body = None
    return error_message(body) or NOT_AN_API_ERROR


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: ignored, the backoff applies


class Provider(Protocol):
    """One provider family (openai, huggingface, local)."""

    name: str

    async def chat(
        self, credential: Credential, model: str, request: dict[str, Any]
    ) -> ChatResult: ...

    async def chat_stream(
        self, credential: Credential, model: str, request: dict[str, Any]
    ) -> ChatStream:
        """Open the stream; raises ProviderError if it fails before the first chunk."""
        ...

    def honours_dimensions(self, model: str, dimensions: int) -> bool:
        """Whether `model` can answer vectors of `dimensions` (OpenAI's `dimensions`)."""
        ...

    async def list_models(self, credential: Credential) -> list[str]:
        """The models the provider serves this credential, as it names them (its `/models`);
        raises ProviderError when it cannot say."""
        ...

    async def embed(
        self, credential: Credential, model: str, inputs: list[str], dimensions: int | None = None
    ) -> EmbeddingResult:
        """One vector per input; of `dimensions` when given (honours_dimensions said so)."""
        ...

    async def aclose(self) -> None: ...
