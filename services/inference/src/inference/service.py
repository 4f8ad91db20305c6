"""The rules of the inference service: credentials, aliases, model calls, the Hub."""

from __future__ import annotations

import asyncio
import base64
import json
import math
import struct
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal
from functools import partial
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TypeVar

import structlog
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    HFValidationError,
    RepositoryNotFoundError,
)
from opentelemetry import trace
from redis.exceptions import RedisError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from common import sse
from common.db import after_commit
from common.errors import Forbidden, MissingPermission, NotFound, ServiceUnavailable
from common.identity import Identity
from common.llm_events import LlmCallEvent
from inference import governance, repository
from inference.cache import (
    BYPASS,
    HIT_EXACT,
    MISS,
    CacheRules,
    Decision,
    Entry,
    StreamedAnswer,
    decide,
    merge,
    scope_of,
)
from inference.cache import HEADER as CACHE_HEADER
from inference.crypto import Keyring
from inference.errors import (
    AliasNotFound,
    AnswerRefused,
    CircuitOpen,
    CredentialNotFound,
    CredentialUnusable,
    DeadlineExceeded,
    DimensionsUnsupported,
    EgressRefused,
    HubError,
    InvalidRequest,
    ModelNotFound,
    NameTaken,
    NoCredential,
    Overloaded,
    PriceNotFound,
    ProviderAuthFailed,
    ProviderRedirected,
    ProviderRejected,
    SharedNeedsAdmin,
    TooManyAliases,
    TooManyHubCalls,
    TooManyPrices,
    UpstreamFailed,
)
from inference.events import (
    completion_text,
    count_tokens,
    estimate_prompt_tokens,
)
from inference.failover import AllTargetsFailed, Outcome, Target, Trail
from inference.governance import Hold
from inference.metrics import CACHE_ANSWERS
from inference.models import ModelAlias, ModelPrice, PriceChange, ProviderCredential
from inference.pricing import Price, PriceBook, cost_usd
from inference.providers.base import (
    ChatStream,
    Credential,
    Provider,
    ProviderError,
    Usage,
    read_usage,
    wants_usage,
)
from inference.providers.egress import DestinationRefused, RedirectRefused
from inference.routing import LEAST_LATENCY, ORDERED, WEIGHTED, Observe
from inference.runtime import Runtime
from inference.schemas import (
    SENDABLE_KEY,
    AliasCreate,
    CredentialCreate,
    PriceChangeList,
    PriceChangeRead,
    PriceList,
    PriceRead,
)

if TYPE_CHECKING:
    from huggingface_hub import HfApi

log = structlog.get_logger(__name__)
R = TypeVar("R")
PROVIDERS = ("openai", "huggingface", "azure", "anthropic", "local")
NEEDS_CREDENTIAL = frozenset({"openai", "huggingface", "azure", "anthropic"})
NO_CREDENTIAL = Credential(id=None, api_key=None, base_url=None)
# How long /v1/models waits for a provider's list, and how soon it asks one that failed.
MODEL_LIST_TIMEOUT_SECONDS = 5.0
MODEL_LIST_RETRY_SECONDS = 30.0
MANAGE_SHARED = "providers:manage_shared"
NO_HEADERS: Mapping[str, str] = MappingProxyType({})
ZERO = Decimal("0.000000000")


def _owner(identity: Identity) -> uuid.UUID | None:
    return uuid.UUID(identity.user_id) if identity.user_id else None


# ---------------------------------------------------------------- credentials


def _hint(api_key: str) -> str:
    return api_key[-4:] if len(api_key) >= 8 else "…"


async def create_credential(
    runtime: Runtime, db: AsyncSession, *, identity: Identity, body: CredentialCreate
) -> ProviderCredential:
    if body.shared and not identity.has(MANAGE_SHARED):
        raise SharedNeedsAdmin(f"Shared credentials need the {MANAGE_SHARED} permission.")
    if body.base_url is not None and body.base_url.host:
        # An address is judged now; a host name at each connection, by what it resolves to
        # then (it may resolve differently later, so that check is the guard).
        try:
            runtime.egress.check_literal(body.base_url.host, body.base_url.port or 80)
        except DestinationRefused as exc:
            raise EgressRefused(f"base_url: {exc.message}", field="base_url") from None
    row = ProviderCredential(
        owner_id=None if body.shared else _owner(identity),
        shared=body.shared,
        provider=body.provider,
        name=body.name,
        base_url=str(body.base_url).rstrip("/") if body.base_url else None,
        api_version=body.api_version,
        key_hint=_hint(body.api_key),
        key_ciphertext=b"",
        key_id=runtime.keyring.primary,
    )
    row.key_ciphertext = runtime.keyring.encrypt(body.api_key, row_id=str(row.id))
    try:
        await repository.add_credential(db, credential=row)
    except IntegrityError:
        raise NameTaken(f"A credential named {body.name!r} already exists.") from None
    runtime.credentials.clear()
    return row


async def list_credentials(db: AsyncSession, *, identity: Identity) -> list[ProviderCredential]:
    return list(await repository.visible_credentials(db, owner_id=_owner(identity)))


async def delete_credential(
    runtime: Runtime, db: AsyncSession, *, identity: Identity, credential_id: uuid.UUID
) -> None:
    row = await repository.get_credential(db, credential_id=credential_id)
    mine = row is not None and row.owner_id is not None and row.owner_id == _owner(identity)
    shared_ok = row is not None and row.shared and identity.has(MANAGE_SHARED)
    if row is None or not (mine or shared_ok):
        raise CredentialNotFound("No such credential.")
    await repository.delete_credential(db, credential_id=credential_id)
    runtime.credentials.clear()


