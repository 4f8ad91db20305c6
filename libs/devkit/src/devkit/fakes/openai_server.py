"""A local server that speaks OpenAI's HTTP API as the official `openai` SDK expects it.

Routes: `GET /v1/models`, `GET /v1/models/{model}`, `POST /v1/chat/completions` (JSON or
server-sent events) and `POST /v1/embeddings` (float or base64). Replies are deterministic:
the assistant answers "echo: <last user message>", or N words when that message is
"words:N"; `max_tokens` / `max_completion_tokens` truncate with `finish_reason: "length"`.
Tokens are whitespace-separated words, counted the same way streamed or not. Embeddings are
unit vectors derived from a hash of the text.

Usage details as OpenAI reports them: prompt caching is automatic for prompts of 1,024
tokens or more, a prefix seen before is read from the cache in steps of 128 tokens
(`prompt_tokens_details.cached_tokens`); reasoning models (o1, o3, o4-mini, gpt-5...)
think as many hidden tokens as they answer (`completion_tokens_details.reasoning_tokens`,
counted in `completion_tokens`).

It is plain Starlette with no per-request work beyond building the reply, so it doubles as
the zero-delay upstream of the benchmarks.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import json
import math
import re
import secrets
import struct
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from devkit.fakes.endpoints import Refused, bearer_key, json_body, same_secret
from devkit.fakes.faults import FaultControl, build_app

__all__ = [
    "DEFAULT_DIMENSIONS",
    "DEFAULT_MODELS",
    "OpenAIEndpoints",
    "Reply",
    "chat_problem",
    "chat_response",
    "count_tokens",
    "create_openai_app",
    "embedding_inputs",
    "embedding_vector",
    "encode_base64",
    "message_text",
    "openai_error",
    "reply_to",
]

DEFAULT_MODELS = ("gpt-4o-mini", "text-embedding-3-small")
DEFAULT_DIMENSIONS = 8
MAX_WORDS = 100_000
MODEL_CREATED = 1_700_000_000
_ID_PREFIX = secrets.token_hex(10)
_ID_COUNTER = itertools.count()
_VOCABULARY = ("lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit")
_NO_KEY = (
    "You didn't provide an API key. You need to provide your API key in an "
    "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
)
_ERROR_DEFAULTS: dict[int, tuple[str, str, str | None]] = {
    400: ("invalid_request_error", "Bad request.", None),
    401: ("invalid_request_error", "Incorrect API key provided.", "invalid_api_key"),
    403: ("invalid_request_error", "You are not allowed to access this resource.", None),
    404: ("invalid_request_error", "The resource you requested does not exist.", None),
    408: ("server_error", "The request timed out.", None),
    409: ("server_error", "The request conflicted with another one.", None),
    429: (
        "requests",
        "Rate limit reached for requests. Please try again later.",
        "rate_limit_exceeded",
    ),
    500: (
        "server_error",
        "The server had an error while processing your request. Sorry about that!",
        None,
    ),
    503: ("server_error", "The engine is currently overloaded, please try again later.", None),
}


def count_tokens(text: str) -> int:
    """The fake's tokenizer: whitespace-separated words."""
    return len(text.split())


def message_text(content: Any) -> str:
    """The text of a message's `content`: a string, or the text parts of a list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


@dataclass(frozen=True, slots=True)
class Reply:
    """The assistant's deterministic answer to a chat request, with its token counts."""

    words: tuple[str, ...]
    finish_reason: str
    prompt_tokens: int
    # OpenAI's usage details (None: not reported, as TGI does not).
    cached_tokens: int | None = None
    reasoning_tokens: int | None = None

    @property
    def text(self) -> str:
        return " ".join(self.words)

    @property
    def completion_tokens(self) -> int:
        return len(self.words) + (self.reasoning_tokens or 0)

    @property
    def usage(self) -> dict[str, Any]:
        usage: dict[str, Any] = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }
        if self.cached_tokens is not None:
            usage["prompt_tokens_details"] = {"cached_tokens": self.cached_tokens,
                                              "audio_tokens": 0}  # fmt: skip
        if self.reasoning_tokens is not None:
            usage["completion_tokens_details"] = {
                "reasoning_tokens": self.reasoning_tokens, "audio_tokens": 0,
                "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0,
            }  # fmt: skip
        return usage


