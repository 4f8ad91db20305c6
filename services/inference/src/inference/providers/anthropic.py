"""Anthropic's Messages API, natively, behind the platform's OpenAI-shaped API.

Calls are `POST {base_url}/v1/messages` with `x-api-key` and `anthropic-version: 2023-06-01`
(base URL https://api.anthropic.com; a credential's `base_url` may end in `/v1` or not).
The caller's OpenAI chat request is translated, and the answer translated back:

- OpenAI -> Anthropic: system and developer messages become `system`; consecutive turns of
  one role are merged (tool answers are user turns, so a run of them is one turn of
  `tool_result` blocks); text parts, images (`data:` URLs as base64, http(s) URLs as `url`
  sources), PDF `file` parts as `document` blocks; assistant `tool_calls` as `tool_use`
  blocks; `tools`, `tool_choice` (auto/none/required/named), `parallel_tool_calls: false`,
  `max_completion_tokens` / `max_tokens` (Anthropic requires one: 4096 when neither is
  given), `temperature`, `top_p`, `stop`, `user` (as `metadata.user_id`), and Anthropic's
  own `top_k` as sent. A `cache_control` on a text part is kept (prompt caching). Other
  OpenAI fields (`response_format`, `seed`, penalties, `logprobs`, `metadata`, ...) have
  no Anthropic counterpart and are not sent; `n` above 1, audio, and the deprecated
  `function_call` are refused (400) before any call.
- Anthropic -> OpenAI: text blocks become the message content, `tool_use` blocks
  `tool_calls` (input JSON-encoded as `arguments`); stop reasons end_turn/stop_sequence ->
  stop, max_tokens -> length, tool_use -> tool_calls, refusal -> content_filter; usage:
  prompt_tokens = input + cache creation + cache read tokens, the cache reads also as
  `prompt_tokens_details.cached_tokens`. A stream's events (message_start,
  content_block_start/delta/stop, message_delta, message_stop, ping, error) become
  `chat.completion.chunk`s, the usage in a last chunk without choices.

One httpx2 client for every credential: the egress guard's transport (providers/egress.py,
every address checked, no redirect followed, no proxy from the environment) and the answer
limits (providers/limits.py).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx2

from inference.providers.base import (
    ChatResult,
    ChunkStream,
    Credential,
    EmbeddingResult,
    ProviderError,
    answer_message,
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

DEFAULT_BASE_URL = "https://api.anthropic.com"
API_VERSION = "2023-06-01"
# Anthropic requires max_tokens; a request that names no limit gets this one.
DEFAULT_MAX_TOKENS = 4096
# The most models one credential's list contributes to /v1/models (Anthropic's page limit).
MAX_LISTED_MODELS = 1_000
# Anthropic's own request fields a caller may send beside OpenAI's, passed as they are
# (not `metadata`: OpenAI's is a map of tags, which Anthropic would refuse).
ANTHROPIC_FIELDS = ("top_k",)

FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
TOOL_CHOICES = {"auto": "auto", "none": "none", "required": "any"}
# The status each error type of Anthropic's has (an `error` event in a stream has none).
ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "overloaded_error": 529,
}


def _refused(message: str) -> ProviderError:
    """A request Anthropic cannot take: a 400 to the caller, before any call."""
    return ProviderError(message, kind="unsupported", retryable=False, status=400)


def _malformed(what: str) -> ProviderError:
    return ProviderError(f"The provider's {what} could not be read.", kind="malformed",
                         retryable=True)  # fmt: skip


# ---------------------------------------------------------------- OpenAI -> Anthropic


def _text_block(text: str, part: dict[str, Any] | None = None) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "text", "text": text}
    if part is not None and "cache_control" in part:
        block["cache_control"] = part["cache_control"]
    return block


def _text_blocks(content: Any) -> list[dict[str, Any]]:
    """A message's text (a string, or text and refusal parts) as text blocks; empty text is
    left out (Anthropic refuses an empty text block)."""
    if isinstance(content, str):
        return [_text_block(content)] if content else []
    blocks = []
    for part in content or ():
        text = part.get("text") if part.get("type") == "text" else part.get("refusal")
        if isinstance(text, str) and text:
            blocks.append(_text_block(text, part))
    return blocks


def _data_url(url: str, where: str) -> tuple[str, str]:
    """(media type, base64 data) of a `data:<type>;base64,<data>` URL."""
    head, comma, data = url.partition(",")
    media_type, _, encoding = head.removeprefix("data:").partition(";")
    if not comma or encoding != "base64" or not media_type:
        raise _refused(f"{where}: Anthropic takes a data: URL only base64-encoded "
                       "(data:<media type>;base64,<data>).")  # fmt: skip
    return media_type, data


def _image(part: dict[str, Any], where: str) -> dict[str, Any]:
    url = str(part["image_url"]["url"])
    if url.startswith("data:"):
        media_type, data = _data_url(url, where)
        return {"type": "image", "source": {"type": "base64", "media_type": media_type,
                                            "data": data}}  # fmt: skip
    if url.startswith(("https://", "http://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise _refused(f"{where}: an image is a data: URL or an http(s) URL for Anthropic.")


def _document(part: dict[str, Any], where: str) -> dict[str, Any]:
    data_url = part["file"].get("file_data")
    if not isinstance(data_url, str) or not data_url.startswith("data:"):
        raise _refused(f"{where}: Anthropic takes a file as its data (file_data), not an id.")
    media_type, data = _data_url(data_url, where)
    return {"type": "document", "source": {"type": "base64", "media_type": media_type,
                                           "data": data}}  # fmt: skip


def _user_blocks(content: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return _text_blocks(content)
    blocks: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        kind = part.get("type")
        if kind == "text":
            blocks += _text_blocks([part])
        elif kind == "image_url":
            blocks.append(_image(part, f"{where}.content[{j}]"))
        elif kind == "file":
            blocks.append(_document(part, f"{where}.content[{j}]"))
        else:
            raise _refused(f"{where}.content[{j}]: Anthropic takes no {kind} parts.")
    return blocks


def _tool_use(call: dict[str, Any], where: str) -> dict[str, Any]:
    function = call["function"]
    try:
        arguments = json.loads(function.get("arguments") or "{}")
    except ValueError:
        arguments = None
    if not isinstance(arguments, dict):
        raise _refused(f"{where}.function.arguments: not a JSON object, which Anthropic "
                       "needs as the tool's input.")  # fmt: skip
    return {"type": "tool_use", "id": call["id"], "name": function["name"], "input": arguments}


def _turns(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(system blocks, turns): the conversation as Anthropic takes it."""
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        role, where = message.get("role"), f"messages[{i}]"
        if role in ("system", "developer"):
            system += _text_blocks(message.get("content"))
            continue
        if role == "user":
            blocks = _user_blocks(message.get("content"), where)
        elif role == "assistant":
            if message.get("function_call"):
                raise _refused(f"{where}.function_call: deprecated by OpenAI; use tool_calls.")
            blocks = _text_blocks(message.get("content"))
            blocks += [_tool_use(call, f"{where}.tool_calls[{j}]")
                       for j, call in enumerate(message.get("tool_calls") or ())]  # fmt: skip
        elif role == "tool":
            content = message.get("content")
            result = content if isinstance(content, str) else _text_blocks(content)
            role = "user"  # a tool's answer is the user's turn for Anthropic
            call_id = message["tool_call_id"]
            blocks = [{"type": "tool_result", "tool_use_id": call_id, "content": result}]
        else:
            raise _refused(f"{where}.role: Anthropic takes no {role} messages; use tools.")
        if not blocks:
            continue
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"] += blocks  # Anthropic's turns alternate
        else:
            turns.append({"role": role, "content": blocks})
    return system, turns


