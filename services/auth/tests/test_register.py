"""POST /auth/register: who may sign up, and with which email and password."""

from __future__ import annotations

from typing import Any

import pytest

from .conftest import PASSWORD, AuthClient, MakeApp

PROBLEM_JSON = "application/problem+json"


async def test_register_creates_a_member_with_a_normalised_email(auth: AuthClient) -> None:
    response = await auth.register("  Alice.Smith@Example.COM ", name="  Alice  ")

    assert response.status_code == 201
    body = response.json()
    assert body["email"] == "alice.smith@example.com"
    assert body["name"] == "Alice"
    assert body["roles"] == ["member"]
    assert body["disabled"] is False
    assert PASSWORD not in response.text
    assert "password" not in " ".join(body)
    # The normalised address is the one to log in with, in any case.
    assert (await auth.login("ALICE.smith@example.com")).status_code == 200


async def test_an_email_registered_in_another_case_is_taken(auth: AuthClient) -> None:
    assert (await auth.register("bob@example.com")).status_code == 201

    response = await auth.register(" BOB@Example.com", password="another-Secret-Phrase-9")

    assert response.status_code == 409
    assert response.headers["content-type"] == PROBLEM_JSON
    assert response.json()["type"] == "urn:llm-platform:problem:email-taken"
    # The first account keeps its password.
    assert (await auth.login("bob@example.com")).status_code == 200
    assert (await auth.login("bob@example.com", "another-Secret-Phrase-9")).status_code == 401


@pytest.mark.parametrize(
    ("email", "password"),
    [
        pytest.param("carol@example.com", "Sh0rt-pass", id="shorter-than-12"),
        pytest.param("carol@example.com", "Password1234!", id="common-decorated"),
        pytest.param("carol@example.com", "qwerty123456", id="common"),
        pytest.param("carol@example.com", "aaaaaaaaaaaaaaab", id="too-few-characters"),
        pytest.param("carol.jones@example.com", "Carol.Jones-rocks-2027", id="contains-email"),
    ],
)
async def test_weak_passwords_are_refused(auth: AuthClient, email: str, password: str) -> None:
    response = await auth.register(email, password)

    assert response.status_code == 422
    assert response.headers["content-type"] == PROBLEM_JSON
    body = response.json()
    assert body["type"] == "urn:llm-platform:problem:weak-password"
    assert body["detail"]
    assert password not in response.text
    # Nothing was created: the email is still free.
    assert (await auth.register(email)).status_code == 201


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"email": "not-an-email", "password": PASSWORD}, id="malformed-email"),
        pytest.param({"email": "a b@example.com", "password": PASSWORD}, id="space-in-email"),
        pytest.param({"email": "dave@example.com"}, id="no-password"),
        pytest.param(
            {"email": "dave@example.com", "password": PASSWORD, "roles": ["admin"]},
            id="unknown-field",
        ),
    ],
)
async def test_malformed_requests_are_422_problems(auth: AuthClient, body: dict[str, Any]) -> None:
    response = await auth.call("POST", "/auth/register", json=body)

    assert response.status_code == 422
    assert response.headers["content-type"] == PROBLEM_JSON
    problem = response.json()
    assert problem["type"] == "urn:llm-platform:problem:validation"
    assert problem["errors"]
    assert PASSWORD not in response.text


async def test_nobody_can_register_when_registration_is_closed(make_app: MakeApp) -> None:
    async with make_app(open_registration=False) as auth:
        response = await auth.register("erin@example.com")

        assert response.status_code == 403
        assert response.headers["content-type"] == PROBLEM_JSON
        assert response.json()["type"] == "urn:llm-platform:problem:registration-closed"
        assert (await auth.login("erin@example.com")).status_code == 401
