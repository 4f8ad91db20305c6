"""Request and response bodies of the auth API."""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

RoleName = Literal["admin", "member", "viewer"]
_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]+$")


def normalize_email(value: str) -> str:
    """Case and surrounding whitespace do not make another account."""
    email = value.strip().lower()
    if len(email) > 320 or not _EMAIL.match(email):
        raise ValueError("not a valid email address")
    return email


Email = Annotated[str, AfterValidator(normalize_email)]
Password = Annotated[str, StringConstraints(min_length=1, max_length=1024)]


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RegisterRequest(Request):
    email: Email
    password: Password
    name: Annotated[str, StringConstraints(strip_whitespace=True, max_length=200)] = ""


class LoginRequest(Request):
    email: Email
    password: Password


class PasswordChange(Request):
    current_password: Password
    new_password: Password


class UserRead(BaseModel):
    id: uuid.UUID
    email: str
    name: str
    roles: list[str]
    disabled: bool
    created_at: datetime


class Me(BaseModel):
    id: uuid.UUID
    email: str
    name: str
    roles: list[str]
    permissions: list[str]


class LoginResponse(BaseModel):
    user: Me
    csrf_token: str = Field(description="Also set as the readable csrf_token cookie.")
    expires_at: datetime = Field(description="When the session ends at the latest.")


class SessionRead(BaseModel):
    id: str
    created_at: datetime
    last_seen_at: datetime
    expires_at: datetime
    ip: str
    user_agent: str
    current: bool


class ApiKeyCreate(Request):
    name: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
    expires_at: datetime | None = None
    scopes: list[Annotated[str, StringConstraints(max_length=64)]] | None = Field(
        None, description="A subset of your permissions; omitted: all of them, as they change."
    )


class ApiKeyRead(BaseModel):
    id: uuid.UUID
    name: str
    prefix: str
    scopes: list[str] | None
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None


class ApiKeyCreated(ApiKeyRead):
    key: str = Field(description="The key itself. Shown once: only its hash is stored.")


class UserUpdate(Request):
    roles: Annotated[list[RoleName], Field(min_length=1)] | None = None
    disabled: bool | None = None
    name: Annotated[str, StringConstraints(strip_whitespace=True, max_length=200)] | None = None


class UserPage(BaseModel):
    data: list[UserRead]
    next_cursor: str | None


class AuditEventRead(BaseModel):
    id: int
    occurred_at: datetime
    action: str
    outcome: str
    actor_id: uuid.UUID | None
    target_type: str | None
    target_id: str | None
    ip: str | None
    user_agent: str | None
    trace_id: str | None
    detail: dict[str, Any]


class AuditPage(BaseModel):
    data: list[AuditEventRead]
    next_cursor: str | None


class ResolveApiKey(Request):
    key_hash: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


class ResolvedApiKey(BaseModel):
    key_id: str
    user_id: str
    roles: list[str]
    permissions: list[str]
    expires_at: float | None
