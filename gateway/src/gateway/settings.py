"""Configuration of the gateway (environment variables prefixed `GATEWAY_`)."""

from __future__ import annotations

from typing import ClassVar

from pydantic_settings import SettingsConfigDict

from common.settings import ServiceSettings


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
    upstream_max_connections: int = 200
    max_body_bytes: int = 16 * 1024 * 1024

    def upstream_urls(self) -> dict[str, str]:
        return {
            "auth": self.auth_url,
            "inference": self.inference_url,
            "embeddings": self.embeddings_url,
            "telemetry": self.telemetry_url,
        }