def _tools(request: dict[str, Any]) -> dict[str, Any]:
    tools = request.get("tools")
    if not tools:
        return {}
    out: dict[str, Any] = {
        "tools": [
            {
                "name": tool["function"]["name"],
                **({"description": d} if (d := tool["function"].get("description")) else {}),
                "input_schema": tool["function"].get("parameters")
                or {"type": "object", "properties": {}},
            }
            for tool in tools
        ]
    }
    choice = request.get("tool_choice")
    if isinstance(choice, dict):
        anthropic_choice: dict[str, Any] = {"type": "tool", "name": choice["function"]["name"]}
    elif choice is not None:
        anthropic_choice = {"type": TOOL_CHOICES[choice]}
    else:
        anthropic_choice = {"type": "auto"}
    if request.get("parallel_tool_calls") is False and anthropic_choice["type"] != "none":
        anthropic_choice["disable_parallel_tool_use"] = True
    if choice is not None or "disable_parallel_tool_use" in anthropic_choice:
        out["tool_choice"] = anthropic_choice
    return out


def messages_request(model: str, request: dict[str, Any], *, stream: bool) -> dict[str, Any]:
    """The Messages API body for an OpenAI chat request (validated by chat_schema)."""
    if (request.get("n") or 1) > 1:
        raise _refused("n: Anthropic answers one choice per request; ask n times.")
    system, turns = _turns(request["messages"])
    body: dict[str, Any] = {
        "model": model,
        "messages": turns,
        "max_tokens": request.get("max_completion_tokens")
        or request.get("max_tokens")
        or DEFAULT_MAX_TOKENS,
    }
    if system:
        body["system"] = system
    for name in ("temperature", "top_p", *ANTHROPIC_FIELDS):
        if request.get(name) is not None:
            body[name] = request[name]
    stop = request.get("stop")
    if stop:
        body["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    if isinstance(request.get("user"), str):
        body["metadata"] = {"user_id": request["user"]}
    body.update(_tools(request))
    if stream:
        body["stream"] = True
    return body


# ---------------------------------------------------------------- Anthropic -> OpenAI


def usage_of(raw: Any) -> dict[str, Any] | None:
    """OpenAI's usage object for Anthropic's `usage`: the cache's tokens are prompt tokens,
    its reads also `prompt_tokens_details.cached_tokens`; both cache fields are kept as
    Anthropic (and LiteLLM) name them, for base.read_usage and for clients that know them."""
    if not isinstance(raw, dict) or raw.get("input_tokens") is None:
        return None
    cached = int(raw.get("cache_read_input_tokens") or 0)
    written = int(raw.get("cache_creation_input_tokens") or 0)
    prompt = int(raw["input_tokens"]) + written + cached
    completion = int(raw.get("output_tokens") or 0)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
        "cache_creation_input_tokens": written,
        "cache_read_input_tokens": cached,
    }