# OpenAI's prompt caching: prompts from this many tokens, cached prefixes in these steps.
CACHE_MIN_TOKENS = 1024
CACHE_STEP_TOKENS = 128
REASONING_MODELS = re.compile(r"^(o\d|gpt-5)")


class PromptCache:
    """The prompt prefixes this server has seen (OpenAI caches them automatically)."""

    def __init__(self, most: int = 100_000) -> None:
        self._seen: set[bytes] = set()
        self._most = most

    def cached_tokens(self, payload: dict[str, Any]) -> int:
        """Tokens of the longest prefix (1,024 + k x 128) seen before; remembers this one."""
        words = " ".join(message_text(m.get("content")) for m in payload["messages"]).split()
        if len(words) < CACHE_MIN_TOKENS:
            return 0
        model = str(payload["model"]).encode()
        digest, found, at = hashlib.sha256(model), 0, 0
        for length in range(CACHE_MIN_TOKENS, len(words) + 1, CACHE_STEP_TOKENS):
            digest.update(" ".join(words[at:length]).encode() + b" ")
            at = length
            key = digest.copy().digest()
            if key in self._seen:
                found = length
            elif len(self._seen) < self._most:
                self._seen.add(key)
        return found


def with_details(reply: Reply, payload: dict[str, Any], cache: PromptCache) -> Reply:
    """The reply with OpenAI's usage details."""
    reasoning = len(reply.words) if REASONING_MODELS.match(str(payload["model"])) else 0
    return replace(reply, cached_tokens=cache.cached_tokens(payload), reasoning_tokens=reasoning)


def reply_to(payload: dict[str, Any]) -> Reply:
    """The reply to a validated chat request: "echo: <last user message>", or N words for
    "words:N", cut to `max_completion_tokens` / `max_tokens`."""
    prompt_tokens = 0
    last_user = ""
    for message in payload["messages"]:
        text = message_text(message.get("content"))
        prompt_tokens += count_tokens(text)
        if message.get("role") == "user":
            last_user = text
    command, _, count = last_user.strip().partition(":")
    if command == "words" and count.isdigit():
        n = min(int(count), MAX_WORDS)
        words = tuple(_VOCABULARY[i % len(_VOCABULARY)] for i in range(n))
    else:
        words = ("echo:", *last_user.split())
    limit = payload.get("max_completion_tokens") or payload.get("max_tokens")
    if isinstance(limit, int) and 0 < limit < len(words):
        return Reply(words[:limit], "length", prompt_tokens)
    return Reply(words, "stop", prompt_tokens)


def chat_problem(payload: Any) -> tuple[str, str | None] | None:
    """(message, param) saying why a body is not a chat request, or None when it is one."""
    if not isinstance(payload, dict):
        return "The request body must be a JSON object.", None
    if not isinstance(payload.get("model"), str) or not payload["model"]:
        return "Missing required parameter: 'model'.", "model"
    messages = payload.get("messages")
    if messages is None:
        return "Missing required parameter: 'messages'.", "messages"
    if not isinstance(messages, list) or not messages:
        return "[] is too short - 'messages'", "messages"
    if not all(isinstance(message, dict) and "role" in message for message in messages):
        return "Invalid value for 'messages': each message needs a 'role'.", "messages"
    return None


def chat_response(
    payload: dict[str, Any],
    *,
    model: str | None = None,
    system_fingerprint: str | None = None,
    headers: dict[str, str] | None = None,
    cache: PromptCache | None = None,
) -> Response:
    """A `chat.completion` object, or its `text/event-stream` when `stream` is true; with
    OpenAI's usage details when given its prompt cache."""
    reply = reply_to(payload)
    if cache is not None:
        reply = with_details(reply, payload, cache)
    completion_id = f"chatcmpl-{_unique_id()}"
    created = int(time.time())
    head = {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model or payload["model"],
        "system_fingerprint": system_fingerprint,
    }
    if payload.get("stream") is True:
        options = payload.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        head["object"] = "chat.completion.chunk"
        return StreamingResponse(
            _chunks(head, reply, include_usage=include_usage),
            media_type="text/event-stream",
            headers={"cache-control": "no-cache", **(headers or {})},
        )
    body: dict[str, Any] = {
        **head,
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": reply.text,
                    "refusal": None,
                    "annotations": [],
                },
                "logprobs": None,
                "finish_reason": reply.finish_reason,
            }
        ],
        "usage": reply.usage,
        "service_tier": "default",
    }
    return JSONResponse(body, headers=headers)


