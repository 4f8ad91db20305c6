"""The response cache of chat completions: when a request may use it, its key, and the
answer replayed (plain or as server-sent events).

Opt-in: off unless the request (`"cache": {"mode": ..., "ttl": ...}`, never forwarded to
a provider), the caller's key or team policy, or the alias asks for it, in that order of
precedence. `Cache-Control: no-cache` skips the lookup, `no-store` the write.

Scope: an answer is only ever served to the owner scope that paid for it, the team of a
team key, otherwise the user (`team:<id>` / `user:<id>`); a caller with neither is never
cached.

Exact cache: the key is the SHA-256 of the normalised request (the model or alias as
asked, with the alias's targets and strategy, so that changing them invalidates its
entries; messages, tools, tool choice, every sampling parameter, `response_format`; not
`stream`, `stream_options` or `user`), stored in Redis (inference.repository). Requests
with `n` > 1, and with a `temperature` > 0 unless the policy allows it, are never cached.

Every answer says what happened in `X-Cache`: `hit-exact`, `hit-semantic`, `miss` (looked
up, not found; stored when it succeeds), `bypass` (not looked up: off, not cacheable, or
`no-cache`). A cache failure (Redis down, a slow lookup) is a miss, never an error.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from common import sse
from common.db import transaction
from common.identity import Identity
from inference import repository
from inference.metrics import CACHE_EVICTIONS, CACHE_FAILURES
from inference.repository import ResponseCache

log = structlog.get_logger(__name__)

Mode = Literal["exact", "semantic"]
HIT_EXACT, HIT_SEMANTIC, MISS, BYPASS = "hit-exact", "hit-semantic", "miss", "bypass"
HEADER = "X-Cache"
# The request's fields that do not change the answer (and the extension itself).
NOT_KEYED = frozenset({"stream", "stream_options", "user", "cache", "metadata", "store"})
MAX_TTL_SECONDS = 30 * 86_400


@dataclass(frozen=True, slots=True)
class CacheRules:
    """What turns the cache on for a request, from one source (the request's extension
    field, a policy, an alias); None fields: not said by this source."""

    mode: Literal["exact", "semantic", "off"] | None = None
    ttl_seconds: int | None = None
    temperature: bool | None = None
    tools: bool | None = None
    multi_turn: bool | None = None
    threshold: float | None = None

    @classmethod
    def of(cls, value: Any) -> CacheRules | None:
        """From an object with these attributes (a policy's CachePolicy) or a mapping (an
        alias's stored default, the request's field: `ttl` there)."""
        if value is None:
            return None
        if isinstance(value, Mapping):
            get = value.get
            ttl = get("ttl_seconds", get("ttl"))
        else:

            def get(name: str, default: Any = None) -> Any:
                return getattr(value, name, default)

            ttl = get("ttl_seconds")
        return cls(
            mode=get("mode"), ttl_seconds=ttl, temperature=get("temperature"),
            tools=get("tools"), multi_turn=get("multi_turn"), threshold=get("threshold"),
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Decision:
    """The cache's part in one request: its mode, scope and key, whether to look up and to
    store, and for how long."""

    mode: Mode
    scope: str
    key: str
    ttl_seconds: int
    lookup: bool
    store: bool
    threshold: float | None = None
    # Semantic mode, for a request it covers: the last user message, and the hash of
    # everything else that must be the same (model, system prompt, earlier turns, params).
    prompt: str | None = None
    context: str | None = None


def scope_of(identity: Identity) -> str | None:
    """The owner scope whose answers this caller may be served: its key's team, else its
    user; None for a caller with neither (never cached)."""
    if identity.team:
        return f"team:{identity.team}"
    if identity.user_id:
        return f"user:{identity.user_id}"
    return None


def parse_cache_control(value: str | None) -> tuple[bool, bool]:
    """(look up, store) from a Cache-Control request header."""
    if not value:
        return True, True
    directives = {part.strip().split("=", 1)[0].lower() for part in value.split(",")}
    return "no-cache" not in directives, "no-store" not in directives


def merge(*sources: CacheRules | None) -> CacheRules:
    """The first source that says a field wins it (request, key, team, alias)."""
    said: dict[str, Any] = {}
    for source in sources:
        if source is None:
            continue
        for name in CacheRules.__slots__:
            value = getattr(source, name)
            if value is not None and name not in said:
                said[name] = value
    return CacheRules(**said)


def cacheable(request: Mapping[str, Any], rules: CacheRules) -> bool:
    """Whether an answer to this request may be cached at all: one choice, and a
    deterministic request unless the rules allow sampling."""
    n = request.get("n")
    if n is not None and n != 1:
        return False
    temperature = request.get("temperature")
    return not (temperature is not None and temperature > 0 and not rules.temperature)


def request_key(request: Mapping[str, Any], route: str) -> str:
    """SHA-256 of the normalised request; `route` names what the model resolved to (an
    alias's targets and strategy), so that entries of an alias that changed are never
    served again."""
    keyed = {name: value for name, value in request.items() if name not in NOT_KEYED}
    text = json.dumps([route, keyed], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def decide(
    request: Mapping[str, Any],
    *,
    identity: Identity,
    route: str,
    rules: CacheRules,
    cache_control: tuple[bool, bool],
    default_ttl: int,
) -> Decision | None:
    """The cache's part in this request; None: bypass (off, not cacheable, no scope)."""
    if rules.mode not in ("exact", "semantic"):
        return None
    scope = scope_of(identity)
    if scope is None or not cacheable(request, rules):
        return None
    lookup, store = cache_control
    ttl = min(rules.ttl_seconds or default_ttl, MAX_TTL_SECONDS)
    prompt, context = (semantic_parts(request, route, rules) if rules.mode == "semantic"
                       else (None, None))  # fmt: skip
    return Decision(
        mode=rules.mode, scope=scope, key=request_key(request, route), ttl_seconds=ttl,
        lookup=lookup, store=store, threshold=rules.threshold, prompt=prompt, context=context,
    )  # fmt: skip


# The most of a prompt the semantic cache embeds and compares.
MAX_SEMANTIC_PROMPT_CHARS = 4000


def semantic_parts(
    request: Mapping[str, Any], route: str, rules: CacheRules
) -> tuple[str | None, str | None]:
    """(the prompt to embed, the hash of its context) for a request the semantic cache
    covers: its last message is the user's, in text; no tools and no earlier assistant
    turn unless the rules allow them. (None, None) otherwise: the exact cache only."""
    messages = request.get("messages") or []
    last = messages[-1] if messages else None
    if not isinstance(last, Mapping) or last.get("role") != "user":
        return None, None
    if request.get("tools") and not rules.tools:
        return None, None
    earlier = messages[:-1]
    if not rules.multi_turn and any(
        isinstance(m, Mapping) and m.get("role") in ("assistant", "tool") for m in earlier
    ):
        return None, None
    prompt = _text_of(last.get("content"))
    if not prompt or len(prompt) > MAX_SEMANTIC_PROMPT_CHARS:
        return None, None
    rest = {name: value for name, value in request.items()
            if name not in NOT_KEYED and name != "messages"}  # fmt: skip
    material = [route, rest, earlier, {k: v for k, v in last.items() if k != "content"}]
    text = json.dumps(material, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return prompt, hashlib.sha256(text.encode()).hexdigest()


def _text_of(content: Any) -> str | None:
    """A message's text: a string, or text parts only (anything else: not covered)."""
    if isinstance(content, str):
        return content.strip()
    if isinstance(content, list) and all(
        isinstance(p, Mapping) and p.get("type") == "text" and isinstance(p.get("text"), str)
        for p in content
    ):
        return " ".join(p["text"] for p in content).strip()
    return None


# ---------------------------------------------------------------- what is stored


def entry_of(body: Mapping[str, Any], *, provider: str, model: str) -> bytes:
    """What is stored of a complete answer: its choices and usage, and the model that
    answered (for the hit's call event: what it saved)."""
    stored = {
        "choices": body.get("choices"),
        "usage": body.get("usage"),
        "system_fingerprint": body.get("system_fingerprint"),
        "provider": provider,
        "model": model,
    }
    return json.dumps(stored, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True, slots=True)
class Entry:
    choices: list[dict[str, Any]]
    usage: dict[str, Any] | None
    system_fingerprint: str | None
    provider: str
    model: str

    @classmethod
    def parse(cls, raw: bytes) -> Entry | None:
        """A stored entry; None for anything unreadable (a miss)."""
        try:
            data = json.loads(raw)
            choices = data["choices"]
            if not isinstance(choices, list) or not choices:
                return None
            return cls(choices=choices, usage=data.get("usage"),
                       system_fingerprint=data.get("system_fingerprint"),
                       provider=str(data["provider"]), model=str(data["model"]))  # fmt: skip
        except (ValueError, KeyError, TypeError):
            return None

    def completion(self, requested: str) -> dict[str, Any]:
        """The answer as a chat.completion under the requested model's name."""
        body: dict[str, Any] = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": requested,
            "choices": self.choices,
        }
        if self.usage is not None:
            body["usage"] = self.usage
        if self.system_fingerprint is not None:
            body["system_fingerprint"] = self.system_fingerprint
        return body

    async def events(self, requested: str, *, include_usage: bool) -> AsyncIterator[bytes]:
        """The answer as OpenAI's chat.completion.chunk events, then [DONE]: per choice its
        role and whole content in one chunk, its tool calls in the next, its finish."""
        head = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": requested,
        }
        if self.system_fingerprint is not None:
            head["system_fingerprint"] = self.system_fingerprint
        for choice in self.choices:
            index = choice.get("index", 0)
            message = choice.get("message") or {}
            delta: dict[str, Any] = {"role": "assistant", "content": message.get("content")}
            if message.get("refusal") is not None:
                delta["refusal"] = message["refusal"]
            yield sse.event({**head, "choices": [_chunk_choice(index, delta)]})
            calls = message.get("tool_calls")
            if calls:
                tool_calls = [{"index": i, **call} for i, call in enumerate(calls)]
                yield sse.event({**head, "choices": [
                    _chunk_choice(index, {"tool_calls": tool_calls})
                ]})  # fmt: skip
            finish = _chunk_choice(index, {}, choice.get("finish_reason") or "stop")
            yield sse.event({**head, "choices": [finish]})
        if include_usage and self.usage is not None:
            yield sse.event({**head, "choices": [], "usage": self.usage})
        yield sse.DONE


