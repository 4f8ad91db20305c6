"""Configuration of the auth service (environment variables prefixed `AUTH_`)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import SettingsConfigDict

from common.settings import DatabaseSettings


class AuthSettings(DatabaseSettings):
    model_config = SettingsConfigDict(env_prefix="AUTH_")

    service_name: ClassVar[str] = "auth"
    default_port: ClassVar[int] = 8001

    open_registration: bool = True
    # Sessions: idle timeout (sliding) and absolute lifetime.
    session_idle_timeout_seconds: float = Field(30 * 60, gt=0)
    session_lifetime_seconds: float = Field(12 * 3600, gt=0)
    # Secure cookies everywhere but dev, unless set explicitly.
    cookie_secure: bool | None = None
    # Login throttling, per account at one client address and per client address (an IPv6
    # client is its /64): past the free failures each attempt waits a delay that doubles
    # with every further failure, up to the maximum. A counter is forgotten a window after
    # the delay its last failure started; a successful login clears its account's.
    login_free_failures: int = Field(10, ge=1)
    login_ip_free_failures: int = Field(100, ge=1)
    login_delay_seconds: float = Field(1.0, gt=0)
    login_max_delay_seconds: float = Field(15 * 60, gt=0)
    login_failure_window_seconds: int = Field(15 * 60, ge=1)
    # Argon2id, OWASP's recommended minimum: 19 MiB, 2 passes, 1 lane.
    argon2_time_cost: int = 2
    argon2_memory_kib: int = 19 * 1024
    argon2_parallelism: int = 1
    # API keys: how long the gateway's cache may hold a resolved key, and how often the
    # last use times it records are written to Postgres.
    api_key_cache_seconds: int = Field(300, ge=1)
    api_key_last_used_flush_seconds: float = Field(30.0, gt=0)
    # How many keys a user may hold (any not revoked: expired ones count until revoked), so
    # that one user's key list, and a team's, stay bounded.
    max_api_keys_per_user: int = Field(100, ge=1, le=10_000)
    # Telemetry, asked what a scope has spent when its counter is not in Redis (the live
    # spend of keys, users and teams; common.budgets.TelemetrySpend).
    telemetry_url: str = "http://127.0.0.1:8004"
    # The first admin, created once at start-up when both are set.
    admin_email: str | None = Field(
        None, validation_alias=AliasChoices("AUTH_ADMIN_EMAIL", "ADMIN_EMAIL")
    )
    admin_password: SecretStr | None = Field(
        None, validation_alias=AliasChoices("AUTH_ADMIN_PASSWORD", "ADMIN_PASSWORD")
    )
    # When ADMIN_EMAIL is an existing account that is not an admin: make it admin (its own
    # password kept) rather than refuse to start.
    admin_promote_existing: bool = Field(
        False,
        validation_alias=AliasChoices("AUTH_ADMIN_PROMOTE_EXISTING", "ADMIN_PROMOTE_EXISTING"),
    )

    @property
    def secure_cookies(self) -> bool:
        return self.cookie_secure if self.cookie_secure is not None else self.environment != "dev"
