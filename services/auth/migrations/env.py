"""Alembic environment of the auth service."""

from auth import models
from auth.settings import AuthSettings
from common.migrations import run_env

run_env(models.AuthBase.metadata, default_url=AuthSettings().database_url)