async def _chunks(
    head: dict[str, Any], reply: Reply, *, include_usage: bool
) -> AsyncIterator[bytes]:
    """The server-sent events of a streamed reply: role, one word per chunk, finish, usage."""
    tail = {"usage": None} if include_usage else {}

    def event(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return _event({**head, "choices": [choice], **tail})

    yield event({"role": "assistant", "content": "", "refusal": None})
    for index, word in enumerate(reply.words):
        yield event({"content": word if index == 0 else f" {word}"})
    yield event({}, reply.finish_reason)
    if include_usage:
        yield _event({**head, "choices": [], "usage": reply.usage})
    yield b"data: [DONE]\n\n"


def _event(data: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


def embedding_vector(text: str, dimensions: int = DEFAULT_DIMENSIONS) -> list[float]:
    """A deterministic unit vector for `text`, its components exact float32 values."""
    digest = hashlib.shake_256(text.encode()).digest(4 * dimensions)
    raw = [value / 2**31 - 1.0 for value in struct.unpack(f"<{dimensions}I", digest)]
    norm = math.sqrt(sum(value * value for value in raw)) or 1.0
    packed = struct.pack(f"<{dimensions}f", *(value / norm for value in raw))
    return list(struct.unpack(f"<{dimensions}f", packed))


def encode_base64(vector: Sequence[float]) -> str:
    """A vector as OpenAI's base64 encoding: little-endian float32."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def embedding_inputs(value: Any) -> list[str] | None:
    """The texts of an `input` (a string, strings, or token arrays), or None if invalid."""
    if isinstance(value, str):
        return [value] if value else None
    if not isinstance(value, list) or not value:
        return None
    if all(isinstance(item, int) for item in value):
        return [" ".join(map(str, value))]
    texts: list[str] = []
    for item in value:
        if isinstance(item, str) and item:
            texts.append(item)
        elif isinstance(item, list) and item and all(isinstance(token, int) for token in item):
            texts.append(" ".join(map(str, item)))
        else:
            return None
    return texts


def openai_error(
    status: int,
    message: str | None = None,
    retry_after: float | None = None,
    *,
    param: str | None = None,
    code: str | None = None,
    error_type: str | None = None,
) -> JSONResponse:
    """An error in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.

    Without a `message`, the status's usual message and code are used."""
    default_type, default_message, default_code = _ERROR_DEFAULTS.get(
        status, ("server_error" if status >= 500 else "invalid_request_error", "Error.", None)
    )
    headers: dict[str, str] = {}
    if retry_after is not None:
        headers["retry-after"] = str(math.ceil(retry_after))
        headers["retry-after-ms"] = str(round(retry_after * 1000))
    body = {
        "error": {
            "message": message or default_message,
            "type": error_type or default_type,
            "param": param,
            "code": default_code if message is None and code is None else code,
        }
    }
    return JSONResponse(body, status_code=status, headers=headers)


class OpenAIEndpoints:
    """OpenAI's endpoints bound to one app's settings (the HF fake reuses `embeddings`)."""

    def __init__(
        self, api_key: str | None, models: Sequence[str], dimensions: int, latency: float
    ) -> None:
        self.api_key = api_key
        self.models = tuple(models)
        self.dimensions = dimensions
        self.latency = latency
        self.prompt_cache = PromptCache()

    def routes(self) -> list[Route]:
        return [
            Route("/v1/models", self.list_models, methods=["GET"]),
            Route("/v1/models/{model:path}", self.retrieve_model, methods=["GET"]),
            Route("/v1/chat/completions", self.chat_completions, methods=["POST"]),
            Route("/v1/embeddings", self.embeddings, methods=["POST"]),
        ]

    async def list_models(self, request: Request) -> Response:
        self._authorize(request)
        return JSONResponse({"object": "list", "data": [_model(name) for name in self.models]})

    async def retrieve_model(self, request: Request) -> Response:
        self._authorize(request)
        name = request.path_params["model"]
        if name not in self.models:
            return openai_error(
                404,
                f"The model '{name}' does not exist or you do not have access to it.",
                param="model",
                code="model_not_found",
            )
        return JSONResponse(_model(name))

    async def chat_completions(self, request: Request) -> Response:
        payload = await self._payload(request)
        if problem := chat_problem(payload):
            message, param = problem
            code = "missing_required_parameter" if message.startswith("Missing") else None
            return openai_error(400, message, param=param, code=code)
        if self.latency:
            await asyncio.sleep(self.latency)
        return chat_response(payload, headers=_request_id(), cache=self.prompt_cache)

    async def embeddings(self, request: Request) -> Response:
        payload = await self._payload(request)
        if not isinstance(payload, dict) or not isinstance(payload.get("model"), str):
            return openai_error(400, "Missing required parameter: 'model'.", param="model")
        if "input" not in payload:
            return openai_error(400, "Missing required parameter: 'input'.", param="input")
        texts = embedding_inputs(payload["input"])
        if texts is None:
            return openai_error(
                400, "'$.input' is invalid. Please check the API reference.", param="input"
            )
        encoding = payload.get("encoding_format") or "float"
        if encoding not in ("float", "base64"):
            return openai_error(
                400,
                f"Invalid value: '{encoding}'. Supported values are: 'float' and 'base64'.",
                param="encoding_format",
            )
        dimensions = payload.get("dimensions", self.dimensions)
        if not isinstance(dimensions, int) or isinstance(dimensions, bool) or dimensions < 1:
            return openai_error(400, "Invalid value for 'dimensions'.", param="dimensions")
        if self.latency:
            await asyncio.sleep(self.latency)
        data = []
        for index, text in enumerate(texts):
            vector = embedding_vector(text, dimensions)
            encoded = encode_base64(vector) if encoding == "base64" else vector
            data.append({"object": "embedding", "index": index, "embedding": encoded})
        tokens = sum(count_tokens(text) for text in texts)
        body = {
            "object": "list",
            "data": data,
            "model": payload["model"],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        return JSONResponse(body, headers=_request_id())

    def _authorize(self, request: Request) -> None:
        """Refuse with a 401 unless the request carries `Authorization: Bearer <api_key>`
        (when one is set)."""
        if self.api_key is None:
            return
        key = bearer_key(request)
        if key is None:
            message, code = _NO_KEY, None
        elif not same_secret(key, self.api_key):
            masked = f"{key[:3]}{'*' * max(len(key) - 7, 0)}{key[-4:]}"
            message = (
                f"Incorrect API key provided: {masked}. You can find your API key at "
                "https://platform.openai.com/account/api-keys."
            )
            code = "invalid_api_key"
        else:
            return
        raise Refused(openai_error(401, message, code=code))

    async def _payload(self, request: Request) -> Any:
        """The JSON body of an authorized request (else `Refused` with OpenAI's answer)."""
        self._authorize(request)
        return await json_body(request, _unparsable)


def _model(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": MODEL_CREATED, "owned_by": "system"}


def _unique_id() -> str:
    """A process-unique hex id (cheaper than a UUID per response)."""
    return f"{_ID_PREFIX}{next(_ID_COUNTER):012x}"


def _request_id() -> dict[str, str]:
    return {"x-request-id": f"req_{_unique_id()}"}


def _unparsable() -> Response:
    return openai_error(
        400,
        "We could not parse the JSON body of your request. (HINT: This likely means you "
        "aren't using your HTTP library correctly. The OpenAI API expects a JSON payload.)",
    )


def _not_found_message(request: Request) -> str:
    return f"Invalid URL ({request.method} {request.url.path})"


def create_openai_app(
    control: FaultControl | None = None,
    *,
    api_key: str | None = None,
    models: Sequence[str] = DEFAULT_MODELS,
    dimensions: int = DEFAULT_DIMENSIONS,
    latency: float = 0.0,
) -> Starlette:
    """The OpenAI fake. With `api_key`, other keys get 401; `latency` seconds are waited
    before each chat or embeddings response; `control` injects faults and records requests."""
    routes = OpenAIEndpoints(api_key, models, dimensions, latency)
    return build_app(
        routes.routes(),
        control=control,
        render_error=openai_error,
        not_found_message=_not_found_message,
    )
