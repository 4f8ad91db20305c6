"""Settings: prefixed variables win, shared ones may be unprefixed, production needs secrets."""

from __future__ import annotations

import secrets
from typing import ClassVar

import pytest
from pydantic import ValidationError
from pydantic_settings import SettingsConfigDict

from common.settings import DEV_SIGNING_KEY, DatabaseSettings


class DemoSettings(DatabaseSettings):
    model_config = SettingsConfigDict(env_prefix="DEMO_")

    service_name: ClassVar[str] = "demo"
    default_port: ClassVar[int] = 8123


VARIABLES = (
    "DATABASE_URL",
    "ENVIRONMENT",
    "LOG_FORMAT",
    "LOG_LEVEL",
    "PORT",
    "INTERNAL_SIGNING_KEY",
    "REDIS_URL",
)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(f"DEMO_{name}", raising=False)


def test_prefixed_database_url_wins_over_the_shared_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://shared@db/platform")
    monkeypatch.setenv("DEMO_DATABASE_URL", "postgresql://demo@db/platform")

    assert DemoSettings().database_url == "postgresql://demo@db/platform"


def test_shared_database_url_is_used_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://shared@db/platform")

    assert DemoSettings().database_url == "postgresql://shared@db/platform"


def test_unshared_field_ignores_the_unprefixed_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORT", "9999")

    assert DemoSettings().port == 8123

    monkeypatch.setenv("DEMO_PORT", "9001")

    assert DemoSettings().port == 9001


@pytest.mark.parametrize(
    "key",
    [
        pytest.param(None, id="missing"),
        pytest.param("changeme", id="placeholder"),
        pytest.param("  Secret ", id="placeholder-padded"),
        pytest.param(DEV_SIGNING_KEY, id="dev-default"),
        pytest.param("dev-" + "x" * 40, id="dev-prefixed"),
        pytest.param("a" * 31, id="short"),
    ],
)
def test_production_refuses_a_weak_signing_key(
    monkeypatch: pytest.MonkeyPatch, key: str | None
) -> None:
    monkeypatch.setenv("ENVIRONMENT", "production")
    if key is not None:
        monkeypatch.setenv("INTERNAL_SIGNING_KEY", key)

    with pytest.raises(ValidationError, match="internal_signing_key is unset or a placeholder"):
        DemoSettings()


def test_production_accepts_a_real_signing_key(monkeypatch: pytest.MonkeyPatch) -> None:
    key = secrets.token_hex(32)
    monkeypatch.setenv("DEMO_ENVIRONMENT", "production")
    monkeypatch.setenv("INTERNAL_SIGNING_KEY", key)

    settings = DemoSettings()

    assert settings.environment == "production"
    assert settings.internal_signing_key.get_secret_value() == key
    assert key not in repr(settings)


def test_dev_accepts_the_dev_default_key() -> None:
    settings = DemoSettings()

    assert settings.environment == "dev"
    assert settings.internal_signing_key.get_secret_value() == DEV_SIGNING_KEY


@pytest.mark.parametrize(
    ("environment", "log_format", "json_logs"),
    [
        ("production", None, True),
        ("production", "console", False),
        ("dev", None, False),
        ("dev", "json", True),
        ("test", None, False),
    ],
)
def test_json_logs_follow_the_environment_unless_log_format_is_set(
    monkeypatch: pytest.MonkeyPatch, environment: str, log_format: str | None, json_logs: bool
) -> None:
    monkeypatch.setenv("ENVIRONMENT", environment)
    monkeypatch.setenv("INTERNAL_SIGNING_KEY", secrets.token_hex(32))
    if log_format is not None:
        monkeypatch.setenv("LOG_FORMAT", log_format)

    assert DemoSettings().json_logs is json_logs