def _arguments(value: Any) -> str:
    return json.dumps(value if value is not None else {}, separators=(",", ":"))


def chat_completion(answer: Any) -> dict[str, Any]:
    """OpenAI's chat.completion for an Anthropic message."""
    try:
        text, calls = [], []
        for block in answer["content"]:
            if block["type"] == "text":
                text.append(str(block["text"]))
            elif block["type"] == "tool_use":
                calls.append(
                    {
                        "id": str(block["id"]),
                        "type": "function",
                        "function": {
                            "name": str(block["name"]),
                            "arguments": _arguments(block.get("input")),
                        },
                    }
                )
        message: dict[str, Any] = {
            "role": "assistant",
            "content": "".join(text) if text or not calls else None,
            "refusal": None,
        }
        if calls:
            message["tool_calls"] = calls
        body: dict[str, Any] = {
            "id": str(answer["id"]),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": str(answer.get("model", "")),
            "choices": [{
                "index": 0, "message": message, "logprobs": None,
                "finish_reason": FINISH_REASONS.get(answer.get("stop_reason") or "", "stop"),
            }],
        }  # fmt: skip
    except (KeyError, TypeError) as exc:
        raise _malformed("answer") from exc
    usage = usage_of(answer.get("usage"))
    if usage is not None:
        body["usage"] = usage
    return body


