"""Configuration of the auth service (environment variables prefixed `AUTH_`)."""

from __future__ import annotations

from typing import ClassVar

from pydantic_settings import SettingsConfigDict

from common.settings import DatabaseSettings


class AuthSettings(DatabaseSettings):
    model_config = SettingsConfigDict(env_prefix="AUTH_")

    service_name: ClassVar[str] = "auth"
    default_port: ClassVar[int] = 8001
