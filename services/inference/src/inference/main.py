"""The inference service application."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import structlog
from fastapi import FastAPI
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from common.app import create_service_app, database_and_redis
from common.db import transaction
from common.fastpath import fast_route
from common.http import peer_client
from common.redis import create_redis
from inference import service
from inference.api import CHAT_PATH, fast_chat, router
from inference.cache import CacheStore
from inference.cache_guard import compatible
from inference.crypto import Keyring
from inference.events import EventSink, MetricLabels
from inference.failover import CircuitBreaker, Failover, RetryPolicy
from inference.governance import Governance
from inference.pricing import CATALOG, PriceBook
from inference.providers.anthropic import AnthropicProvider
from inference.providers.azure import AzureOpenAIProvider
from inference.providers.base import Provider
from inference.providers.egress import EgressPolicy
from inference.providers.huggingface import HuggingFaceProvider
from inference.providers.limits import AnswerLimits
from inference.providers.local import MODEL as LOCAL_MODEL
from inference.providers.local import LocalProvider, default_cache_dir
from inference.providers.openai import OpenAIProvider
from inference.repository import ResponseCache
from inference.routing import LeastLatency, Routing
from inference.runtime import HubCalls, Runtime, TtlCache
from inference.service import PROVIDERS
from inference.settings import InferenceSettings
from inference.streams import StreamSlots

log = structlog.get_logger(__name__)
EXPIRED_ENTRIES_SECONDS = 60.0
# Threads for Hub calls on a replica (inference.runtime.HubCalls), shared by its users.
HUB_THREADS = 8


def build_providers(settings: InferenceSettings, egress: EgressPolicy) -> dict[str, Provider]:
    limits = AnswerLimits(
        body_bytes=settings.max_response_bytes,
        stream_bytes=settings.max_stream_bytes,
        event_bytes=settings.max_stream_chunk_bytes,
    )
    timeouts = {
        "connect_timeout": settings.connect_timeout_seconds,
        "read_timeout": settings.read_timeout_seconds,
    }
    providers: dict[str, Any] = {
        "openai": OpenAIProvider(**timeouts, egress=egress, answer_limits=limits),
        "huggingface": HuggingFaceProvider(**timeouts, egress=egress, answer_limits=limits),
        "azure": AzureOpenAIProvider(**timeouts, egress=egress, answer_limits=limits),
        "anthropic": AnthropicProvider(**timeouts, egress=egress, answer_limits=limits),
    }
    local = LocalProvider(
        threads=settings.local_threads,
        max_queued=settings.local_max_queued_texts,
        cache_dir=Path(settings.local_cache_dir)
        if settings.local_cache_dir
        else default_cache_dir(),
    )
    if settings.local_preload:
        local.preload()  # torch and the weights load in the background, not on first use
    providers["local"] = local
    return providers


def build_failover(settings: InferenceSettings, redis: Redis) -> Failover:
    return Failover(
        CircuitBreaker(
            redis,
            threshold=settings.circuit_failure_threshold,
            cooldown=settings.circuit_cooldown_seconds,
            sync_interval=settings.circuit_sync_seconds,
            state_ttl=settings.circuit_state_seconds,
        ),
        RetryPolicy(
            max_attempts=settings.max_attempts,
            base=settings.backoff_base_seconds,
            cap=settings.backoff_max_seconds,
            deadline=settings.request_deadline_seconds,
        ),
    )


def build_cache(settings: InferenceSettings, redis: Redis, local: Provider) -> CacheStore:
    """The response cache; its semantic side embeds prompts with the local model."""

    async def embed(text: str) -> list[float]:
        return (await local.embed(service.NO_CREDENTIAL, LOCAL_MODEL, [text])).vectors[0]

    own = create_redis(settings.cache_redis_url) if settings.cache_redis_url else None
    return CacheStore(
        ResponseCache(own or redis),
        own_redis=own,
        max_entry_bytes=settings.cache_max_entry_bytes,
        max_scope_bytes=settings.cache_max_scope_bytes,
        lookup_timeout=settings.cache_lookup_timeout_seconds,
        embed=embed,
        guard=compatible,
        semantic_threshold=settings.cache_semantic_threshold,
        semantic_timeout=settings.cache_semantic_timeout_seconds,
        semantic_max_entries=settings.cache_semantic_max_entries,
    )


def build_runtime(settings: InferenceSettings, redis: Redis) -> Runtime:
    egress = EgressPolicy.from_settings(settings)
    prices = PriceBook(CATALOG, settings.prices)
    providers = build_providers(settings, egress)
    return Runtime(
        settings=settings,
        keyring=Keyring(settings.encryption_keys.get_secret_value()),
        egress=egress,
        providers=providers,
        failover=build_failover(settings, redis),
        sink=EventSink(
            redis,
            buffer_size=settings.telemetry_buffer_size,
            linger=settings.telemetry_flush_seconds,
            labels=MetricLabels(
                PROVIDERS,
                priced=prices.models(),
                max_learned=settings.metrics_max_models,
            ),
        ),
        credentials=TtlCache(settings.cache_seconds),
        aliases=TtlCache(settings.cache_seconds),
        hub=HubCalls(threads=HUB_THREADS, per_user=settings.hub_calls_per_user),
        routing=Routing(
            LeastLatency(
                redis,
                buffer=settings.latency_buffer,
                probe_seconds=settings.latency_probe_seconds,
                failure_seconds=settings.latency_failure_seconds,
                sync_seconds=settings.latency_sync_seconds,
                ttl_seconds=settings.latency_ttl_seconds,
            )
        ),
        model_lists=TtlCache(settings.models_cache_seconds),
        streams=StreamSlots(
            redis, cap=settings.max_concurrent_streams, lifetime=settings.stream_max_seconds
        ),
        governance=Governance(
            settings,
            redis,
            peer_client(settings.telemetry_url, settings, peer="telemetry", max_connections=20),
            prices,
        ),
        prices=prices,
        cache=build_cache(settings, redis, providers["local"]),
    )


async def read_prices(runtime: Runtime, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    """The admins' prices from the table; a failure is logged (the prices known stay)."""
    try:
        async with transaction(sessionmaker) as db:
            await service.refresh_prices(runtime, db)
    except Exception as exc:
        log.warning("could not read the admins' prices; will retry", error=repr(exc))


