"""Alembic environment of the inference service."""

from common.migrations import run_env
from inference import models
from inference.settings import InferenceSettings

run_env(models.InferenceBase.metadata, default_url=InferenceSettings().database_url)
