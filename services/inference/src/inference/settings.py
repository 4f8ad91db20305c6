"""Configuration of the inference service (environment variables prefixed `INFERENCE_`)."""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any, ClassVar

from pydantic import Field, IPvAnyNetwork, SecretStr, field_validator, model_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from common.settings import DatabaseSettings
from inference.pricing import Price

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Development only: production refuses placeholder secrets (see ServiceSettings).
DEV_ENCRYPTION_KEY = "dev:ZGV2LW9ubHktZW5jcnlwdGlvbi1rZXktMzItYnl0ZXM="


def parse_endpoint(text: str) -> tuple[IPNetwork, int]:
    """An INFERENCE_REFUSED_ENDPOINTS entry: `ip:port`, `[ipv6]:port` or `cidr:port`
    (`[cidr]:port` for IPv6) -> (network, port)."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} is not ip:port")
    return ipaddress.ip_network(host.removeprefix("[").removesuffix("]"), strict=False), int(port)


class InferenceSettings(DatabaseSettings):
    model_config = SettingsConfigDict(env_prefix="INFERENCE_")

    service_name: ClassVar[str] = "inference"
    default_port: ClassVar[int] = 8002

    # Comma-separated `key_id:base64(32 bytes)`; the first encrypts, all decrypt.
    encryption_keys: SecretStr = SecretStr(DEV_ENCRYPTION_KEY)
    # Per attempt, and for the whole request (all retries and fallbacks together).
    connect_timeout_seconds: float = Field(5.0, gt=0)
    read_timeout_seconds: float = Field(60.0, gt=0)
    request_deadline_seconds: float = Field(120.0, gt=0)
    max_attempts: int = Field(3, ge=1, le=10)
    backoff_base_seconds: float = Field(0.25, ge=0)
    backoff_max_seconds: float = Field(8.0, ge=0)
    # Circuit breaker per target: open after this many consecutive failures, probe again
    # after the cool-down.
    circuit_failure_threshold: int = Field(5, ge=1)
    circuit_cooldown_seconds: float = Field(30.0, gt=0)
    # How long a replica trusts "closed, no failures" before asking Redis again: a circuit
    # another replica opens is seen within this time. 0: ask on every call.
    circuit_sync_seconds: float = Field(1.0, ge=0)
    # A circuit's state (its failures, open or not) is forgotten this long after its last
    # failure: failures further apart do not add up, and no failed name stays in Redis.
    circuit_state_seconds: float = Field(300.0, gt=0)
    # The most a provider may send back: a plain answer (or an error's body), a whole
    # stream, one event of a stream. Past one the call fails with 502, not retried.
    max_response_bytes: int = Field(32 * 1024 * 1024, ge=1024)
    max_stream_bytes: int = Field(32 * 1024 * 1024, ge=1024)
    max_stream_chunk_bytes: int = Field(256 * 1024, ge=1024)
    # How long a stream may last from the request's arrival; then it ends with an error event.
    stream_max_seconds: float = Field(600.0, gt=0)
    # Streams one user may have open at once, every replica together; more are refused with
    # 429. 0: no limit.
    max_concurrent_streams: int = Field(8, ge=0)
    # Model names that get a label of their own in the Prometheus metrics, beyond the priced
    # ones: the first this many that answered a call, per replica. The rest are `other`.
    metrics_max_models: int = Field(100, ge=0)
    # Chat completions answered below FastAPI's router once checked (api.fast_chat); off,
    # every call goes through the FastAPI route (the same answers, ~0.3 ms more CPU each).
    fast_chat: bool = True
    # How long resolved credentials and aliases are cached in memory.
    cache_seconds: float = Field(30.0, ge=0)
    # How long a credential's model list (its provider's /models, for GET /v1/models) is
    # kept.
    models_cache_seconds: float = Field(300.0, ge=0, le=86_400)
    # The least-latency strategy (inference/routing.py): targets within this share of the
    # fastest take turns; a target other than the fastest whose last sample is this old
    # gets a call (per replica); a failed attempt counts as at least this long; how long a
    # replica uses the latencies it read before reading them again; how long a target's
    # latency is kept after its last sample.
    latency_buffer: float = Field(0.1, ge=0, le=10)
    latency_probe_seconds: float = Field(10.0, gt=0)
    latency_failure_seconds: float = Field(10.0, gt=0)
    latency_sync_seconds: float = Field(1.0, ge=0)
    latency_ttl_seconds: float = Field(3600.0, ge=1, le=30 * 86_400)
    # How many aliases of their own a user may keep (shared ones are the admins').
    max_aliases_per_user: int = Field(100, ge=1, le=10_000)
    # Prices (USD per 1M tokens) by `provider/model`, over the catalog's (inference/prices.json);
    # an admin's price (PUT /v1/providers/prices/{model}) wins over both.
    prices: dict[str, Price] = {}
    # The response cache (inference/cache.py): how long an answer is kept unless the request
    # or policy says, the largest answer kept, the most one owner scope keeps (the entries
    # that expire soonest go first), and how long a lookup may take before it is a miss.
    # The exact cache's Redis: REDIS_URL's unless set. A Redis of its own can be sized and
    # evicted as a cache (maxmemory, allkeys-lru) apart from the one holding sessions and
    # budgets; when it fails, answers are misses, and nothing else is touched.
    cache_redis_url: str | None = None
    cache_ttl_seconds: int = Field(3600, ge=1, le=30 * 86_400)
    cache_max_entry_bytes: int = Field(256 * 1024, ge=1024, le=16 * 1024 * 1024)
    cache_max_scope_bytes: int = Field(64 * 1024 * 1024, ge=1024 * 1024)
    cache_lookup_timeout_seconds: float = Field(0.25, gt=0, le=5)
    # The semantic cache: the cosine similarity a cached prompt needs (besides the lexical
    # guard, inference/cache_guard.py; bench/semantic_cache.py measures both), the most
    # entries one owner scope keeps, and how long embedding and lookup may take together.
    cache_semantic_threshold: float = Field(0.94, ge=0.5, le=1.0)
    cache_semantic_max_entries: int = Field(1_000, ge=1, le=1_000_000)
    cache_semantic_timeout_seconds: float = Field(2.0, gt=0, le=30)
    # The most prices admins may set at runtime.
    max_prices: int = Field(10_000, ge=1, le=100_000)
    # Telemetry: the Redis stream telemetry reads, and the in-memory buffer kept while
    # Redis is unreachable (oldest events dropped past it, counted in a metric).
    telemetry_buffer_size: int = Field(10_000, ge=1)
    # Events wait up to this long to be written together (one Redis round trip a batch).
    telemetry_flush_seconds: float = Field(0.05, ge=0, le=5)
    # Governance (inference/governance.py): telemetry, asked what a governed scope has
    # spent when its counter is not in Redis (POST /internal/spend); the completion size a
    # budgeted call without max_tokens is held for: the largest this replica saw for the
    # model in the last ~10 minutes, at least the minimum, the default before any.
    telemetry_url: str = "http://127.0.0.1:8004"
    budget_min_completion_tokens: int = Field(16, ge=1, le=1_000_000)
    budget_default_completion_tokens: int = Field(256, ge=1, le=1_000_000)
    # A budget not spent but held by calls in flight: how long a call waits for them to
    # settle before it is refused (429, Retry-After: 1). 0: refused at once.
    budget_wait_seconds: float = Field(2.0, ge=0, le=30)
    hub_timeout_seconds: float = Field(10.0, gt=0, le=120)
    # Hub calls (search, model info) one user may have in flight on a replica; more: 429.
    hub_calls_per_user: int = Field(2, ge=1, le=100)
    hf_endpoint: str | None = Field(
        None, description="Defaults to HF_ENDPOINT, then huggingface.co"
    )
    # The egress policy for provider URLs (inference/providers/egress.py): comma-separated
    # CIDRs of private networks where providers may be called (loopback under `make run`),
    # CIDRs refused besides the private ranges (a cluster's public-looking pod or service
    # ranges), and `ip:port` endpoints never called, even on an allowed network.
    allowed_private_networks: Annotated[list[IPvAnyNetwork], NoDecode] = []
    refused_networks: Annotated[list[IPvAnyNetwork], NoDecode] = []
    refused_endpoints: Annotated[list[str], NoDecode] = []
    local_threads: int = Field(2, ge=1)
    # Texts waiting for the local model; a call that would queue more is refused with 503
    # and Retry-After (a call finding the queue empty is always taken, whatever its size).
    local_max_queued_texts: int = Field(4096, ge=1)
    # Load the local model at start-up (in the background) rather than on the first call.
    local_preload: bool = True
    # Where the local model's ONNX export is kept between starts (a start that finds it
    # loads in under a second, without torch); unset: ~/.cache/llm-platform/models
    # ($XDG_CACHE_HOME). Unwritable: exported at every start, ~10 s.
    local_cache_dir: str | None = None

    @field_validator(
        "allowed_private_networks", "refused_networks", "refused_endpoints", mode="before"
    )
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("refused_endpoints")
    @classmethod
    def _endpoints(cls, value: list[str]) -> list[str]:
        for endpoint in value:
            parse_endpoint(endpoint)  # ValueError: the setting is refused at start-up
        return value

    @model_validator(mode="after")
    def _circuit_outlives_its_cooldown(self) -> InferenceSettings:
        if self.circuit_state_seconds < self.circuit_cooldown_seconds:
            raise ValueError(
                "INFERENCE_CIRCUIT_STATE_SECONDS must be at least "
                "INFERENCE_CIRCUIT_COOLDOWN_SECONDS: an open circuit would close unprobed"
            )
        return self
