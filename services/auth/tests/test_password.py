"""POST /auth/password: changing one's password ends every session but a fresh one."""

from __future__ import annotations

from common.principals import SESSION_PREFIX

from .conftest import PASSWORD, AuthClient, set_cookies

NEW_PASSWORD = "Marmalade-Comet-Harbour-77"
PROBLEM_JSON = "application/problem+json"


async def test_a_password_change_revokes_every_session_and_issues_a_new_one(
    auth: AuthClient,
) -> None:
    laptop = await auth.signup("alice@example.com")
    phone = await auth.logged_in("alice@example.com")

    response = await auth.as_user(
        laptop,
        "POST",
        "/auth/password",
        json={"current_password": PASSWORD, "new_password": NEW_PASSWORD},
    )

    assert response.status_code == 200
    for old in (laptop, phone):
        assert not await auth.redis.exists(SESSION_PREFIX + old.sid)
        assert await auth.store.touch(old.sid, now=auth.clock()) is None
    cookies = set_cookies(response)
    token = cookies["session"].value
    assert token not in (laptop.token, phone.token)
    assert cookies["session"]["httponly"] is True
    assert cookies["csrf_token"].value == response.json()["csrf_token"]
    sessions = await auth.store.list_for_user(laptop.user_id)
    assert len(sessions) == 1
    assert sessions[0].csrf_matches(cookies["csrf_token"].value)
    assert response.json()["user"]["email"] == "alice@example.com"

    assert (await auth.login("alice@example.com", PASSWORD)).status_code == 401
    assert (await auth.login("alice@example.com", NEW_PASSWORD)).status_code == 200


async def test_a_wrong_current_password_changes_nothing(auth: AuthClient) -> None:
    who = await auth.signup("alice@example.com")

    response = await auth.as_user(
        who,
        "POST",
        "/auth/password",
        json={"current_password": "Not-The-Right-Password-1", "new_password": NEW_PASSWORD},
    )

    assert response.status_code == 401
    assert response.headers["content-type"] == PROBLEM_JSON
    assert not set_cookies(response)
    assert await auth.store.touch(who.sid, now=auth.clock()) is not None
    assert (await auth.login("alice@example.com", PASSWORD)).status_code == 200
    assert (await auth.login("alice@example.com", NEW_PASSWORD)).status_code == 401


async def test_a_weak_new_password_is_refused(auth: AuthClient) -> None:
    who = await auth.signup("alice@example.com")

    for weak in ("short-1", "qwerty123456", "alice-is-my-name-2027", PASSWORD):
        response = await auth.as_user(
            who,
            "POST",
            "/auth/password",
            json={"current_password": PASSWORD, "new_password": weak},
        )
        assert response.status_code == 422, weak
        assert response.json()["type"] == "urn:llm-platform:problem:weak-password"
        assert weak not in response.text

    assert await auth.store.touch(who.sid, now=auth.clock()) is not None
    assert (await auth.login("alice@example.com", PASSWORD)).status_code == 200


async def test_a_password_change_needs_a_session_not_an_api_key(auth: AuthClient) -> None:
    who = await auth.signup("alice@example.com")
    key = await auth.create_key(who)

    response = await auth.call(
        "POST",
        "/auth/password",
        identity=await auth.key_identity(key["key"]),
        json={"current_password": PASSWORD, "new_password": NEW_PASSWORD},
    )

    assert response.status_code == 403
    assert response.json()["type"] == "urn:llm-platform:problem:session-required"
    assert (await auth.login("alice@example.com", PASSWORD)).status_code == 200


async def test_guessing_the_current_password_is_throttled_like_a_login(auth: AuthClient) -> None:
    """A stolen session cannot be used to brute-force the password behind it."""
    who = await auth.signup("alice@example.com")
    guesses = [
        await auth.as_user(
            who,
            "POST",
            "/auth/password",
            json={"current_password": f"Wrong-Guess-Number-{i:02d}", "new_password": NEW_PASSWORD},
        )
        for i in range(auth.settings.login_free_failures + 1)
    ]
    assert [r.status_code for r in guesses[:-1]] == [401] * auth.settings.login_free_failures
    assert guesses[-1].status_code == 429
    assert int(guesses[-1].headers["retry-after"]) >= 1
    # Even the right password waits out the delay now, and so does a plain login from
    # this address; elsewhere the account is not locked.
    right = await auth.as_user(
        who, "POST", "/auth/password",
        json={"current_password": PASSWORD, "new_password": NEW_PASSWORD},
    )  # fmt: skip
    assert right.status_code == 429
    assert (await auth.login("alice@example.com", PASSWORD)).status_code == 429
    assert (await auth.login("alice@example.com", PASSWORD, ip="198.51.100.99")).status_code == 200