def _decrypt(runtime: Runtime, row: ProviderCredential) -> Credential:
    api_key = runtime.keyring.decrypt(row.key_ciphertext, row_id=str(row.id))
    if not SENDABLE_KEY.fullmatch(api_key):
        # Keys are checked at creation (schemas.CredentialCreate); one stored before that
        # check would fail every call that sends it in its header.
        raise CredentialUnusable(
            f"The key of credential {row.name!r} ({row.provider}) holds characters an HTTP "
            "header cannot carry: delete the credential and add it again."
        )
    return Credential(
        id=str(row.id), api_key=api_key, base_url=row.base_url, api_version=row.api_version
    )


async def credential_for(
    runtime: Runtime, db: AsyncSession, *, identity: Identity, target: Target
) -> Credential:
    """The target's credential; else the caller's own for the provider; else a shared one.

    Resolved credentials (plain values, never ORM rows) are cached in memory for
    INFERENCE_CACHE_SECONDS: no database round trip and no decryption per request."""
    if target.provider not in NEEDS_CREDENTIAL:
        return Credential(id=None, api_key=None, base_url=None)
    key = target.credential_id or (_owner(identity), target.provider)
    cached: Credential | None = runtime.credentials.get(key)
    if cached is not None:
        return cached
    if target.credential_id:
        row = await repository.get_credential(db, credential_id=uuid.UUID(target.credential_id))
    else:
        row = await repository.credential_for(
            db, owner_id=_owner(identity), provider=target.provider
        )
    if row is None:
        raise NoCredential(
            f"No credential for provider {target.provider}: add one with "
            "POST /v1/providers/credentials."
        )
    credential = _decrypt(runtime, row)
    runtime.credentials.put(key, credential)
    return credential


async def rotate_keys(db: AsyncSession, keyring: Keyring) -> tuple[int, int]:
    """Re-encrypt every credential under the primary key. Returns (rotated, total)."""
    rows = list(await repository.all_credentials(db))
    rotated = 0
    for row in rows:
        if keyring.key_id_of(row.key_ciphertext) == keyring.primary:
            continue
        plaintext = keyring.decrypt(row.key_ciphertext, row_id=str(row.id))
        fresh = keyring.encrypt(plaintext, row_id=str(row.id))
        if await repository.replace_ciphertext(
            db, credential_id=row.id, ciphertext=fresh, key_id=keyring.primary,
            expected=row.key_ciphertext,
        ):  # fmt: skip
            rotated += 1
    return rotated, len(rows)


# ---------------------------------------------------------------- aliases and models


async def save_alias(
    runtime: Runtime, db: AsyncSession, *, identity: Identity, body: AliasCreate
) -> ModelAlias:
    """A shared alias (providers:manage_shared; over shared credentials only), or the
    caller's own (over their own credentials or shared ones)."""
    owner = _owner(identity)
    if body.shared and not identity.has(MANAGE_SHARED):
        raise MissingPermission(f"A shared alias needs the {MANAGE_SHARED} permission.")
    if not body.shared and owner is None:
        raise InvalidRequest("Only a user has aliases of their own: make it shared.")
    for target in body.targets:
        if target.weight is not None and body.strategy != WEIGHTED:
            raise InvalidRequest("A target's weight applies to the weighted strategy only.")
        if target.credential_id is None:
            continue
        row = await repository.get_credential(db, credential_id=target.credential_id)
        usable = row is not None and (row.shared or (not body.shared and row.owner_id == owner))
        if row is None or not usable:
            raise InvalidRequest(
                "Alias targets may only name shared credentials."
                if body.shared else "Alias targets may only name your credentials or shared "
                "ones.",
                credential_id=str(target.credential_id),
            )  # fmt: skip
        if row.provider != target.model.split("/", 1)[0]:
            raise InvalidRequest(
                f"Credential {row.name!r} is for {row.provider}, not {target.model}."
            )
    if not body.shared and owner is not None:
        most = runtime.settings.max_aliases_per_user
        if await repository.count_own_aliases(db, owner_id=owner, other_than=body.alias) >= most:
            raise TooManyAliases(
                f"You have {most} aliases of your own, the most allowed "
                "(INFERENCE_MAX_ALIASES_PER_USER); delete one first.",
                limit=most,
            )
    alias = await repository.save_alias(
        db,
        alias=ModelAlias(
            alias=body.alias,
            owner_id=None if body.shared else owner,
            strategy=body.strategy,
            targets=[t.model_dump(mode="json", exclude_none=True) for t in body.targets],
            cache=body.cache.model_dump(exclude_none=True) if body.cache else None,
            created_by=owner,
        ),
    )
    runtime.aliases.clear()
    return alias


async def delete_alias(
    runtime: Runtime, db: AsyncSession, *, identity: Identity, alias: str, shared: bool | None
) -> None:
    """The caller's own alias `alias`, else (or with `shared`) the shared one, which needs
    providers:manage_shared."""
    owner = _owner(identity)
    deleted = False
    if not shared and owner is not None:
        deleted = await repository.delete_alias(db, alias=alias, owner_id=owner)
    if not deleted and shared is not False and identity.has(MANAGE_SHARED):
        deleted = await repository.delete_alias(db, alias=alias, owner_id=None)
    if not deleted:
        raise AliasNotFound(f"No alias {alias!r} of yours" + (
            " or shared that you may delete." if shared is not False else "."
        ))  # fmt: skip
    runtime.aliases.clear()


def _target(model: str, credential_id: str | None) -> Target:
    provider, _, name = model.partition("/")
    return Target(provider=provider, model=name, credential_id=credential_id)


