"""Tables of the inference service, all in the `inference` schema."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Boolean, Column, DateTime, Index, LargeBinary, String, func, text
from sqlalchemy import Identity as SqlIdentity
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlmodel import Field, SQLModel

from common.db import schema_registry


class InferenceBase(SQLModel, registry=schema_registry("inference")):
    """Base of every inference table: `schema="inference"` and our naming convention."""


class ProviderCredential(InferenceBase, table=True):
    """A provider API key, encrypted (crypto.Keyring); owner_id NULL means shared."""

    __tablename__ = "provider_credential"

    id: uuid.UUID = Field(
        default_factory=uuid.uuid4, sa_column=Column(UUID(as_uuid=True), primary_key=True)
    )
    owner_id: uuid.UUID | None = Field(default=None, sa_column=Column(UUID(as_uuid=True)))
    shared: bool = Field(default=False, sa_column=Column(Boolean, nullable=False))
    provider: str = Field(sa_column=Column(String(32), nullable=False))
    name: str = Field(sa_column=Column(String(200), nullable=False))
    base_url: str | None = Field(default=None, sa_column=Column(String(2048)))
    # Azure OpenAI's api-version (2024-10-21); NULL for every other provider.
    api_version: str | None = Field(default=None, sa_column=Column(String(32)))
    key_hint: str = Field(sa_column=Column(String(8), nullable=False))
    key_ciphertext: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    key_id: str = Field(sa_column=Column(String(32), nullable=False))
    created_at: datetime | None = Field(
        default=None,
        sa_column=Column(DateTime(timezone=True), nullable=False, server_default=func.now()),
    )

    __table_args__ = (
        Index("ix_provider_credential_owner_provider", "owner_id", "provider"),
        Index(
            "uq_provider_credential_owner_name",
            "owner_id",
            "name",
            unique=True,
            postgresql_where=text("NOT shared"),
        ),
        Index(
            "uq_provider_credential_shared_name",
            "name",
            unique=True,
            postgresql_where=text("shared"),
        ),
    )


class ModelAlias(InferenceBase, table=True):
    """A name routed to targets, [{"model", "credential_id"?, "weight"?}, ...], by a
    `strategy` (inference.routing): shared (owner_id NULL) or one member's own, which only
    they see and call, and which wins over a shared alias of the same name for them."""

    __tablename__ = "model_alias"

    id: uuid.UUID = Field(
        default_factory=uuid.uuid4,
        sa_column=Column(
            UUID(as_uuid=True), primary_key=True, server_default=text("gen_random_uuid()")
        ),
    )
    alias: str = Field(sa_column=Column(String(200), nullable=False))
    owner_id: uuid.UUID | None = Field(default=None, sa_column=Column(UUID(as_uuid=True)))
    strategy: str = Field(
        default="ordered",
        sa_column=Column(String(16), nullable=False, server_default=text("'ordered'")),
    )
    targets: list[dict[str, Any]] = Field(sa_column=Column(JSONB, nullable=False))
    # The response cache's default for calls to it (schemas.CacheDefault); NULL: none.
    cache: dict[str, Any] | None = Field(default=None, sa_column=Column(JSONB))
    created_by: uuid.UUID | None = Field(default=None, sa_column=Column(UUID(as_uuid=True)))
    created_at: datetime | None = Field(
        default=None,
        sa_column=Column(DateTime(timezone=True), nullable=False, server_default=func.now()),
    )

    @property
    def shared(self) -> bool:
        return self.owner_id is None

    __table_args__ = (
        Index("uq_model_alias_shared_alias", "alias", unique=True,
              postgresql_where=text("owner_id IS NULL")),
        Index("uq_model_alias_owner_alias", "owner_id", "alias", unique=True,
              postgresql_where=text("owner_id IS NOT NULL")),
    )  # fmt: skip


class ModelPrice(InferenceBase, table=True):
    """An admin's price of a model (`provider/model`), over INFERENCE_PRICES and the
    catalog's: `price` is inference.pricing.Price's JSON (USD per 1M tokens)."""

    __tablename__ = "model_price"

    model: str = Field(sa_column=Column(String(300), primary_key=True))
    price: dict[str, Any] = Field(sa_column=Column(JSONB, nullable=False))
    updated_by: uuid.UUID | None = Field(default=None, sa_column=Column(UUID(as_uuid=True)))
    updated_at: datetime | None = Field(
        default=None,
        sa_column=Column(DateTime(timezone=True), nullable=False, server_default=func.now()),
    )


class PriceChange(InferenceBase, table=True):
    """The audit of the admins' prices: one row per change, never updated."""

    __tablename__ = "price_change"

    id: int | None = Field(
        default=None, sa_column=Column(BigInteger, SqlIdentity(always=True), primary_key=True)
    )
    occurred_at: datetime | None = Field(
        default=None,
        sa_column=Column(DateTime(timezone=True), nullable=False, server_default=func.now()),
    )
    actor_id: uuid.UUID | None = Field(default=None, sa_column=Column(UUID(as_uuid=True)))
    model: str = Field(sa_column=Column(String(300), nullable=False))
    action: str = Field(sa_column=Column(String(16), nullable=False))  # set | delete
    before: dict[str, Any] | None = Field(default=None, sa_column=Column(JSONB))
    after: dict[str, Any] | None = Field(default=None, sa_column=Column(JSONB))
    trace_id: str | None = Field(default=None, sa_column=Column(String(32)))

    __table_args__ = (Index("ix_price_change_model_id", "model", "id"),)