class StreamTranslator:
    """Anthropic's stream events in, OpenAI's chunks out (none, or one, per event)."""

    def __init__(self) -> None:
        self.head: dict[str, Any] = {"object": "chat.completion.chunk", "created": int(time.time())}
        self.usage: dict[str, Any] = {}
        self.tool_index: dict[int, int] = {}  # content block index -> tool_calls index
        self.stopped = False

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return {**self.head, "choices": [choice]}

    def _tool(self, index: int, call: dict[str, Any]) -> dict[str, Any]:
        return self._chunk({"tool_calls": [{"index": self.tool_index[index], **call}]})

    def translate(self, event: dict[str, Any]) -> dict[str, Any] | None:
        kind = event.get("type")
        if kind == "message_start":
            message = event["message"]
            self.head.update(id=str(message["id"]), model=str(message.get("model", "")))
            self.usage.update(message.get("usage") or {})
            return self._chunk({"role": "assistant", "content": ""})
        if kind == "content_block_start":
            block, index = event["content_block"], int(event["index"])
            if block["type"] == "text" and block.get("text"):
                return self._chunk({"content": str(block["text"])})
            if block["type"] == "tool_use":
                self.tool_index[index] = len(self.tool_index)
                return self._tool(index, {"id": str(block["id"]), "type": "function",
                                          "function": {"name": str(block["name"]),
                                                       "arguments": ""}})  # fmt: skip
            return None
        if kind == "content_block_delta":
            delta, index = event["delta"], int(event["index"])
            if delta["type"] == "text_delta":
                return self._chunk({"content": str(delta["text"])})
            if delta["type"] == "input_json_delta" and delta.get("partial_json"):
                if index not in self.tool_index:
                    raise _malformed("stream (a tool input for no tool_use block)")
                return self._tool(index, {"function": {"arguments": str(delta["partial_json"])}})
            return None  # thinking and signature deltas: no OpenAI counterpart
        if kind == "message_delta":
            # Its usage is cumulative: it replaces message_start's counts.
            self.usage.update({k: v for k, v in (event.get("usage") or {}).items()
                               if v is not None})  # fmt: skip
            reason = (event.get("delta") or {}).get("stop_reason") or ""
            return self._chunk({}, FINISH_REASONS.get(reason, "stop"))
        if kind == "message_stop":
            self.stopped = True
            usage = usage_of(self.usage)
            return {**self.head, "choices": [], "usage": usage} if usage else None
        if kind == "error":
            raise stream_error(event.get("error"))
        return None  # ping, content_block_stop, and event types added later


def stream_error(error: Any) -> ProviderError:
    """The ProviderError for an `error` event, as if its type's status had answered."""
    error = error if isinstance(error, dict) else {}
    status = ERROR_STATUS.get(str(error.get("type")), 500)
    return error_for_status(status, str(error.get("message") or "The provider's stream failed."))


# ---------------------------------------------------------------- the provider


def map_error(exc: Exception) -> ProviderError:
    """httpx2's exceptions, and ours, classified for retries and for the caller."""
    refused = egress_error(exc)
    if refused is not None:
        return refused
    if isinstance(exc, ProviderError):
        return exc
    if isinstance(exc, httpx2.TimeoutException):
        return timed_out()
    if isinstance(exc, httpx2.TransportError):
        return unreachable()
    return unreadable(exc)


def _failed(response: httpx2.Response) -> ProviderError:
    """An error answer (read) as a ProviderError; Anthropic's 529 (overloaded) is retryable
    as every 5xx is."""
    return error_for_status(response.status_code, answer_message(response),
                            parse_retry_after(response.headers.get("retry-after")))  # fmt: skip


def _json(response: httpx2.Response) -> Any:
    try:
        return response.json()
    except ValueError as exc:
        raise _malformed("answer") from exc


