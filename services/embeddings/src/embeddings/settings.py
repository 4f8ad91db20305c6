"""Configuration of the embeddings service (environment variables prefixed `EMBEDDINGS_`)."""

from __future__ import annotations

from typing import ClassVar

from pydantic_settings import SettingsConfigDict

from common.settings import DatabaseSettings


class EmbeddingsSettings(DatabaseSettings):
    model_config = SettingsConfigDict(env_prefix="EMBEDDINGS_")

    service_name: ClassVar[str] = "embeddings"
    default_port: ClassVar[int] = 8003