def _parse_model(name: str) -> Target | None:
    provider, sep, model = name.partition("/")
    if not sep or provider not in PROVIDERS or not model:
        return None
    return Target(provider=provider, model=model)


@dataclass(frozen=True, slots=True)
class Resolved:
    """What a requested model name resolves to: the alias (or None), its strategy, the
    targets in the order to try them, the alias's response-cache default, and `route`,
    what the name stands for in response-cache keys (an alias's strategy and targets)."""

    alias: str | None
    strategy: str
    targets: list[Target]
    cache: CacheRules | None = None
    route: str = ""


async def resolve_model(
    runtime: Runtime, db: AsyncSession, name: str, *, identity: Identity
) -> Resolved:
    """The caller's own alias of that name, else a shared one (its targets in its
    strategy's order: inference.routing; a least-latency alias's as listed, ordered once
    their credentials are known, by _call_with_failover), else `provider/model`."""
    key = (_owner(identity), name)
    cached: _AliasEntry | None = runtime.aliases.get(key)
    if cached is None:
        row = await repository.get_alias(db, alias=name, owner_id=key[0])
        cached = _AliasEntry(
            row.strategy,
            [(_target(t["model"], t.get("credential_id")), int(t.get("weight") or 1))
             for t in row.targets],
            CacheRules.of(row.cache),
            json.dumps([row.strategy, row.targets], sort_keys=True, separators=(",", ":")),
        ) if row else _NO_ALIAS  # fmt: skip
        runtime.aliases.put(key, cached)
    if cached.weighted:
        targets = runtime.routing.order((*key, *cached.weighted), cached.strategy,
                                        cached.weighted)  # fmt: skip
        return Resolved(name, cached.strategy, targets, cached.cache, cached.route)
    target = _parse_model(name)
    if target is None:
        raise ModelNotFound(
            f"Unknown model {name!r}: name it provider/model ({', '.join(PROVIDERS)}) "
            "or use an alias from GET /v1/models."
        )
    return Resolved(None, ORDERED, [target])


@dataclass(frozen=True, slots=True)
class _AliasEntry:
    strategy: str
    weighted: list[tuple[Target, int]]
    cache: CacheRules | None
    route: str


_NO_ALIAS = _AliasEntry("", [], None, "")


# ---------------------------------------------------------------- response cache


async def clear_cache(runtime: Runtime, *, identity: Identity, scope: str | None) -> int:
    """The caller's own scope's cached answers, or (providers:manage_shared) every scope's
    (`all`) or one named scope's."""
    own = scope_of(identity)
    if scope is not None and scope != own:
        if not identity.has(MANAGE_SHARED):
            raise MissingPermission(
                f"Clearing another scope's cache needs the {MANAGE_SHARED} permission."
            )
        target = None if scope == "all" else scope.lower()
    elif own is None:
        raise InvalidRequest("This caller has no cache scope (no user, no team).")
    else:
        target = own
    try:
        return await runtime.cache.clear(target)
    except (RedisError, OSError) as exc:
        raise ServiceUnavailable("The response cache is unavailable; try again.") from exc


# ---------------------------------------------------------------- prices


def _price_read(book: PriceBook, model: str, row: ModelPrice | None) -> PriceRead:
    price = book.get(model) if row is None else Price.model_validate(row.price)
    assert price is not None  # a model listed by the book, or an admin's row
    return PriceRead(
        model=model, source="admin" if row is not None else book.source(model) or "catalog",
        updated_at=row.updated_at if row else None, updated_by=row.updated_by if row else None,
        **price.model_dump(),
    )  # fmt: skip


async def list_prices(runtime: Runtime, db: AsyncSession, *, provider: str | None) -> PriceList:
    """Every model's price as the table holds it now (and this replica's book learns it)."""
    rows = {row.model: row for row in await repository.all_prices(db)}
    book = runtime.prices
    book.use_admin({model: Price.model_validate(row.price) for model, row in rows.items()})
    models = book.models()
    if provider is not None:
        models = [model for model in models if model.startswith(f"{provider}/")]
    return PriceList(
        catalog_checked=book.catalog.checked, catalog_source=book.catalog.source,
        data=[_price_read(book, model, rows.get(model)) for model in models],
    )  # fmt: skip


async def refresh_prices(runtime: Runtime, db: AsyncSession) -> None:
    """The admins' prices as the table holds them (every INFERENCE_CACHE_SECONDS)."""
    rows = await repository.all_prices(db)
    runtime.prices.use_admin({row.model: Price.model_validate(row.price) for row in rows})


async def set_price(
    runtime: Runtime, db: AsyncSession, *, identity: Identity, model: str, price: Price
) -> PriceRead:
    """An admin's price for `model`, over INFERENCE_PRICES' and the catalog's; audited."""
    await repository.lock_prices(db)
    before = await repository.get_price(db, model=model)
    if before is None and await repository.count_prices(db) >= runtime.settings.max_prices:
        most = runtime.settings.max_prices
        raise TooManyPrices(
            f"{most} models have an admin's price, the most allowed (INFERENCE_MAX_PRICES); "
            "delete one first.",
            limit=most,
        )
    old = dict(before.price) if before is not None else None
    wire = price.model_dump(exclude_none=True)
    row = await repository.save_price(db, model=model, price=wire, by=_owner(identity))
    await _audit_price(db, identity, model, "set", old, wire)
    _after_price_change(runtime, db, model, price)
    return _price_read(runtime.prices, model, row)


async def delete_price(
    runtime: Runtime, db: AsyncSession, *, identity: Identity, model: str
) -> None:
    """Remove an admin's price: the model's INFERENCE_PRICES or catalog price (if any)
    applies again."""
    await repository.lock_prices(db)
    before = await repository.get_price(db, model=model)
    if before is None:
        raise PriceNotFound(f"No admin's price for {model!r}.")
    await repository.delete_price(db, model=model)
    await _audit_price(db, identity, model, "delete", dict(before.price), None)
    _after_price_change(runtime, db, model, None)