def _chunk_choice(index: int, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}


class StreamedAnswer:
    """A streamed answer put back together from its chunks, to be stored once it ended
    well: each choice's content, refusal, tool calls (merged by index) and finish."""

    def __init__(self, max_bytes: int) -> None:
        self._choices: dict[int, dict[str, Any]] = {}
        self._bytes = 0
        self._max = max_bytes
        self.too_big = False
        self.usage: dict[str, Any] | None = None
        self.system_fingerprint: str | None = None

    def add(self, chunk: Mapping[str, Any]) -> None:
        if self.too_big:
            return
        if chunk.get("usage"):
            self.usage = dict(chunk["usage"])
        if chunk.get("system_fingerprint"):
            self.system_fingerprint = str(chunk["system_fingerprint"])
        for choice in chunk.get("choices") or ():
            index = int(choice.get("index") or 0)
            built = self._choices.setdefault(index, {"content": [], "calls": {}, "finish": None})
            delta = choice.get("delta") or {}
            content = delta.get("content")
            if isinstance(content, str):
                built["content"].append(content)
                self._bytes += len(content)
            if delta.get("refusal"):
                built["refusal"] = str(delta["refusal"])
            for call in delta.get("tool_calls") or ():
                self._merge_call(built["calls"], call)
            if choice.get("finish_reason"):
                built["finish"] = choice["finish_reason"]
        if self._bytes > self._max:
            self.too_big = True

    def _merge_call(self, calls: dict[int, dict[str, Any]], part: Mapping[str, Any]) -> None:
        into = calls.setdefault(
            int(part.get("index") or 0),
            {"id": None, "type": "function", "name": "", "arguments": ""},
        )
        if part.get("id"):
            into["id"] = part["id"]
        function = part.get("function") or {}
        into["name"] += function.get("name") or ""
        arguments = function.get("arguments") or ""
        into["arguments"] += arguments
        self._bytes += len(arguments)

    def completion(self) -> dict[str, Any] | None:
        """The chat.completion body it amounts to; None when it is not complete."""
        if self.too_big or not self._choices:
            return None
        choices = []
        for index, built in sorted(self._choices.items()):
            if built["finish"] is None:
                return None
            message: dict[str, Any] = {"role": "assistant",
                                       "content": "".join(built["content"]) or None}  # fmt: skip
            if "refusal" in built:
                message["refusal"] = built["refusal"]
            if built["calls"]:
                message["tool_calls"] = [
                    {"id": c["id"], "type": "function",
                     "function": {"name": c["name"], "arguments": c["arguments"]}}
                    for _, c in sorted(built["calls"].items())
                ]  # fmt: skip
            choices.append({"index": index, "message": message, "logprobs": None,
                            "finish_reason": built["finish"]})  # fmt: skip
        return {"choices": choices, "usage": self.usage,
                "system_fingerprint": self.system_fingerprint}  # fmt: skip


