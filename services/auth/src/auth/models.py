"""Tables of the auth service, all in the `auth` schema."""

from __future__ import annotations

from sqlmodel import SQLModel

from common.db import schema_registry


class AuthBase(SQLModel, registry=schema_registry("auth")):
    """Base of every auth table: `schema="auth"` and our naming convention."""
