"""Alembic environment of the embeddings service."""

from common.migrations import run_env
from embeddings import models
from embeddings.settings import EmbeddingsSettings

run_env(models.EmbeddingsBase.metadata, default_url=EmbeddingsSettings().database_url)
