"""Configuration of the inference service (environment variables prefixed `INFERENCE_`)."""

from __future__ import annotations

from typing import ClassVar

from pydantic_settings import SettingsConfigDict

from common.settings import DatabaseSettings


class InferenceSettings(DatabaseSettings):
    model_config = SettingsConfigDict(env_prefix="INFERENCE_")

    service_name: ClassVar[str] = "inference"
    default_port: ClassVar[int] = 8002