async def keep_prices(runtime: Runtime, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    """Read the admins' prices again every INFERENCE_CACHE_SECONDS (at least every second):
    what another replica changed is used here within that time. About once a minute, also
    delete the semantic cache's expired entries."""
    every = max(runtime.settings.cache_seconds, 1.0)
    rounds = 0
    while True:
        await asyncio.sleep(every)
        await read_prices(runtime, sessionmaker)
        rounds += 1
        if rounds * every >= EXPIRED_ENTRIES_SECONDS:
            rounds = 0
            try:
                await runtime.cache.delete_expired()
            except Exception as exc:
                log.warning("could not delete expired cache entries", error=repr(exc))


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: InferenceSettings = app.state.settings
    async with database_and_redis(app, settings):
        runtime = build_runtime(settings, app.state.redis)
        app.state.runtime = runtime
        runtime.sink.start()
        runtime.cache.sessions = app.state.sessionmaker
        await read_prices(runtime, app.state.sessionmaker)
        prices = asyncio.create_task(keep_prices(runtime, app.state.sessionmaker))
        try:
            yield
        finally:
            prices.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await prices
            await runtime.routing.latency.close()
            runtime.hub.close()
            await runtime.cache.aclose()
            await runtime.sink.close()
            await runtime.governance.telemetry.aclose()
            await asyncio.gather(*(p.aclose() for p in runtime.providers.values()))


def create_app(settings: InferenceSettings | None = None) -> FastAPI:
    settings = settings or InferenceSettings()
    return create_service_app(
        settings,
        public=router,
        lifespan=lifespan,
        title="Inference",
        description=(
            "LLM providers behind one OpenAI-compatible API: encrypted credentials, routing,"
            " retries, fallbacks, streaming."
        ),
        fast_routes=[fast_route("POST", CHAT_PATH, fast_chat)] if settings.fast_chat else [],
    )