async def price_changes(
    db: AsyncSession, *, model: str | None, before: int | None, limit: int
) -> PriceChangeList:
    rows = await repository.list_price_changes(db, model=model, before=before, limit=limit)
    return PriceChangeList(
        data=[PriceChangeRead.model_validate(row, from_attributes=True) for row in rows],
        next_before=rows[-1].id if len(rows) == limit else None,
    )


async def _audit_price(
    db: AsyncSession, identity: Identity, model: str, action: str,
    before: dict[str, Any] | None, after: dict[str, Any] | None,
) -> None:  # fmt: skip
    span = trace.get_current_span().get_span_context()
    await repository.add_price_change(db, change=PriceChange(
        actor_id=_owner(identity), model=model, action=action, before=before, after=after,
        trace_id=format(span.trace_id, "032x") if span.is_valid else None,
    ))  # fmt: skip


def _after_price_change(
    runtime: Runtime, db: AsyncSession, model: str, price: Price | None
) -> None:
    """Once committed, this replica uses the change at once (the others within
    INFERENCE_CACHE_SECONDS, when they read the table again)."""

    async def use() -> None:
        admin = {name: value for name, value in runtime.prices.admin.items() if name != model}
        if price is not None:
            admin[model] = price
        runtime.prices.use_admin(admin)

    after_commit(db, use)


# ---------------------------------------------------------------- calls


@dataclass
class Call:
    """One model call in flight: who, what, the clock, and for a governed call what its
    admission held (settled with the call event, or released when there is none)."""

    runtime: Runtime
    identity: Identity
    requested: str
    alias: str | None
    operation: str
    stream: bool
    strategy: str = ORDERED
    started: float = 0.0
    started_wall: float = 0.0
    hold: Hold | None = None
    # For the answer (the tightest token limit); the one empty mapping unless governed.
    headers: Mapping[str, str] = field(default_factory=lambda: NO_HEADERS)

    def __post_init__(self) -> None:
        self.started = time.monotonic()
        self.started_wall = self.runtime.clock()

    async def govern(
        self, targets: list[Target], *, prompt_tokens: Callable[[], int], completion: int | None
    ) -> None:
        """The caller's policies, for a caller that has any (inference.governance)."""
        self.hold = await governance.admit(
            self.runtime, self.identity, targets, requested=self.requested, stream=self.stream,
            prompt_tokens=prompt_tokens, completion=completion,
        )  # fmt: skip
        if self.hold is not None:
            self.headers = self.hold.headers

    def release(self) -> None:
        """Give back what admission held, for a call that ends without a call event."""
        if self.hold is not None:
            settlement = self.hold.settlement(ended=self.runtime.clock(), cost=None, tokens=0)
            self.hold = None
            self.runtime.sink.emit(None, settlement)

    def record(
        self,
        *,
        target: Target | None,
        status: str,
        error_type: str | None,
        usage: Usage | None,
        attempts: int,
        fallback: bool,
        ttft: float | None = None,
        cache: str | None = None,
        saved: Decimal | None = None,
    ) -> None:
        model = target.name if target else self.requested
        cost = ZERO if cache else cost_usd(self.runtime.prices.get(model), usage)
        reported = usage if usage is not None and not usage.estimated else None
        # Recorded outside any attempt's span: the current span is this request's server
        # span, under which are all the attempts (the event sums them up), and which exists
        # even when no attempt was made (every circuit open).
        span = trace.get_current_span().get_span_context()
        if usage is not None and self.operation == "chat":
            self.runtime.governance.completions.learn(model, usage.completion_tokens)
        settlement = None
        if self.hold is not None:
            tokens = usage.prompt_tokens + usage.completion_tokens if usage else 0
            settlement = self.hold.settlement(ended=self.runtime.clock(), cost=cost,
                                              tokens=tokens)  # fmt: skip
            self.hold = None
        self.runtime.sink.emit(
            LlmCallEvent(
                id=str(uuid.uuid4()),
                occurred_at=self.started_wall,
                user_id=self.identity.user_id,
                api_key_id=self.identity.kid,
                provider=target.provider if target else model.split("/", 1)[0],
                model=model,
                alias=self.alias,
                status=status,
                error_type=error_type,
                prompt_tokens=usage.prompt_tokens if usage else None,
                completion_tokens=usage.completion_tokens if usage else None,
                usage_estimated=bool(usage and usage.estimated),
                cost_usd=format(cost, "f") if cost is not None else None,
                latency_ms=round((time.monotonic() - self.started) * 1000, 3),
                ttft_ms=round(ttft * 1000, 3) if ttft is not None else None,
                stream=self.stream,
                attempts=attempts,
                fallback=fallback,
                operation=self.operation,
                trace_id=format(span.trace_id, "032x") if span.is_valid else None,
                span_id=format(span.span_id, "016x") if span.is_valid else None,
                trace_sampled=span.is_valid and span.trace_flags.sampled,
                team_id=self.identity.team,
                cached_prompt_tokens=reported.cached_tokens if reported else None,
                reasoning_tokens=reported.reasoning_tokens if reported else None,
                cache=cache,
                saved_usd=format(saved, "f") if saved is not None else None,
            ),
            settlement,
        )

    def hit(self, entry: Entry, kind: str) -> None:
        """Record an answer replayed from the response cache: nothing was sent to a
        provider (no tokens, cost 0); `saved` is what the answer cost to make, at today's
        price of the model that made it."""
        target = _target(entry.model, None)
        saved = cost_usd(self.runtime.prices.get(entry.model), read_usage(entry.usage))
        self.record(target=target, status="ok", error_type=None, usage=Usage(0, 0),
                    attempts=0, fallback=False, cache=kind, saved=saved)  # fmt: skip

    def failed(self, trail: Trail, exc: Exception) -> Exception:
        """Record the failure; return the problem to raise."""
        if isinstance(exc, ProviderError):
            kind = exc.kind
        elif trail.errors:
            kind = trail.errors[-1].kind
        else:
            kind = "circuit_open" if getattr(exc, "all_open", False) else "unavailable"
        self.record(target=trail.target, status="error", error_type=kind, usage=None,
                    attempts=trail.attempts, fallback=False)  # fmt: skip
        return _problem(exc, trail)


