"""Request and response bodies of the auth API."""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    StrictBool,
    StringConstraints,
)

from auth.policies import POLICY_FIELDS
from common.policy import (
    MAX_CACHE_THRESHOLD,
    MAX_CACHE_TTL_SECONDS,
    MAX_LIMIT,
    MAX_MODEL_PATTERNS,
    MIN_CACHE_THRESHOLD,
    CacheMode,
    CachePolicy,
    Period,
    check_model_pattern,
    parse_budget,
    usd,
)

RoleName = Literal["admin", "member", "viewer"]
TeamRole = Literal["owner", "member"]
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


# ---------------------------------------------------------------- policy fields

# A budget comes as a decimal string ("25.00"; a whole number is taken too, a float never:
# it is not exact); common.policy.parse_budget says what is wrong with anything else.
Budget = Annotated[Decimal, BeforeValidator(parse_budget)]
ModelPattern = Annotated[str, AfterValidator(check_model_pattern)]
Limit = Annotated[int, Field(strict=True, ge=1, le=MAX_LIMIT)]
# An amount in a response: a decimal string, two decimals at least.
Usd = Annotated[Decimal, PlainSerializer(usd, return_type=str, when_used="json")]


class PolicyFields(Request):
    """The policy fields of a key, a user or a team. In a PATCH, a field left out stays as
    it is and a field sent as null is cleared."""

    max_budget_usd: Budget | None = Field(
        None, description='USD spent per budget_period, a decimal string ("25.00").'
    )
    budget_period: Period | None = Field(
        None, description="When the spend starts again (UTC); `total` when not given."
    )
    allowed_models: Annotated[list[ModelPattern], Field(max_length=MAX_MODEL_PATTERNS)] | None = (
        Field(None, description="Model names, alias names and globs (`openai/*`).")
    )
    rpm_limit: Limit | None = Field(None, description="Model requests a minute.")
    tpm_limit: Limit | None = Field(None, description="Prompt + completion tokens a minute.")

    def policy_changes(self) -> dict[str, Any]:
        """The policy fields the request sets (a null among them clears that field)."""
        changes = {
            name: getattr(self, name) for name in POLICY_FIELDS if name in self.model_fields_set
        }
        if isinstance(cache := changes.get("cache"), CacheSettings):
            changes["cache"] = CachePolicy(**cache.model_dump())
        return changes


class CacheSettings(Request):
    """The response cache's default for the calls of a key or a team (common.policy
    .CachePolicy). It limits nothing: whoever may change the policy sets it."""

    mode: CacheMode = Field(description="`exact`, `semantic`, or `off`.")
    ttl_seconds: Annotated[int, Field(strict=True, ge=1, le=MAX_CACHE_TTL_SECONDS)] | None = Field(
        None, description="How long an answer is kept; null: the cache's default."
    )
    temperature: StrictBool = Field(
        False, description="Also cache requests with a temperature above 0."
    )
    tools: StrictBool = Field(False, description="The semantic cache also for requests with tools.")
    multi_turn: StrictBool = Field(
        False, description="The semantic cache also for requests with earlier assistant turns."
    )
    threshold: (
        Annotated[float, Field(strict=True, ge=MIN_CACHE_THRESHOLD, le=MAX_CACHE_THRESHOLD)] | None
    ) = Field(None, description="The semantic match's similarity; null: the cache's default.")


class CacheField(Request):
    """The cache default, which keys and teams have (users do not)."""

    cache: CacheSettings | None = Field(
        None, description="The response cache's default for the calls; null: none."
    )


class PolicyRead(BaseModel):
    max_budget_usd: Usd | None = None
    budget_period: str | None = None
    allowed_models: list[str] | None = None
    rpm_limit: int | None = None
    tpm_limit: int | None = None


class CacheRead(BaseModel):
    cache: CacheSettings | None = None


class SpendRead(BaseModel):
    """The budget's live state (all null without a budget; the spend null when telemetry,
    which it is rebuilt from, could not be asked)."""

    spend_usd: Usd | None = None
    budget_remaining_usd: Usd | None = None
    budget_resets_at: datetime | None = Field(
        None, description="When the spend starts again; null for a `total` budget."
    )


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


class UserRead(PolicyRead):
    id: uuid.UUID
    email: str
    name: str
    roles: list[str]
    disabled: bool
    created_at: datetime


class UserDetail(UserRead, SpendRead):
    pass


class Me(BaseModel):
    id: uuid.UUID
    email: str
    name: str
    roles: list[str]
    permissions: list[str]


class MeRead(Me, PolicyRead, SpendRead):
    """Who you are, and your user's policy and spend."""


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


Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]


class ApiKeyCreate(PolicyFields, CacheField):
    name: Name
    expires_at: datetime | None = None
    scopes: list[Annotated[str, StringConstraints(max_length=64)]] | None = Field(
        None, description="A subset of your permissions; omitted: all of them, as they change."
    )
    team_id: uuid.UUID | None = Field(
        None, description="A team you are a member of: the key counts for the team too."
    )


class ApiKeyUpdate(PolicyFields, CacheField):
    name: Name | None = None


class ApiKeyRead(PolicyRead, CacheRead, SpendRead):
    id: uuid.UUID
    user_id: uuid.UUID
    team_id: uuid.UUID | None
    name: str
    prefix: str
    scopes: list[str] | None
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None


class ApiKeyCreated(ApiKeyRead):
    key: str = Field(description="The key itself. Shown once: only its hash is stored.")


class UserUpdate(PolicyFields):
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
    team_id: str | None
    policies: dict[str, Any] | None


# ---------------------------------------------------------------- teams


class TeamCreate(PolicyFields, CacheField):
    name: Name


class TeamUpdate(PolicyFields, CacheField):
    name: Name | None = None


class TeamRead(PolicyRead, CacheRead):
    id: uuid.UUID
    name: str
    role: TeamRole | None = Field(description="Yours in the team; null if you are not in it.")
    created_at: datetime
    updated_at: datetime


class TeamDetail(TeamRead, SpendRead):
    pass


class TeamPage(BaseModel):
    data: list[TeamRead]
    next_cursor: str | None


class MemberSet(Request):
    role: TeamRole


class MemberRead(BaseModel):
    user_id: uuid.UUID
    email: str
    name: str
    role: TeamRole
    created_at: datetime


class MemberPage(BaseModel):
    data: list[MemberRead]
    next_cursor: str | None


class MemberRole(BaseModel):
    role: TeamRole


# ---------------------------------------------------------------- budget alerts


Text = Annotated[str, StringConstraints(max_length=64)]


class BudgetAlert(BaseModel):
    """One announcement on common.budgets' ALERTS list, as inference pushes it."""

    scope: Literal["key", "user", "team"]
    id: uuid.UUID
    threshold: Annotated[int, Field(ge=0, le=1000)]
    spend_usd: Text | Decimal
    budget_usd: Text | Decimal
    period: Text
    at: float | Text | None = None