# ---------------------------------------------------------------- the store


class CacheStore:
    """Lookups (bounded in time: a slow or failed one is a miss), writes off the request
    path (at most MAX_PENDING at once; past that an answer is not stored), and clearing.
    The semantic side needs `sessions` (the database's, set once it is open) and `embed`."""

    MAX_PENDING = 256
    CANDIDATES = 5

    def __init__(
        self,
        redis_side: ResponseCache,
        *,
        max_entry_bytes: int,
        max_scope_bytes: int,
        lookup_timeout: float,
        clock: Callable[[], float] = time.time,
        embed: Callable[[str], Awaitable[list[float]]] | None = None,
        guard: Callable[[str, str], bool] | None = None,
        semantic_threshold: float = 0.94,
        semantic_timeout: float = 2.0,
        semantic_max_entries: int = 1_000,
        own_redis: Redis | None = None,
    ) -> None:
        self._redis = redis_side
        self._own_redis = own_redis
        self.max_entry_bytes = max_entry_bytes
        self._max_scope_bytes = max_scope_bytes
        self._timeout = lookup_timeout
        self._clock = clock
        self._pending: set[asyncio.Task[None]] = set()
        self._embed = embed
        self._guard = guard
        self.semantic_threshold = semantic_threshold
        self._semantic_timeout = semantic_timeout
        self._semantic_max = semantic_max_entries
        self.sessions: async_sessionmaker[AsyncSession] | None = None

    async def lookup(self, decision: Decision) -> Entry | None:
        """The exact cache's entry for the request, if any."""
        try:
            async with asyncio.timeout(self._timeout):
                raw = await self._redis.get(decision.scope, decision.key)
        except (RedisError, OSError, TimeoutError) as exc:
            CACHE_FAILURES.labels("lookup").inc()
            log.warning("response cache lookup failed: a miss", error=repr(exc))
            return None
        return Entry.parse(raw) if raw is not None else None

    async def find(self, decision: Decision) -> tuple[Entry | None, str, list[float] | None]:
        """(the cached answer or None, its kind: hit-exact or hit-semantic, and the prompt's
        embedding when one was made, for the write of a miss)."""
        if decision.mode != "semantic" or decision.prompt is None:
            return await self.lookup(decision), HIT_EXACT, None
        # The exact lookup (Redis) while the prompt embeds; an exact hit cancels the rest.
        semantic = asyncio.ensure_future(self.lookup_semantic(decision))
        try:
            exact = await self.lookup(decision)
        except BaseException:
            semantic.cancel()
            raise
        if exact is not None:
            semantic.cancel()
            return exact, HIT_EXACT, None
        entry, vector = await semantic
        return entry, HIT_SEMANTIC, vector

    async def lookup_semantic(self, decision: Decision) -> tuple[Entry | None, list[float] | None]:
        """The nearest entry of the same scope and context above the threshold that the
        guard (inference.cache_guard) lets through; and the prompt's embedding."""
        if (decision.prompt is None or decision.context is None or self.sessions is None
                or self._embed is None or self._guard is None):  # fmt: skip
            return None, None
        vector: list[float] | None = None
        try:
            async with asyncio.timeout(self._semantic_timeout):
                vector = await self._embed(decision.prompt)
                async with transaction(self.sessions) as db:
                    found = await repository.semantic_nearest(
                        db, scope=decision.scope, context=decision.context, vector=vector,
                        k=self.CANDIDATES,
                    )  # fmt: skip
        except Exception as exc:  # a database or model failure, or too slow: a miss
            CACHE_FAILURES.labels("semantic_lookup").inc()
            log.warning("semantic cache lookup failed: a miss", error=repr(exc))
            return None, vector
        threshold = decision.threshold or self.semantic_threshold
        close = [(prompt, answer) for prompt, answer, similarity in found
                 if similarity >= threshold]  # fmt: skip
        if not close:
            return None, vector
        # The guard is CPU work (up to ~2 ms a pair on long prompts): off the event loop.
        answer = await asyncio.to_thread(self._first_compatible, decision.prompt, close)
        entry = Entry.parse(answer) if answer is not None else None
        return entry, vector

    def _first_compatible(self, prompt: str, close: list[tuple[str, bytes]]) -> bytes | None:
        assert self._guard is not None
        for cached, answer in close:
            if self._guard(prompt, cached):
                return answer
        return None

    def store(self, decision: Decision, body: Mapping[str, Any], *, provider: str,
              model: str, vector: list[float] | None = None) -> None:  # fmt: skip
        """Keep the answer, in the background: in the exact cache, and in the semantic one
        (with the prompt's embedding) when the request is one it covers."""
        if not decision.store or len(self._pending) >= self.MAX_PENDING:
            return
        value = entry_of(body, provider=provider, model=model)
        if len(value) > self.max_entry_bytes:
            return
        self._spawn(self._put(decision, value))
        if decision.prompt is not None and decision.mode == "semantic":
            self._spawn(self._put_semantic(decision, value, vector))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _put_semantic(
        self, decision: Decision, value: bytes, vector: list[float] | None
    ) -> None:
        if self.sessions is None or self._embed is None:
            return
        if decision.prompt is None or decision.context is None:
            return
        try:
            if vector is None:
                vector = await self._embed(decision.prompt)
            async with transaction(self.sessions) as db:
                await repository.semantic_insert(
                    db, scope=decision.scope, context=decision.context, prompt=decision.prompt,
                    vector=vector, answer=value, ttl=decision.ttl_seconds,
                    keep=self._semantic_max,
                )  # fmt: skip
        except Exception as exc:  # a database or model failure: not stored
            CACHE_FAILURES.labels("semantic_store").inc()
            log.warning("semantic cache write failed", error=repr(exc))

    async def _put(self, decision: Decision, value: bytes) -> None:
        try:
            evicted = await self._redis.put(
                decision.scope, decision.key, value, ttl=decision.ttl_seconds,
                now=self._clock(), cap=self._max_scope_bytes,
            )  # fmt: skip
        except (RedisError, OSError) as exc:
            CACHE_FAILURES.labels("store").inc()
            log.warning("response cache write failed", error=repr(exc))
            return
        if evicted:
            CACHE_EVICTIONS.inc(evicted)

    async def aclose(self) -> None:
        """The writes under way finished; the cache's own Redis client (if any) closed."""
        await self.drain()
        if self._own_redis is not None:
            await self._own_redis.aclose()

    async def drain(self) -> None:
        """Wait for the writes under way (shutdown; tests)."""
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)

    async def clear(self, scope: str | None) -> int:
        await self.drain()
        removed = await self._redis.clear(scope)
        if self.sessions is not None:
            async with transaction(self.sessions) as db:
                removed += await repository.semantic_clear(db, scope=scope)
        return removed

    async def delete_expired(self, most: int = 10_000) -> int:
        """The semantic entries past their TTL (every replica's loop does this now and
        then; lookups never serve them meanwhile)."""
        if self.sessions is None:
            return 0
        async with transaction(self.sessions) as db:
            return await repository.semantic_delete_expired(db, most=most)