def _problem(exc: Exception, trail: Trail) -> Exception:
    where = trail.target.name if trail.target else "the provider"
    extra: dict[str, Any] = {
        "attempts": trail.attempts,
        "model": trail.target.name if trail.target else None,
    }
    if isinstance(exc, DestinationRefused):
        return EgressRefused(f"{where}: {exc.message} Fix the credential's base_url.", **extra)
    if isinstance(exc, RedirectRefused):
        return ProviderRedirected(f"{where}: {exc.message}", **extra)
    if isinstance(exc, ProviderError):
        if exc.status in (401, 403):
            return ProviderAuthFailed(f"{where} refused the credential: {exc.message}", **extra)
        if exc.kind == "too_large":
            return AnswerRefused(f"{where}'s answer was refused: {exc.message}", **extra)
        if exc.kind == "overloaded":
            retry_after = str(math.ceil(exc.retry_after or 1))
            return Overloaded(exc.message, headers={"Retry-After": retry_after}, **extra)
        return ProviderRejected(f"{where} rejected the request: {exc.message}", **extra)
    assert isinstance(exc, AllTargetsFailed)
    last = trail.errors[-1].message if trail.errors else "no target could be called"
    if exc.all_open:
        return CircuitOpen(
            "Every target of this model is failing; retry shortly.",
            headers={"Retry-After": "5"},
            **extra,
        )
    if exc.deadline:
        return DeadlineExceeded(f"No answer within the deadline; last error: {last}", **extra)
    return UpstreamFailed(f"{where} failed after {trail.attempts} attempt(s): {last}", **extra)


async def _call_with_failover(
    db: AsyncSession,
    call: Call,
    targets: list[Target],
    invoke: Callable[[Provider, Credential, Target], Awaitable[Any]],
) -> Outcome[Any]:
    runtime = call.runtime
    trail = Trail()
    try:
        # Credentials are looked up once, before any attempt; a target without one is
        # skipped when there are others, and reported when it is the only one. Each target
        # then names the credential it is called with, and so has a circuit of its own
        # (Target.circuit_key).
        usable: list[tuple[Target, Credential]] = []
        missing: NoCredential | None = None
        for target in targets:
            try:
                credential = await credential_for(
                    runtime, db, identity=call.identity, target=target
                )
            except NoCredential as exc:
                missing = exc
                continue
            usable.append((replace(target, credential_id=credential.id), credential))
        if not usable and missing is not None:
            raise missing
        by_target = dict(usable)
        ordered = [t for t, _ in usable]
        observe: Observe | None = None
        if call.strategy == LEAST_LATENCY:
            latency = runtime.routing.latency
            ordered = await latency.order(ordered, runtime.clock())
            observe = partial(latency.observe, clock=runtime.clock)
        return await runtime.failover.run(
            ordered,
            lambda t: invoke(runtime.providers[t.provider], by_target[t], t),
            trail=trail,
            operation=call.operation,
            observe=observe,
        )
    except (ProviderError, AllTargetsFailed) as exc:
        raise call.failed(trail, exc) from None
    except BaseException:
        call.release()  # no credential, or the caller hung up: nothing was used
        raise


def _prompt_of(request: dict[str, Any]) -> Callable[[], int]:
    return lambda: estimate_prompt_tokens(request["messages"])


def _cache_decision(
    runtime: Runtime,
    identity: Identity,
    request: dict[str, Any],
    resolved: Resolved,
    asked: CacheRules | None,
    cache_control: tuple[bool, bool],
) -> Decision | None:
    """The response cache's part in this call (inference.cache): the request's own `cache`
    field, then the key's and the team's policy, then the alias's default."""
    if asked is None and resolved.cache is None and identity.policies is None:
        return None  # nothing turns it on: no work
    policies = () if identity.policies is None else runtime.governance.read(identity)[0]
    said = [CacheRules.of(getattr(policy, "cache", None)) for policy in (
        policies.get("key"), policies.get("team")
    ) if policy is not None] if policies else []  # fmt: skip
    rules = merge(asked, *said, resolved.cache)
    return decide(request, identity=identity, route=resolved.route, rules=rules,
                  cache_control=cache_control,
                  default_ttl=runtime.settings.cache_ttl_seconds)  # fmt: skip


def _not_found(decision: Decision | None) -> str:
    """X-Cache of an answer the provider made: looked up and missed, or not looked up."""
    return MISS if decision is not None and decision.lookup else BYPASS


def _cache_headers(headers: Mapping[str, str], result: str) -> dict[str, str]:
    CACHE_ANSWERS.labels(result).inc()
    return {**headers, CACHE_HEADER: result}


