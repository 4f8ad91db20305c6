"""Configuration of the gateway (environment variables prefixed `GATEWAY_`)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, Field
from pydantic_settings import SettingsConfigDict

from common.settings import ServiceSettings


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
    # Browser origins allowed to call with credentials (CORS); empty: no CORS headers.
    cors_origins: list[str] = []
    # Rate limits per principal (user or API key owner) per minute; 0 means unlimited.
    rate_limit_per_minute: int = Field(600, ge=0)
    rate_limit_model_per_minute: int = Field(120, ge=0)
    # Per client IP, for the routes that need no credentials (register, login).
    rate_limit_anonymous_per_minute: int = Field(60, ge=0)
    # Per role, e.g. {"admin": {"default": 2000, "model": 500}}; a caller gets the most
    # generous budget among its roles.
    rate_limits: dict[str, RateBudget] = {}

    def upstream_urls(self) -> dict[str, str]:
        return {
            "auth": self.auth_url,
            "inference": self.inference_url,
            "embeddings": self.embeddings_url,
            "telemetry": self.telemetry_url,
        }
