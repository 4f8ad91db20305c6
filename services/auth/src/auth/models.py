"""Tables of the auth service, all in the `auth` schema."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    Numeric,
    String,
    Text,
    func,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID
from sqlmodel import Field, SQLModel

from common.db import schema_registry


class AuthBase(SQLModel, registry=schema_registry("auth")):
    """Base of every auth table: `schema="auth"` and our naming convention."""


def _now_column(**kwargs: Any) -> Any:
    return Column(DateTime(timezone=True), nullable=False, server_default=func.now(), **kwargs)


class PolicyColumns(AuthBase):
    """The five policy fields (common.policy) of a key, a user or a team; None: not set."""

    max_budget_usd: Decimal | None = Field(default=None, sa_type=Numeric(19, 9))
    budget_period: str | None = Field(default=None, sa_type=String(8))
    allowed_models: list[str] | None = Field(default=None, sa_type=ARRAY(String(200)))
    rpm_limit: int | None = Field(default=None, sa_type=Integer)
    tpm_limit: int | None = Field(default=None, sa_type=Integer)


class CacheColumn(AuthBase):
    """The response cache's default of a key or a team (common.policy.CachePolicy, in its
    wire form); None: none. Users have none."""

    cache: dict[str, Any] | None = Field(default=None, sa_type=JSONB(none_as_null=True))


def _policy_checks() -> tuple[CheckConstraint, ...]:
    """What the policy columns may hold (the API checks more: common.policy's bounds)."""
    return (
        CheckConstraint("budget_period IN ('day', 'week', 'month', 'total')", name="budget_period"),
        CheckConstraint("max_budget_usd >= 0", name="max_budget_usd"),
        CheckConstraint("rpm_limit > 0 AND tpm_limit > 0", name="limits"),
    )


class Permission(AuthBase, table=True):
    name: str = Field(primary_key=True, max_length=64)
    description: str = Field(default="")


class Role(AuthBase, table=True):
    name: str = Field(primary_key=True, max_length=32)
    description: str = Field(default="")


class RolePermission(AuthBase, table=True):
    __tablename__ = "role_permission"

    role: str = Field(
        sa_column=Column(
            String(32), ForeignKey("auth.role.name", ondelete="CASCADE"), primary_key=True
        )
    )
    permission: str = Field(
        sa_column=Column(
            String(64), ForeignKey("auth.permission.name", ondelete="CASCADE"), primary_key=True
        )
    )


class User(PolicyColumns, table=True):
    id: uuid.UUID = Field(
        default_factory=uuid.uuid4, sa_column=Column(UUID(as_uuid=True), primary_key=True)
    )
    email: str = Field(sa_column=Column(String(320), nullable=False, unique=True))
    name: str = Field(default="", sa_column=Column(String(200), nullable=False, server_default=""))
    password_hash: str = Field(sa_column=Column(Text, nullable=False))
    disabled: bool = Field(
        default=False, sa_column=Column(Boolean, nullable=False, server_default="false")
    )
    created_at: datetime | None = Field(default=None, sa_column=_now_column())
    updated_at: datetime | None = Field(default=None, sa_column=_now_column(onupdate=func.now()))
    password_changed_at: datetime | None = Field(default=None, sa_column=_now_column())

    __table_args__ = (Index("ix_user_created_at_id", "created_at", "id"), *_policy_checks())


class UserRole(AuthBase, table=True):
    __tablename__ = "user_role"

    user_id: uuid.UUID = Field(
        sa_column=Column(
            UUID(as_uuid=True), ForeignKey("auth.user.id", ondelete="CASCADE"), primary_key=True
        )
    )
    role: str = Field(
        sa_column=Column(
            String(32), ForeignKey("auth.role.name", ondelete="RESTRICT"), primary_key=True
        )
    )


class ApiKey(PolicyColumns, CacheColumn, table=True):
    __tablename__ = "api_key"

    id: uuid.UUID = Field(
        default_factory=uuid.uuid4, sa_column=Column(UUID(as_uuid=True), primary_key=True)
    )
    user_id: uuid.UUID = Field(
        sa_column=Column(
            UUID(as_uuid=True),
            ForeignKey("auth.user.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        )
    )
    name: str = Field(sa_column=Column(String(200), nullable=False))
    prefix: str = Field(sa_column=Column(String(16), nullable=False))
    key_hash: str = Field(sa_column=Column(String(64), nullable=False, unique=True))
    # None: the owner's permissions, whatever they are at the time of use.
    scopes: list[str] | None = Field(
        default=None, sa_column=Column(ARRAY(String(64)), nullable=True)
    )
    created_at: datetime | None = Field(default=None, sa_column=_now_column())
    expires_at: datetime | None = Field(default=None, sa_column=Column(DateTime(timezone=True)))
    revoked_at: datetime | None = Field(default=None, sa_column=Column(DateTime(timezone=True)))
    last_used_at: datetime | None = Field(default=None, sa_column=Column(DateTime(timezone=True)))
    # A team's key counts for its team too (its budget, limits, models); None: personal.
    team_id: uuid.UUID | None = Field(
        default=None,
        sa_column=Column(
            UUID(as_uuid=True), ForeignKey("auth.team.id", ondelete="SET NULL"), index=True
        ),
    )

    __table_args__ = _policy_checks()


class Team(PolicyColumns, CacheColumn, table=True):
    id: uuid.UUID = Field(
        default_factory=uuid.uuid4, sa_column=Column(UUID(as_uuid=True), primary_key=True)
    )
    name: str = Field(sa_column=Column(String(200), nullable=False, unique=True))
    created_at: datetime | None = Field(default=None, sa_column=_now_column())
    updated_at: datetime | None = Field(default=None, sa_column=_now_column(onupdate=func.now()))

    __table_args__ = (Index("ix_team_created_at_id", "created_at", "id"), *_policy_checks())


class TeamMember(AuthBase, table=True):
    __tablename__ = "team_member"

    team_id: uuid.UUID = Field(
        sa_column=Column(
            UUID(as_uuid=True), ForeignKey("auth.team.id", ondelete="CASCADE"), primary_key=True
        )
    )
    user_id: uuid.UUID = Field(
        sa_column=Column(
            UUID(as_uuid=True), ForeignKey("auth.user.id", ondelete="CASCADE"), primary_key=True
        )
    )
    role: str = Field(sa_column=Column(String(8), nullable=False))
    created_at: datetime | None = Field(default=None, sa_column=_now_column())

    __table_args__ = (
        CheckConstraint("role IN ('owner', 'member')", name="role"),
        Index("ix_team_member_user_id", "user_id"),
        Index("ix_team_member_team_id_created_at_user_id", "team_id", "created_at", "user_id"),
    )


class AuditEvent(AuthBase, table=True):
    __tablename__ = "audit_event"

    id: int | None = Field(
        default=None, sa_column=Column(BigInteger, Identity(always=True), primary_key=True)
    )
    occurred_at: datetime | None = Field(default=None, sa_column=_now_column())
    action: str = Field(sa_column=Column(String(64), nullable=False))
    outcome: str = Field(sa_column=Column(String(16), nullable=False, server_default="success"))
    actor_id: uuid.UUID | None = Field(default=None, sa_column=Column(UUID(as_uuid=True)))
    target_type: str | None = Field(default=None, sa_column=Column(String(32)))
    target_id: str | None = Field(default=None, sa_column=Column(String(128)))
    ip: str | None = Field(default=None, sa_column=Column(String(64)))
    user_agent: str | None = Field(default=None, sa_column=Column(String(512)))
    trace_id: str | None = Field(default=None, sa_column=Column(String(32)))
    detail: dict[str, Any] = Field(
        default_factory=dict, sa_column=Column(JSONB, nullable=False, server_default="{}")
    )

    __table_args__ = (
        Index("ix_audit_event_action_id", "action", "id"),
        Index("ix_audit_event_actor_id_id", "actor_id", "id"),
    )