class _Events:
    """An open streamed answer: its chunks (OpenAI's), then closed."""

    def __init__(self, response: httpx2.Response) -> None:
        self._response = response

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[dict[str, Any]]:
        try:
            async for chunk in self._translated():
                yield chunk
        finally:
            await self._response.aclose()  # also when the first event failed: no open stream

    async def _translated(self) -> AsyncIterator[dict[str, Any]]:
        translator = StreamTranslator()
        data: list[str] = []
        async for line in self._response.aiter_lines():
            if line.startswith("data:"):
                data.append(line[5:].removeprefix(" "))
                continue
            if line or not data:
                continue  # `event:` (the data says its type too), comments, or nothing yet
            try:
                event = json.loads("\n".join(data))
            except ValueError as exc:
                raise _malformed("stream") from exc
            data.clear()
            if not isinstance(event, dict):
                raise _malformed("stream")
            try:
                chunk = translator.translate(event)
            except (KeyError, TypeError, ValueError) as exc:
                raise _malformed("stream") from exc
            if chunk is not None:
                yield chunk
            if translator.stopped:
                return
        raise ProviderError("The provider's stream ended before message_stop.", kind="cut",
                            retryable=True)  # fmt: skip

    async def aclose(self) -> None:
        await self._response.aclose()


class AnthropicProvider:
    name = "anthropic"

    def __init__(
        self,
        *,
        connect_timeout: float,
        read_timeout: float,
        egress: EgressPolicy,
        answer_limits: AnswerLimits,
    ) -> None:
        self._http = guarded_client(
            egress, connect_timeout=connect_timeout,
            timeout=httpx2.Timeout(read_timeout, connect=connect_timeout),
        )  # fmt: skip
        answer_limits.install(self._http)

    def _request(
        self, credential: Credential, method: str, path: str, **kwargs: Any
    ) -> httpx2.Request:
        base = (credential.base_url or DEFAULT_BASE_URL).rstrip("/").removesuffix("/v1")
        headers = {"x-api-key": credential.api_key or "", "anthropic-version": API_VERSION}
        return self._http.build_request(method, f"{base}/v1{path}", headers=headers, **kwargs)

    async def _send(self, request: httpx2.Request, *, stream: bool = False) -> httpx2.Response:
        """The answer to `request`; an error answer is raised as a ProviderError."""
        try:
            response = await self._http.send(request, stream=stream)
            if response.status_code >= 400:
                try:
                    await response.aread()
                finally:
                    await response.aclose()
        except ProviderError:
            raise
        except Exception as exc:
            raise map_error(exc) from exc
        if response.status_code >= 400:
            raise _failed(response)
        return response

    async def chat(self, credential: Credential, model: str, request: dict[str, Any]) -> ChatResult:
        body = messages_request(model, request, stream=False)
        response = await self._send(self._request(credential, "POST", "/messages", json=body))
        answer = chat_completion(_json(response))
        return ChatResult(body=answer, usage=read_usage(answer.get("usage")))

    async def chat_stream(
        self, credential: Credential, model: str, request: dict[str, Any]
    ) -> ChunkStream:
        body = messages_request(model, request, stream=True)
        opening = self._request(credential, "POST", "/messages", json=body)

        async def open_events() -> _Events:
            return _Events(await self._send(opening, stream=True))

        return await ChunkStream.open(
            open_events(),
            to_dict=lambda chunk: chunk,
            map_error=map_error,
            read_usage=read_usage,
            forward_usage=wants_usage(request),
        )

    async def list_models(self, credential: Credential) -> list[str]:
        request = self._request(credential, "GET", "/models", params={"limit": MAX_LISTED_MODELS})
        answer = _json(await self._send(request))
        try:
            return [str(item["id"]) for item in answer["data"][:MAX_LISTED_MODELS]]
        except (KeyError, TypeError) as exc:
            raise _malformed("model list") from exc

    def honours_dimensions(self, model: str, dimensions: int) -> bool:
        return False  # no embeddings at all (embed says so)

    async def embed(
        self, credential: Credential, model: str, inputs: list[str], dimensions: int | None = None
    ) -> EmbeddingResult:
        raise _refused("Anthropic has no embeddings API: ask an embedding model of another "
                       "provider (openai/..., huggingface/..., local/...).")  # fmt: skip

    async def aclose(self) -> None:
        await self._http.aclose()
