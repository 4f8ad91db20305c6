"""A local server that speaks Anthropic's Messages API as Anthropic's clients expect it.

Routes: `GET /v1/models` (paginated as Anthropic's: `data`, `has_more`, `first_id`,
`last_id`), `GET /v1/models/{model}`, `POST /v1/messages` (JSON, or server-sent events with
Anthropic's event sequence: message_start, ping, content_block_start/delta/stop per block,
message_delta, message_stop). Requests need the key (in `x-api-key`, or as a bearer token
as Anthropic's 2.x client sends it; 401 `authentication_error` otherwise, when a key is
set); messages need `anthropic-version`, and are checked as Anthropic does:
required fields, no unknown ones, roles that alternate user/assistant, each `tool_use`
answered by a `tool_result` in the next turn, temperature within 0..1.

Replies are deterministic, tokens being whitespace-separated words:
- the last user turn's text is echoed ("echo: <text>"), or N words for "words:N";
- each line "use:<tool> <JSON input>" of it, when that tool is given (and tool_choice is
  not none), is answered with a text block then one `tool_use` block per line
  (stop_reason tool_use); tool_choice any/tool forces a call of the first/named tool;
- a turn of `tool_result` blocks is answered "result: <their text>";
- "error:overloaded" streams a first word, then an `error` event (overloaded_error);
- `stop_sequences` and `max_tokens` cut the reply (stop_reason stop_sequence, max_tokens).
Prompt caching: the prompt up to the last block with `cache_control` is a cache prefix;
the first request with it reports its tokens as `cache_creation_input_tokens`, later ones
as `cache_read_input_tokens`; the rest are `input_tokens`.
Errors are Anthropic's `{"type": "error", "error": {"type", "message"}}`, 529 included.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import math
import secrets
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from devkit.fakes.endpoints import Refused, bearer_key, json_body, same_secret
from devkit.fakes.faults import FaultControl, build_app

__all__ = ["DEFAULT_MODELS", "anthropic_error", "create_anthropic_app"]

DEFAULT_MODELS = ("claude-sonnet-4-5-20250929", "claude-haiku-4-5-20251001")
MAX_WORDS = 100_000
_ID_PREFIX = secrets.token_hex(6)
_ID_COUNTER = itertools.count()
_VOCABULARY = ("lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit")
_FIELDS = frozenset(
    {
        "model", "messages", "max_tokens", "system", "stop_sequences", "stream", "temperature",
        "top_p", "top_k", "tools", "tool_choice", "metadata", "thinking", "service_tier",
    }
)  # fmt: skip
_ERROR_TYPES = {
    400: ("invalid_request_error", "Bad request."),
    401: ("authentication_error", "invalid x-api-key"),
    403: ("permission_error", "Your API key does not have permission to use the resource."),
    404: ("not_found_error", "Not found."),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: ("rate_limit_error", "Number of requests has exceeded your rate limit."),
    500: ("api_error", "Internal server error."),
    529: ("overloaded_error", "Overloaded"),
}


def anthropic_error(
    status: int, message: str | None = None, retry_after: float | None = None
) -> JSONResponse:
    """An error in Anthropic's shape; without a `message`, the status's usual one."""
    default_type, default_message = _ERROR_TYPES.get(
        status, ("api_error" if status >= 500 else "invalid_request_error", "Error.")
    )
    headers = {"request-id": f"req_{_unique_id()}"}
    if retry_after is not None:
        headers["retry-after"] = str(math.ceil(retry_after))
    body = {"type": "error", "error": {"type": default_type, "message": message or default_message}}
    return JSONResponse(body, status_code=status, headers=headers)


def _invalid(message: str) -> Refused:
    return Refused(anthropic_error(400, message))


def _words(text: str) -> int:
    return len(text.split())


def _block_text(block: dict[str, Any]) -> str:
    """The text a block carries, as the fake counts its tokens."""
    kind = block.get("type")
    if kind == "text":
        return str(block.get("text", ""))
    if kind == "tool_use":
        return json.dumps(block.get("input"))
    if kind == "tool_result":
        content = block.get("content")
        if isinstance(content, list):
            return " ".join(_block_text(part) for part in content if isinstance(part, dict))
        return str(content or "")
    return "image" if kind in ("image", "document") else ""


def _blocks(content: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list) or not all(isinstance(b, dict) for b in content):
        raise _invalid(f"{where}: Input should be a valid list")
    for j, block in enumerate(content):
        if block.get("type") == "text" and not block.get("text"):
            raise _invalid(f"{where}.{j}: text content blocks must be non-empty")
        if block.get("type") == "image":
            source = block.get("source") or {}
            if source.get("type") not in ("base64", "url"):
                raise _invalid(f"{where}.{j}.source: Input tag does not match")
    return content


def _check(payload: Any) -> list[list[dict[str, Any]]]:
    """The blocks of each turn of a valid Messages request (else `Refused`, as Anthropic)."""
    if not isinstance(payload, dict):
        raise _invalid("The request body is not a JSON object.")
    for name in payload:
        if name not in _FIELDS:
            raise _invalid(f"{name}: Extra inputs are not permitted")
    for name in ("model", "messages", "max_tokens"):
        if name not in payload:
            raise _invalid(f"{name}: Field required")
    if not isinstance(payload["max_tokens"], int) or payload["max_tokens"] < 1:
        raise _invalid("max_tokens: Input should be greater than or equal to 1")
    temperature = payload.get("temperature")
    if temperature is not None and not 0 <= temperature <= 1:
        raise _invalid("temperature: range: 0..1")
    messages = payload["messages"]
    if not isinstance(messages, list) or not messages:
        raise _invalid("messages: at least one message is required")
    turns: list[list[dict[str, Any]]] = []
    pending: set[str] = set()
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ("user", "assistant"):
            raise _invalid(
                f'messages.{i}.role: Unexpected role "{role}". The Messages API accepts a '
                'top-level `system` parameter, not "system" as an input message role.'
            )
        if i and messages[i - 1]["role"] == role:
            raise _invalid('messages: roles must alternate between "user" and "assistant"')
        blocks = _blocks(message.get("content"), f"messages.{i}.content")
        answered = {b.get("tool_use_id") for b in blocks if b.get("type") == "tool_result"}
        if pending - answered:
            raise _invalid(
                f"messages.{i}: `tool_use` ids were found without `tool_result` blocks "
                f"immediately after: {', '.join(sorted(pending - answered))}"
            )
        if answered - pending:
            raise _invalid(f"messages.{i}.content: unexpected `tool_use_id` found in "
                           "`tool_result` blocks")  # fmt: skip
        pending = {str(b["id"]) for b in blocks if b.get("type") == "tool_use"}
        turns.append(blocks)
    return turns


@dataclass(frozen=True, slots=True)
class Reply:
    """The fake's answer: its content blocks, stop reason and usage."""

    blocks: list[dict[str, Any]]
    stop_reason: str
    stop_sequence: str | None
    usage: dict[str, int]
    prompt: str


