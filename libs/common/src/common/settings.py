"""Settings base: one class per service with an env prefix; shared values may come unprefixed."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

# Values that must never protect a production deployment.
PLACEHOLDER_SECRETS = frozenset(
    {"", "changeme", "change-me", "changethis", "secret", "password", "dev", "test", "default"}
)
DEV_SIGNING_KEY = "dev-only-internal-signing-key-not-for-production"

# Fields that every service reads and that may be set once, without a prefix
# (`DATABASE_URL`), or per service (`AUTH_DATABASE_URL`, which wins).
SHARED_FIELDS = frozenset(
    {
        "environment",
        "log_level",
        "log_format",
        "internal_signing_key",
        "identity_max_age_seconds",
        "database_url",
        "redis_url",
        "session_cookie_name",
        "csrf_cookie_name",
        "sentry_dsn",
        "sentry_environment",
    }
)


class _SharedEnvSource(EnvSettingsSource):
    """Reads the shared fields from unprefixed environment variables."""

    def __call__(self) -> dict[str, Any]:
        return {k: v for k, v in super().__call__().items() if k in SHARED_FIELDS}


class ServiceSettings(BaseSettings):
    """What every service and the gateway configure the same way."""

    model_config = SettingsConfigDict(extra="ignore", env_prefix="")

    service_name: ClassVar[str] = "service"
    default_port: ClassVar[int] = 8000

    environment: Literal["dev", "test", "production"] = "dev"
    log_level: str = "INFO"
    log_format: Literal["console", "json"] | None = None
    host: str = "127.0.0.1"
    port: int = 0
    internal_signing_key: SecretStr = SecretStr(DEV_SIGNING_KEY)
    identity_max_age_seconds: float = 60.0
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Read by auth (which sets the cookies) and the gateway (which checks them).
    session_cookie_name: str = "session"
    csrf_cookie_name: str = "csrf_token"
    # Error reports (common.sentry): nothing is loaded or sent while the DSN is unset.
    sentry_dsn: SecretStr | None = None
    sentry_environment: str | None = None  # unset: `environment`
    # On SIGTERM: how long requests already admitted (streams among them) may take to
    # finish before they are cut; new connections are refused from the signal on.
    shutdown_grace_seconds: float = Field(20.0, ge=0, le=3600)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        shared = _SharedEnvSource(settings_cls, env_prefix="")
        return init_settings, env_settings, shared, dotenv_settings, file_secret_settings

    @field_validator("sentry_dsn", "sentry_environment", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        """`SENTRY_DSN=` (an empty line of .env, an optional Secret's empty key): no Sentry."""
        return None if value == "" else value

    @model_validator(mode="after")
    def _defaults_and_secrets(self) -> ServiceSettings:
        if self.port == 0:
            self.port = self.default_port
        if self.environment == "production":
            for name, value in self:
                if isinstance(value, SecretStr) and _is_placeholder(value.get_secret_value()):
                    raise ValueError(
                        f"{name} is unset or a placeholder; production needs a real secret"
                    )
        return self

    @property
    def json_logs(self) -> bool:
        if self.log_format is not None:
            return self.log_format == "json"
        return self.environment == "production"


class DatabaseSettings(ServiceSettings):
    """A service that owns a Postgres schema."""

    database_url: str = "postgresql+asyncpg://postgres@127.0.0.1:5432/platform"
    database_pool_size: int = 10
    database_max_overflow: int = 10
    # How long a request waits for a pooled connection (and a new connection for the
    # server) before it is answered 503 with Retry-After.
    database_pool_timeout: float = Field(10.0, gt=0, le=300)


def _is_placeholder(secret: str) -> bool:
    lowered = secret.strip().lower()
    return (
        lowered in PLACEHOLDER_SECRETS or lowered.startswith(("dev-", "dev:")) or len(secret) < 32
    )