async def _begin_chat(
    runtime: Runtime,
    db: AsyncSession,
    identity: Identity,
    request: dict[str, Any],
    cache: CacheRules | None,
    cache_control: tuple[bool, bool],
    *,
    stream: bool,
) -> tuple[Resolved, Call, Decision | None, Found]:
    """A chat call up to the provider: the model resolved, the caller's policies applied,
    the response cache asked (a hit is recorded here)."""
    resolved = await resolve_model(runtime, db, request["model"], identity=identity)
    call = Call(runtime, identity, request["model"], resolved.alias, "chat", stream=stream,
                strategy=resolved.strategy)  # fmt: skip
    if identity.policies is not None:
        await call.govern(resolved.targets, prompt_tokens=_prompt_of(request),
                          completion=governance.completion_limit(request))  # fmt: skip
    decision = _cache_decision(runtime, identity, request, resolved, cache, cache_control)
    found = Found()
    if decision is not None and decision.lookup:
        entry, kind, vector = await runtime.cache.find(decision)
        found = Found(entry, kind, vector)
        if entry is not None:
            call.hit(entry, "exact" if kind == HIT_EXACT else "semantic")
    return resolved, call, decision, found


@dataclass(frozen=True, slots=True)
class Found:
    """What the response cache found: an entry (a hit, of `kind`) or none, and the
    prompt's embedding when one was made (for the write of the answer)."""

    entry: Entry | None = None
    kind: str = MISS
    vector: list[float] | None = None


async def chat(
    runtime: Runtime,
    db: AsyncSession,
    *,
    identity: Identity,
    request: dict[str, Any],
    cache: CacheRules | None = None,
    cache_control: tuple[bool, bool] = (True, True),
) -> tuple[dict[str, Any], Mapping[str, str]]:
    """The answer, and headers for it (X-Cache among them). `cache`: the request's own
    `cache` field; `cache_control`: (look up, store) from its Cache-Control header."""
    resolved, call, decision, found = await _begin_chat(
        runtime, db, identity, request, cache, cache_control, stream=False
    )
    if found.entry is not None:
        return found.entry.completion(request["model"]), _cache_headers(call.headers, found.kind)
    outcome = await _call_with_failover(
        db, call, resolved.targets, lambda p, c, t: p.chat(c, t.model, request)
    )
    body: dict[str, Any] = outcome.result.body
    usage = outcome.result.usage or Usage(
        estimate_prompt_tokens(request["messages"]),
        count_tokens(completion_text(body)),
        estimated=True,
    )
    body["model"] = request["model"]
    body.setdefault("usage", _usage_object(usage))
    call.record(target=outcome.target, status="ok", error_type=None, usage=usage,
                attempts=outcome.attempts, fallback=outcome.fallback)  # fmt: skip
    if decision is not None:
        runtime.cache.store(decision, body, provider=outcome.target.provider,
                            model=outcome.target.name, vector=found.vector)  # fmt: skip
    return body, _cache_headers(call.headers, _not_found(decision))


async def chat_stream(
    runtime: Runtime,
    db: AsyncSession,
    *,
    identity: Identity,
    request: dict[str, Any],
    cache: CacheRules | None = None,
    cache_control: tuple[bool, bool] = (True, True),
) -> tuple[AsyncIterator[bytes], Mapping[str, str]]:
    """Retries and fallbacks happen until the first chunk; from then on the stream is the
    client's, and a failure becomes an SSE error event (never a silent retry).

    A user has at most INFERENCE_MAX_CONCURRENT_STREAMS streams open (429 past them), each
    for at most INFERENCE_STREAM_MAX_SECONDS from the request's arrival (then it ends with
    an error event): a provider that trickles cannot hold connections for ever. A cached
    answer is replayed as a stream (and takes no stream slot); a streamed answer that ends
    well is stored as a plain one would be.

    Returns the events, and headers for the answer."""
    resolved, call, decision, found = await _begin_chat(
        runtime, db, identity, request, cache, cache_control, stream=True
    )
    if found.entry is not None:
        events = found.entry.events(request["model"], include_usage=wants_usage(request))
        return events, _cache_headers(call.headers, found.kind)
    owner = identity.user_id or identity.sub
    try:
        lease = await runtime.streams.acquire(owner)
    except BaseException:
        call.release()
        raise
    opened = False
    try:
        outcome = await _call_with_failover(
            db, call, resolved.targets, lambda p, c, t: p.chat_stream(c, t.model, request)
        )
        opened = True
    finally:
        if not opened:
            await runtime.streams.release(owner, lease)
    ttft = time.monotonic() - call.started
    # On the event loop's clock: time.monotonic(), as call.started.
    deadline = asyncio.get_running_loop().time() + runtime.settings.stream_max_seconds - ttft
    storing = decision if decision is not None and decision.store else None
    events = _relay(call, outcome, request, ttft=ttft, deadline=deadline, owner=owner,
                    lease=lease, storing=storing, vector=found.vector)  # fmt: skip
    # Started up to its first event here: an answer whose client is gone before it began
    # is never iterated, and a generator that never started never runs its `finally`. One
    # that has started runs it when it is closed or dropped (the loop's async-generator
    # finalizer): the call is recorded, its hold settled and its lease given back.
    first = await anext(events)
    return _resumed(first, events), _cache_headers(call.headers, _not_found(decision))


