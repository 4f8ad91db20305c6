"""Configuration of the gateway (environment variables prefixed `GATEWAY_`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, ClassVar
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, IPvAnyNetwork, field_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from common.settings import ServiceSettings
from gateway.console import DEFAULT_CONSOLE_DIR


class RateBudget(BaseModel):
    """Requests per minute: everything but model calls, and model calls. 0: unlimited."""

    default: int = Field(ge=0)
    model: int = Field(ge=0)


class GatewaySettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="GATEWAY_")

    service_name: ClassVar[str] = "gateway"
    default_port: ClassVar[int] = 8000

    auth_url: str = "http://127.0.0.1:8001"
    inference_url: str = "http://127.0.0.1:8002"
    embeddings_url: str = "http://127.0.0.1:8003"
    telemetry_url: str = "http://127.0.0.1:8004"
    # Upstream time limits: connecting, and waiting for each piece of a response.
    upstream_connect_timeout_seconds: float = 5.0
    upstream_read_timeout_seconds: float = 120.0
    # Connections to each upstream (per gateway replica), and how many of them one caller
    # (a user, with all their API keys) may hold at once; past that, 429. See README.md:
    # the per-caller share keeps one caller from taking the whole pool. 0: no per-caller cap.
    upstream_max_connections: int = Field(200, ge=1)
    upstream_max_connections_per_user: int = Field(16, ge=0)
    max_body_bytes: int = 16 * 1024 * 1024
    # How long the gateway waits for its Redis (credentials, sessions, rate windows) before
    # refusing with 503: Redis answers in well under a millisecond, so a longer wait means
    # it is paused, cut off or swamped, and the caller should not hang on it.
    redis_timeout_seconds: float = Field(0.5, gt=0, le=30)
    # Browser origins allowed to call with credentials (CORS); empty: no CORS headers.
    cors_origins: list[str] = []
    # Rate limits per principal (user or API key owner) per minute; 0 means unlimited.
    rate_limit_per_minute: int = Field(600, ge=0)
    rate_limit_model_per_minute: int = Field(120, ge=0)
    # Per client IP, for the routes that need no credentials (register, login).
    rate_limit_anonymous_per_minute: int = Field(60, ge=0)
    # Per client IP: API keys that auth had to be asked about and did not know. Past it,
    # keys not in the cache are refused (429) without asking auth. 0: unlimited.
    invalid_api_keys_per_minute: int = Field(20, ge=0)
    # Reverse proxies (CIDRs) whose X-Forwarded-For names the client, and whose W3C trace
    # context the gateway joins (gateway/forwarded.py). Empty: the socket's peer is the
    # client, and a caller's trace context only gets a link from a new trace.
    trusted_proxies: Annotated[list[IPvAnyNetwork], NoDecode] = []
    # Whether a trusted proxy's trace context is joined: false behind a proxy that passes
    # its clients' traceparent through unchanged (ingress-nginx without OpenTelemetry).
    join_proxy_trace_context: bool = True
    # How long a hold of a model call's budgets taken here lasts unless the call settles or
    # gives it back first (a call whose inference replica died). Inference replaces a hold
    # that would lapse before its call can have ended (INFERENCE_STREAM_MAX_SECONDS for a
    # stream), at the cost of a round trip of its own: keep it above that.
    budget_hold_seconds: float = Field(660.0, ge=1, le=86_400)
    # Per role, e.g. {"admin": {"default": 2000, "model": 500}}; a caller gets the most
    # generous budget among its roles.
    rate_limits: dict[str, RateBudget] = {}
    # The built web console and API docs page (console/dist; `make install` builds it, the
    # gateway's image carries it), served at /console/ and /docs (gateway/console.py).
    console_dir: Path = DEFAULT_CONSOLE_DIR
    # The console's link from a call's trace id to its trace: a URL template with
    # `{trace_id}`, e.g. Jaeger's `http://127.0.0.1:16686/trace/{trace_id}`. Unset: no link.
    console_trace_url: str | None = None

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        """`10.0.0.0/8,fd00::/8` (or a JSON list) from the environment."""
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @field_validator("console_dir", mode="before")
    @classmethod
    def _console_dir_default(cls, value: Any) -> Any:
        """Empty (`GATEWAY_CONSOLE_DIR=`) is the default, never the working directory."""
        return DEFAULT_CONSOLE_DIR if value is None or str(value).strip() == "" else value

    @field_validator("console_trace_url", mode="before")
    @classmethod
    def _trace_url_template(cls, value: Any) -> Any:
        """http(s) with a host, `{trace_id}` in it and no other placeholder; empty: None."""
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        if not isinstance(value, str):
            return value
        text = value.strip()
        parts = urlsplit(text)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        if "{trace_id}" not in text:
            raise ValueError("must contain {trace_id}, where the trace id goes")
        if "{" in text.replace("{trace_id}", "") or "}" in text.replace("{trace_id}", ""):
            raise ValueError("may hold no placeholder but {trace_id}")
        if any(ord(c) < 0x21 or c in '"<>\\^`|' for c in text):
            raise ValueError("may hold no space, quote or control character")
        return text

    def upstream_urls(self) -> dict[str, str]:
        return {
            "auth": self.auth_url,
            "inference": self.inference_url,
            "embeddings": self.embeddings_url,
            "telemetry": self.telemetry_url,
        }