def _text_reply(prompt: str, turn: list[dict[str, Any]]) -> str:
    results = [_block_text(b) for b in turn if b.get("type") == "tool_result"]
    if results:
        return "result: " + " ".join(results)
    command, _, count = prompt.strip().partition(":")
    if command == "words" and count.isdigit():
        n = min(int(count), MAX_WORDS)
        return " ".join(_VOCABULARY[i % len(_VOCABULARY)] for i in range(n))
    return f"echo: {prompt}"


def _tool_uses(payload: dict[str, Any], prompt: str) -> list[dict[str, Any]]:
    tools = [t["name"] for t in payload.get("tools") or () if isinstance(t, dict)]
    choice = payload.get("tool_choice") or {"type": "auto"}
    if not tools or choice.get("type") == "none":
        return []
    calls = []
    for line in prompt.splitlines():
        name, _, arguments = line.strip().removeprefix("use:").partition(" ")
        if line.strip().startswith("use:") and name in tools:
            calls.append((name, _input(arguments)))
    if not calls and choice.get("type") in ("any", "tool"):
        calls.append((choice.get("name") or tools[0], {}))
    if calls and choice.get("disable_parallel_tool_use"):
        calls = calls[:1]
    return [
        {"type": "tool_use", "id": f"toolu_{_unique_id()}", "name": name, "input": arguments}
        for name, arguments in calls
    ]