async def _resumed(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    yield first
    async for event in rest:
        yield event


async def _relay(
    call: Call,
    outcome: Outcome[ChatStream],
    request: dict[str, Any],
    *,
    ttft: float,
    deadline: float,
    owner: str,
    lease: str | None,
    storing: Decision | None = None,
    vector: list[float] | None = None,
) -> AsyncIterator[bytes]:
    """The provider's chunks as SSE events under the requested model's name, until the
    stream ends, breaks (an error event) or outlives its deadline (an error event); then
    the call event, the lease given back, and [DONE]. With `storing`, an answer that ended
    well is kept in the response cache."""
    stream = outcome.result
    status, error_type, text = "cancelled", None, []
    answer = StreamedAnswer(call.runtime.cache.max_entry_bytes) if storing else None
    chunks = aiter(stream)
    try:
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    chunk = await anext(chunks)
            except StopAsyncIteration:
                break
            chunk["model"] = request["model"]
            text.append(completion_text(chunk))
            if answer is not None:
                answer.add(chunk)
            yield sse.event(chunk)
        status = "ok"
        body = answer.completion() if answer is not None else None
        if storing is not None and body is not None:
            if body["usage"] is None and stream.usage is not None:
                body["usage"] = _usage_object(stream.usage)
            call.runtime.cache.store(storing, body, provider=outcome.target.provider,
                                     model=outcome.target.name, vector=vector)  # fmt: skip
    except TimeoutError:
        status, error_type = "error", "stream_too_long"
        limit = call.runtime.settings.stream_max_seconds
        message = f"The stream was cut after {limit:g} s (INFERENCE_STREAM_MAX_SECONDS)."
        yield sse.event({"error": {"message": message, "type": "upstream_error",
                                   "code": error_type}})  # fmt: skip
    except ProviderError as exc:
        status, error_type = "error", exc.kind
        message = f"The provider's stream broke: {exc.message}"
        yield sse.event({"error": {"message": message, "type": "upstream_error",
                                   "code": exc.kind}})  # fmt: skip
    finally:
        usage = stream.usage or Usage(
            estimate_prompt_tokens(request["messages"]),
            count_tokens("".join(text)),
            estimated=True,
        )
        call.record(
            target=outcome.target,
            status=status,
            error_type=error_type,
            usage=usage,
            attempts=outcome.attempts,
            fallback=outcome.fallback,
            ttft=ttft,
        )
        await stream.aclose()
        await call.runtime.streams.release(owner, lease)
    yield sse.DONE


def _usage_object(usage: Usage) -> dict[str, int]:
    return {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.prompt_tokens + usage.completion_tokens}  # fmt: skip


def _base64(vector: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


async def embeddings(
    runtime: Runtime,
    db: AsyncSession,
    *,
    identity: Identity,
    model: str,
    inputs: list[str],
    encoding: str,
    dimensions: int | None = None,
) -> tuple[dict[str, Any], Mapping[str, str]]:
    """The vectors in OpenAI's shape, and headers for the answer; of `dimensions` when
    given, which every target must be able to answer (DimensionsUnsupported)."""
    resolved = await resolve_model(runtime, db, model, identity=identity)
    alias, strategy, targets = resolved.alias, resolved.strategy, resolved.targets
    if dimensions is not None:
        for target in targets:
            if not runtime.providers[target.provider].honours_dimensions(target.model, dimensions):
                raise DimensionsUnsupported(
                    f"The model {target.name!r} cannot answer {dimensions} dimensions"
                    + (f" (a target of {model!r})" if alias else "")
                    + ": leave `dimensions` "
                    "out, or ask a model that takes it (OpenAI's text-embedding-3 models).",
                    model=target.name,
                )
    call = Call(runtime, identity, model, alias, "embeddings", stream=False, strategy=strategy)
    if identity.policies is not None:
        await call.govern(
            targets, prompt_tokens=lambda: sum(count_tokens(t) for t in inputs), completion=0
        )
    outcome = await _call_with_failover(
        db, call, targets, lambda p, c, t: p.embed(c, t.model, inputs, dimensions)
    )
    result = outcome.result
    usage = result.usage or Usage(sum(count_tokens(text) for text in inputs), 0, estimated=True)
    call.record(target=outcome.target, status="ok", error_type=None, usage=usage,
                attempts=outcome.attempts, fallback=outcome.fallback)  # fmt: skip
    body = {
        "object": "list",
        "data": [
            {
                "object": "embedding",
                "index": i,
                "embedding": _base64(v) if encoding == "base64" else v,
            }
            for i, v in enumerate(result.vectors)
        ],
        "model": model,
        "usage": {"prompt_tokens": usage.prompt_tokens, "total_tokens": usage.prompt_tokens},
    }
    return body, call.headers


async def list_aliases(db: AsyncSession, *, identity: Identity) -> list[ModelAlias]:
    """The shared aliases and the caller's own."""
    return list(await repository.list_aliases(db, owner_id=_owner(identity)))


async def list_models(
    runtime: Runtime, db: AsyncSession, *, identity: Identity
) -> list[tuple[str, str]]:
    """(id, owned_by) of what the caller can call: the aliases; the local model when it is
    installed; and, per provider, the models of the credential a `provider/model` name
    reaches for this caller (their own, else a shared one), as that provider lists them
    (its `/models`), cached per credential for INFERENCE_MODELS_CACHE_SECONDS. A provider
    that cannot say is logged and left out: the list never fails for it."""
    aliases = await repository.list_aliases(db, owner_id=_owner(identity))
    models = list(dict.fromkeys((a.alias, "alias") for a in aliases))
    local = runtime.providers.get("local")
    if local is not None:
        models += [(f"local/{m}", "local") for m in await local.list_models(NO_CREDENTIAL)]
    credentials: list[tuple[str, Credential]] = []
    for provider in sorted(NEEDS_CREDENTIAL):
        try:
            target = Target(provider=provider, model="")
            credentials.append((provider, await credential_for(runtime, db, identity=identity,
                                                               target=target)))  # fmt: skip
        except NoCredential:
            continue
    listed = await asyncio.gather(*(_listed(runtime, p, c) for p, c in credentials))
    seen = {model for model, _ in models}
    for (provider, _), names in zip(credentials, listed, strict=True):
        for name in names:
            model = f"{provider}/{name}"
            if model not in seen:
                seen.add(model)
                models.append((model, provider))
    return models


async def _listed(runtime: Runtime, provider: str, credential: Credential) -> list[str]:
    """A credential's model list, from the cache or its provider (empty when it cannot say,
    which is remembered for a little while too, so that a provider that is down does not
    slow every list)."""
    cached: list[str] | None = runtime.model_lists.get(credential.id)
    if cached is not None:
        return cached
    try:
        names = await asyncio.wait_for(
            runtime.providers[provider].list_models(credential), MODEL_LIST_TIMEOUT_SECONDS
        )
    except (ProviderError, TimeoutError) as exc:
        log.warning("model list unavailable", provider=provider, credential=credential.id,
                    error=getattr(exc, "kind", type(exc).__name__))  # fmt: skip
        runtime.model_lists.put(credential.id, [], ttl=MODEL_LIST_RETRY_SECONDS)
        return []
    runtime.model_lists.put(credential.id, names)
    return names


async def get_model(
    runtime: Runtime, db: AsyncSession, *, identity: Identity, model: str
) -> tuple[str, str]:
    """(id, owned_by) of one model list_models lists; ModelNotFound otherwise."""
    for found in await list_models(runtime, db, identity=identity):
        if found[0] == model:
            return found
    raise ModelNotFound(
        f"No model {model!r} among the models you can call (GET /v1/models lists them).",
        model=model,
    )


# ---------------------------------------------------------------- Hugging Face Hub


HUB = Target(provider="huggingface", model="hub")


async def _hub_token(runtime: Runtime, db: AsyncSession, identity: Identity) -> str | None:
    """The caller's Hugging Face credential (their own, else a shared one), or None: the Hub
    is then asked anonymously."""
    try:
        credential = await credential_for(runtime, db, identity=identity, target=HUB)
    except NoCredential:
        return None
    return credential.api_key


async def _ask_hub(
    runtime: Runtime, db: AsyncSession, identity: Identity, ask: Callable[[HfApi], R]
) -> R:
    """`ask(api)` in a Hub thread (huggingface_hub is synchronous; runtime.HubCalls), within
    INFERENCE_HUB_TIMEOUT_SECONDS; whatever fails becomes a problem."""
    token = await _hub_token(runtime, db, identity)
    timeout = runtime.settings.hub_timeout_seconds
    try:
        from huggingface_hub import HfApi

        api = HfApi(endpoint=runtime.settings.hf_endpoint, token=token or False)
        return await runtime.hub.run(identity.sub, lambda: ask(api), timeout)
    except TooManyHubCalls:
        raise
    except Exception as exc:
        raise _hub_problem(exc) from None


def _search_hub(api: HfApi, search: str | None, limit: int, timeout: float) -> list[Any]:
    """HfApi.list_models's first page, asked once: list_models retries a connection error
    for about 20 s (http_backoff), so an unreachable Hub held the caller and a thread that
    long; the search answers one page (`limit` ≤ 100) anyway."""
    from huggingface_hub import get_session
    from huggingface_hub.hf_api import ModelInfo
    from huggingface_hub.utils import hf_raise_for_status  # type: ignore[attr-defined]

    params: dict[str, Any] = {"limit": limit}
    if search:
        params["search"] = search
    response = get_session().get(
        f"{api.endpoint}/api/models",
        params=params,
        headers=api._build_hf_headers(),  # as HfApi sends them: token, user agent
        timeout=timeout,
    )
    hf_raise_for_status(response)
    return [ModelInfo(**item) for item in response.json()[:limit]]  # type: ignore[no-untyped-call]


def _hub_problem(exc: Exception) -> Exception:
    if isinstance(exc, HFValidationError):  # huggingface_hub's own rules for a repo id
        return InvalidRequest(f"Not a Hub repo id: {exc}")
    if isinstance(exc, RepositoryNotFoundError):
        return NotFound("No such model on the Hub (or it is private).")
    if isinstance(exc, GatedRepoError):
        return Forbidden("This model is gated: accept its terms on the Hub with your account.")
    if isinstance(exc, TimeoutError):
        return HubError("The Hub did not answer in time.")
    if isinstance(exc, HfHubHTTPError) and exc.response is not None:
        if exc.response.status_code == 401:
            return Forbidden("The Hub refused your Hugging Face credential.")
        return HubError(f"The Hub answered {exc.response.status_code}.")
    return HubError(f"The Hub is unreachable ({type(exc).__name__}).")


async def hub_search(
    runtime: Runtime, db: AsyncSession, *, identity: Identity, search: str | None, limit: int
) -> list[dict[str, Any]]:
    """Models on the Hub matching `search`, asked with the caller's credential if any."""
    timeout = runtime.settings.hub_timeout_seconds
    models = await _ask_hub(
        runtime, db, identity, lambda api: _search_hub(api, search, limit, timeout)
    )
    return [_hub_model(m) for m in models]


async def hub_model(
    runtime: Runtime, db: AsyncSession, *, identity: Identity, repo_id: str
) -> dict[str, Any]:
    """One model's card data from the Hub, asked with the caller's credential if any."""
    return _hub_model(await _ask_hub(runtime, db, identity, lambda api: api.model_info(repo_id)))


def _hub_model(info: Any) -> dict[str, Any]:
    fields = ("id", "author", "pipeline_tag", "library_name", "downloads", "likes", "tags",
              "gated", "private", "created_at", "last_modified")  # fmt: skip
    data: dict[str, Any] = {}
    for name in fields:
        value = getattr(info, name, None)
        if value is not None:
            data[name] = value.isoformat() if hasattr(value, "isoformat") else value
    return data
