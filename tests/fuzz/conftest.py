"""The platform the fuzz tests call, and who calls it.

`make run` of its own (tests/e2e's launcher, a database of its own), its providers the
OpenAI and Hugging Face fakes served in this process, its rate limits and login throttle
opened wide (a fuzzer's thousands of requests from one address are not what they guard
against, and a 429 in their place would hide the answer under test). Three users, one per
role (admin, member, viewer), each with a browser session (cookie and CSRF token) and an
API key; admin and member with an OpenAI credential pointing at the fake, so that chat can
answer.

`FUZZ_PROFILE=long` (`make fuzz`) runs more examples, as every caller, with the stateful
phase longer; the default is the bounded run `make test` includes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.cookiejar import DefaultCookiePolicy
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
import schemathesis

from devkit.e2e import (
    ADMIN_EMAIL,
    ADMIN_PASSWORD,
    MEMBER_PASSWORD,
    PROVIDER_KEY,
    RunningPlatform,
    platform_on,
    served_in_thread,
)
from devkit.fakes.faults import FaultControl
from devkit.fakes.hf_server import create_hf_app
from devkit.fakes.openai_server import create_openai_app

LONG = os.environ.get("FUZZ_PROFILE") == "long"
UNLIMITED = {
    "GATEWAY_RATE_LIMIT_PER_MINUTE": "0",
    "GATEWAY_RATE_LIMIT_MODEL_PER_MINUTE": "0",
    "GATEWAY_RATE_LIMIT_ANONYMOUS_PER_MINUTE": "0",
    "GATEWAY_INVALID_API_KEYS_PER_MINUTE": "0",
    "GATEWAY_UPSTREAM_MAX_CONNECTIONS_PER_USER": "0",
    "AUTH_LOGIN_FREE_FAILURES": "1000000",
    "AUTH_LOGIN_IP_FREE_FAILURES": "1000000",
}


@dataclass
class Caller:
    """One role, calling with a session (cookie and CSRF token) or with an API key."""

    role: str
    kind: str  # "session" or "key"
    user_id: str
    permissions: frozenset[str]
    http: requests.Session
    headers: dict[str, str]
    cookies: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.role}-{self.kind}"

    def call_kwargs(self) -> dict[str, Any]:
        return {"session": self.http, "headers": dict(self.headers), "cookies": dict(self.cookies)}


@dataclass
class Fuzz:
    platform: RunningPlatform
    callers: list[Caller]
    # What the fuzzers stand on, never to be deleted, disabled or changed under them: their
    # users, sessions, API keys and provider credentials (a generated id is replaced).
    protected: set[str]


def _no_cookies() -> requests.Session:
    """A requests session that keeps no cookie an answer sets (a fuzzed login must not
    replace the caller's own session): each call names its cookies."""
    session = requests.Session()
    session.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))
    session.trust_env = False
    return session


def _sign_in(
    gateway: str, email: str, password: str, protected: set[str], provider_url: str
) -> list[Caller]:
    """A session and an API key of the user, as two callers; their ids protected."""
    with httpx.Client(base_url=gateway, timeout=30) as browser:
        login = browser.post("/auth/login", json={"email": email, "password": password})
        assert login.status_code == 200, login.text
        csrf = login.json()["csrf_token"]
        browser.headers["X-CSRF-Token"] = csrf
        me = browser.get("/auth/me").json()
        created = browser.post("/auth/api-keys", json={"name": "fuzz"})
        assert created.status_code == 201, created.text
        protected.update({me["id"], created.json()["id"]})
        protected.update(session["id"] for session in browser.get("/auth/sessions").json())
        if "providers:manage" in me["permissions"]:
            credential = browser.post(
                "/v1/providers/credentials",
                json={"provider": "openai", "name": "fuzz", "api_key": PROVIDER_KEY,
                      "base_url": provider_url},
            )  # fmt: skip
            assert credential.status_code == 201, credential.text
            protected.add(credential.json()["id"])
        cookies = {name: value for name, value in browser.cookies.items()}
    role = me["roles"][0]
    permissions = frozenset(me["permissions"])
    return [
        Caller(role, "session", me["id"], permissions, _no_cookies(),
               {"X-CSRF-Token": csrf}, cookies),
        Caller(role, "key", me["id"], permissions, _no_cookies(),
               {"Authorization": f"Bearer {created.json()['key']}"}),
    ]  # fmt: skip


def _register(gateway: str, email: str) -> None:
    registered = httpx.post(
        f"{gateway}/auth/register", json={"email": email, "password": MEMBER_PASSWORD}
    )
    assert registered.status_code == 201, registered.text


@pytest.fixture(scope="session")
def fuzz(
    postgres_admin_url: str,
    redis_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Fuzz]:
    with (
        served_in_thread(create_openai_app(FaultControl(), api_key=PROVIDER_KEY), "OpenAI") as ai,
        served_in_thread(create_hf_app(FaultControl()), "Hugging Face") as hf,
        platform_on(
            postgres_admin_url,
            redis_url,
            Path(tmp_path_factory.mktemp("fuzz")),
            redis_db=3,
            env={**UNLIMITED, "INFERENCE_HF_ENDPOINT": hf},
        ) as platform,
    ):
        gateway, provider = platform.gateway, f"{ai}/v1"
        protected: set[str] = set()
        admin = _sign_in(gateway, ADMIN_EMAIL, ADMIN_PASSWORD, protected, provider)
        _register(gateway, "fuzz-member@example.com")
        _register(gateway, "fuzz-viewer@example.com")
        member = _sign_in(gateway, "fuzz-member@example.com", MEMBER_PASSWORD, protected, provider)
        viewer_id = httpx.post(
            f"{gateway}/auth/login",
            json={"email": "fuzz-viewer@example.com", "password": MEMBER_PASSWORD},
        ).json()["user"]["id"]
        demoted = httpx.patch(
            f"{gateway}/auth/users/{viewer_id}",
            json={"roles": ["viewer"]},
            headers=admin[1].headers,
        )
        assert demoted.status_code == 200, demoted.text
        viewer = _sign_in(gateway, "fuzz-viewer@example.com", MEMBER_PASSWORD, protected, provider)
        everyone = [*admin, *member, *viewer]
        # The bounded run: each role once, the way its users mostly call (the admin and the
        # viewer from a browser, the member with the SDK's key); the long run: all six.
        chosen = {"admin-session", "member-key", "viewer-session"}
        callers = everyone if LONG else [c for c in everyone if c.name in chosen]
        yield Fuzz(platform, callers, protected)
        for caller in everyone:
            caller.http.close()


@pytest.fixture(scope="session")
def fuzz_schema(fuzz: Fuzz) -> Any:
    """The gateway's merged document, loaded with the run's settings."""
    return schemathesis.openapi.from_url(f"{fuzz.platform.gateway}/openapi.json", config=CONFIG)


# Positive and negative examples; no generated credentials (each caller sends its own).
CONFIG = schemathesis.Config.from_dict(
    {
        "generation": {"mode": "all", "with-security-parameters": False, "database": "none"},
        "suppress-health-check": ["all"],
        "request-timeout": 60,
    }
)