def _input(arguments: str) -> Any:
    try:
        return json.loads(arguments) if arguments.strip() else {}
    except ValueError:
        return {"text": arguments}


class Messages:
    """The Messages API with its prompt cache (the prefixes seen so far)."""

    def __init__(self) -> None:
        self.cached: set[str] = set()

    def _usage(self, payload: dict[str, Any], turns: list[list[dict[str, Any]]]) -> dict[str, int]:
        system = payload.get("system") or []
        blocks = (
            [{"type": "text", "text": system}] if isinstance(system, str) else list(system)
        ) + [block for turn in turns for block in turn]
        total = sum(_words(_block_text(b)) for b in blocks)
        marked = [i for i, b in enumerate(blocks) if "cache_control" in b]
        creation = read = 0
        if marked:
            prefix = blocks[: marked[-1] + 1]
            tokens = sum(_words(_block_text(b)) for b in prefix)
            key = hashlib.sha256(json.dumps(prefix, sort_keys=True).encode()).hexdigest()
            if key in self.cached:
                read = tokens
            else:
                self.cached.add(key)
                creation = tokens
        return {
            "input_tokens": total - creation - read,
            "cache_creation_input_tokens": creation,
            "cache_read_input_tokens": read,
        }

    def reply(self, payload: dict[str, Any]) -> Reply:
        turns = _check(payload)
        last = turns[-1] if payload["messages"][-1]["role"] == "user" else []
        prompt = " ".join(_block_text(b) for b in last if b.get("type") == "text")
        uses = _tool_uses(payload, prompt)
        text = f"I will call {uses[0]['name']}." if uses else _text_reply(prompt, last)
        stop_reason, stop_sequence = ("tool_use" if uses else "end_turn"), None
        for sequence in payload.get("stop_sequences") or ():
            at = text.find(sequence)
            if at >= 0:
                text, stop_reason, stop_sequence = text[:at].rstrip(), "stop_sequence", sequence
                uses = []
        words = text.split()
        if len(words) > payload["max_tokens"]:
            words, stop_reason, stop_sequence, uses = (
                words[: payload["max_tokens"]],
                "max_tokens",
                None,
                [],
            )
        blocks = ([{"type": "text", "text": " ".join(words)}] if words else []) + uses
        usage = self._usage(payload, turns)
        usage["output_tokens"] = sum(_words(_block_text(b)) for b in blocks)
        return Reply(blocks, stop_reason, stop_sequence, usage, prompt)


def _message(payload: dict[str, Any], reply: Reply) -> dict[str, Any]:
    return {
        "id": f"msg_{_unique_id()}",
        "type": "message",
        "role": "assistant",
        "model": payload["model"],
        "content": reply.blocks,
        "stop_reason": reply.stop_reason,
        "stop_sequence": reply.stop_sequence,
        "usage": {**reply.usage, "service_tier": "standard"},
    }


def _event(kind: str, data: dict[str, Any]) -> bytes:
    body = json.dumps({"type": kind, **data}, separators=(",", ":"))
    return f"event: {kind}\ndata: {body}\n\n".encode()


async def _events(message: dict[str, Any], fail: bool) -> AsyncIterator[bytes]:
    """Anthropic's event sequence for a message (text word by word, tool input in pieces)."""
    usage = message["usage"]
    start = {**message, "content": [], "stop_reason": None, "stop_sequence": None,
             "usage": {**usage, "output_tokens": 1}}  # fmt: skip
    yield _event("message_start", {"message": start})
    yield _event("ping", {})
    for index, block in enumerate(message["content"]):
        if block["type"] == "text":
            yield _event(
                "content_block_start",
                {"index": index, "content_block": {"type": "text", "text": ""}},
            )
            for n, word in enumerate(block["text"].split()):
                text = word if n == 0 else f" {word}"
                yield _event(
                    "content_block_delta",
                    {"index": index, "delta": {"type": "text_delta", "text": text}},
                )
                if fail:
                    error = {"type": "overloaded_error", "message": "Overloaded"}
                    yield _event("error", {"error": error})
                    return
        else:
            yield _event(
                "content_block_start", {"index": index, "content_block": {**block, "input": {}}}
            )
            arguments = json.dumps(block["input"])
            pieces = ["", *(arguments[i : i + 8] for i in range(0, len(arguments), 8))]
            for piece in pieces:
                delta = {"type": "input_json_delta", "partial_json": piece}
                yield _event("content_block_delta", {"index": index, "delta": delta})
        yield _event("content_block_stop", {"index": index})
    delta = {"stop_reason": message["stop_reason"], "stop_sequence": message["stop_sequence"]}
    yield _event(
        "message_delta", {"delta": delta, "usage": {"output_tokens": usage["output_tokens"]}}
    )
    yield _event("message_stop", {})


class AnthropicEndpoints:
    """Anthropic's endpoints bound to one app's settings."""

    def __init__(self, api_key: str | None, models: Sequence[str], latency: float) -> None:
        self.api_key = api_key
        self.models = tuple(models)
        self.latency = latency
        self.messages = Messages()

    def routes(self) -> list[Route]:
        return [
            Route("/v1/models", self.list_models, methods=["GET"]),
            Route("/v1/models/{model:path}", self.retrieve_model, methods=["GET"]),
            Route("/v1/messages", self.create_message, methods=["POST"]),
        ]

    async def list_models(self, request: Request) -> Response:
        self._authorize(request)
        limit = int(request.query_params.get("limit") or 20)
        if not 1 <= limit <= 1000:
            return anthropic_error(400, "limit: Input should be less than or equal to 1000")
        data = [_model(name) for name in self.models[:limit]]
        ids = [model["id"] for model in data]
        return JSONResponse({
            "data": data, "has_more": len(self.models) > limit,
            "first_id": ids[0] if ids else None, "last_id": ids[-1] if ids else None,
        })  # fmt: skip

    async def retrieve_model(self, request: Request) -> Response:
        self._authorize(request)
        name = request.path_params["model"]
        if name not in self.models:
            return anthropic_error(404, f"model: {name}")
        return JSONResponse(_model(name))

    async def create_message(self, request: Request) -> Response:
        self._authorize(request)
        if not request.headers.get("anthropic-version"):
            return anthropic_error(400, "anthropic-version: header is required")
        payload = await json_body(request, lambda: anthropic_error(400, "Invalid JSON body."))
        if self.latency:
            await asyncio.sleep(self.latency)
        reply = self.messages.reply(payload)
        message = _message(payload, reply)
        headers = {"request-id": f"req_{_unique_id()}"}
        if payload.get("stream") is True:
            return StreamingResponse(
                _events(message, fail=reply.prompt.strip() == "error:overloaded"),
                media_type="text/event-stream",
                headers={"cache-control": "no-cache", **headers},
            )
        return JSONResponse(message, headers=headers)

    def _authorize(self, request: Request) -> None:
        """The key in `x-api-key` (Anthropic's documented header), or as a bearer token
        (what Anthropic's client sends since its 2.x versions)."""
        if self.api_key is None:
            return
        key = request.headers.get("x-api-key") or bearer_key(request)
        if key is None:
            raise Refused(anthropic_error(401, "x-api-key header is required"))
        if not same_secret(key, self.api_key):
            raise Refused(anthropic_error(401, "invalid x-api-key"))


def _model(name: str) -> dict[str, Any]:
    return {"type": "model", "id": name, "display_name": name, "created_at": "2025-09-29T00:00:00Z"}


def _unique_id() -> str:
    return f"{_ID_PREFIX}{next(_ID_COUNTER):012x}"


def _not_found_message(request: Request) -> str:
    return f"Not found: {request.method} {request.url.path}"


def create_anthropic_app(
    control: FaultControl | None = None,
    *,
    api_key: str | None = None,
    models: Sequence[str] = DEFAULT_MODELS,
    latency: float = 0.0,
) -> Starlette:
    """The Anthropic fake. With `api_key`, other keys get 401; `latency` seconds are waited
    before each message; `control` injects faults (`fail(..., status=529)`: overloaded) and
    records requests."""
    routes = AnthropicEndpoints(api_key, models, latency)
    return build_app(
        routes.routes(),
        control=control,
        render_error=anthropic_error,
        not_found_message=_not_found_message,
    )
