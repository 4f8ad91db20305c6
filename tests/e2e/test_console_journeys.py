"""The console's journeys (issue 23) in Debian's Chromium, against `make run`: a person
registers, manages keys and credentials, chats with a streamed answer, reads usage; a
viewer sees no write buttons; signing out (or losing the session) leaves nothing private
on screen. Screenshots at each step go under the test's tmp dir (browser.shot)."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import httpx
from playwright.sync_api import Browser, Page, expect

from .browser import shot
from .conftest import (
    ADMIN_EMAIL,
    ADMIN_PASSWORD,
    MEMBER_PASSWORD,
    PROVIDER_KEY,
    FakeOpenAI,
    Login,
    Member,
    RunningPlatform,
)
from .console_pages import bars, console_url, doc_screenshot, open_page, register, sign_in

CHAT = "/v1/chat/completions"
JAEGER = "http://jaeger.example:16686/trace/{trace_id}"


def unique_email(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}@example.com"


def registered_then_admin(platform: RunningPlatform, page: Page, email: str) -> str:
    """Registers `email` (through the API), then signs the admin in on the Admin page; the
    new user's id."""
    created = httpx.post(
        f"{platform.gateway}/auth/register", json={"email": email, "password": MEMBER_PASSWORD}
    )
    assert created.status_code == 201, created.text
    page.goto(console_url(platform.gateway, "/admin"))
    sign_in(page, ADMIN_EMAIL, ADMIN_PASSWORD)
    user_id: str = created.json()["id"]
    return user_id


def test_register_sign_in_create_a_key_see_it_listed_and_revoke_it(
    platform: RunningPlatform, page: Page
) -> None:
    email = unique_email("keys")
    # The API's problem details are what the forms say.
    page.goto(console_url(platform.gateway, "/register"))
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill("short")
    page.get_by_role("button", name="Register and sign in").click()
    expect(page.get_by_role("alert")).to_have_text("Passwords need at least 12 characters.")
    shot(page, "0-weak-password")
    register(page, platform.gateway, email, MEMBER_PASSWORD)
    shot(page, "1-registered")
    page.get_by_role("button", name="Sign out").click()
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill("not-the-Passphrase-1")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_have_text("Invalid email or password.")
    page.get_by_label("Email").fill("")
    sign_in(page, email, MEMBER_PASSWORD)
    expect(page.get_by_role("heading", name="API keys", level=1)).to_be_visible()
    shot(page, "2-signed-in")

    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    form = page.get_by_role("form", name="Create a key")
    form.get_by_label("Name").fill("ci-pipeline")
    form.get_by_label("Budget (USD)").fill("5")
    form.get_by_label("Budget period").select_option("month")
    form.get_by_label("Requests a minute").fill("60")
    form.get_by_label("Allowed models").fill("openai/*, local/*")
    form.get_by_role("button", name="Create key").click()
    secret = page.locator("#new-key").inner_text().strip()
    assert len(secret) > 20
    shot(page, "3-key-shown-once")
    page.get_by_role("button", name="Copy key").click()
    expect(page.get_by_role("status")).to_contain_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == secret
    # The key the page showed is a working key, with the policy typed in the form.
    with httpx.Client(
        base_url=platform.gateway, headers={"Authorization": f"Bearer {secret}"}
    ) as sdk:
        assert sdk.get("/v1/models").status_code == 200
        listed = sdk.get("/auth/api-keys").json()
    [key] = [k for k in listed if k["name"] == "ci-pipeline"]
    assert Decimal(key["max_budget_usd"]) == 5
    assert key["rpm_limit"] == 60
    assert key["allowed_models"] == ["openai/*", "local/*"]

    page.get_by_role("button", name="Done").click()
    row = page.locator("#keys tbody tr", has_text="ci-pipeline")
    expect(row).to_contain_text(key["prefix"])
    expect(row).to_contain_text("$5")
    expect(row).to_contain_text("60 rpm")
    assert secret not in page.content()  # shown once: gone once dismissed
    page.reload()
    expect(row).to_be_visible()
    assert secret not in page.content()
    shot(page, "4-key-listed")
    doc_screenshot(page, "console-keys")

    page.get_by_role("button", name="Revoke ci-pipeline").click()
    page.get_by_role("button", name="Confirm revoke ci-pipeline").click()
    expect(row).to_have_count(0)
    shot(page, "5-key-revoked")
    with httpx.Client(base_url=platform.gateway) as client:
        refused = client.get("/v1/models", headers={"Authorization": f"Bearer {secret}"})
    assert refused.status_code == 401


def test_add_a_credential_and_stream_a_chat_answer_in_the_playground(
    platform: RunningPlatform, page: Page, fake_openai: FakeOpenAI
) -> None:
    # The gateway's /console/config.json, as a deployment with Jaeger configures it.
    page.route("**/console/config.json", lambda route: route.fulfill(json={"trace_url": JAEGER}))
    register(page, platform.gateway, unique_email("chat"), MEMBER_PASSWORD)
    open_page(page, "Providers")
    form = page.get_by_role("form", name="Add a credential")
    form.get_by_label("Provider", exact=True).select_option("openai")
    form.get_by_label("Name").fill("local fake")
    key_input = form.get_by_label("API key")
    assert key_input.get_attribute("type") == "password"  # masked while typed
    key_input.fill(PROVIDER_KEY)
    form.get_by_label("Base URL").fill(fake_openai.url)
    form.get_by_role("button", name="Add credential").click()
    row = page.locator("#credentials tbody tr", has_text="local fake")
    expect(row).to_contain_text(PROVIDER_KEY[-4:])
    expect(key_input).to_have_value("")
    assert PROVIDER_KEY not in page.content()
    shot(page, "1-credential-added")

    open_page(page, "Playground")
    page.get_by_label("Model").fill("openai/gpt-4o-mini")
    page.get_by_label("Message").fill("words:24")
    # Every text the answer shows, as the page changes it.
    page.evaluate(
        """() => {
            const answer = document.getElementById("answer");
            window.answerTexts = [];
            new MutationObserver(() => window.answerTexts.push(answer.textContent))
                .observe(answer, {childList: true, subtree: true, characterData: true});
        }"""
    )
    # The fake paces its chunks, so that they reach the browser as separate reads.
    fake_openai.control.delay(CHAT, between_chunks_seconds=0.03)
    page.get_by_role("button", name="Send").click()
    words = ["lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit"] * 3
    expect(page.locator("#answer")).to_have_text(" ".join(words), timeout=30_000)
    texts: list[str] = page.evaluate("window.answerTexts")
    final = " ".join(words)
    parts = {text for text in texts if text and text != final}
    assert len(parts) >= 2, texts
    assert all(final.startswith(text) for text in parts)  # each a growing prefix
    stats = page.locator("#stats")
    expect(stats.locator("[data-completion-tokens]")).to_have_attribute(
        "data-completion-tokens", "24"
    )
    expect(stats).to_contain_text("first token")
    expect(page.locator("#cost")).to_contain_text("$", timeout=15_000)
    trace = stats.get_by_role("link")
    trace_id = trace.inner_text()
    assert trace.get_attribute("href") == JAEGER.replace("{trace_id}", trace_id)
    shot(page, "2-answer-streamed")

    # The call log has the call, its trace id linking to the trace viewer.
    open_page(page, "Call log")
    row = page.locator("#calls tbody tr", has_text="openai/gpt-4o-mini")
    expect(row).to_have_count(1)
    expect(row).to_contain_text("1 / 24")
    expect(row.get_by_role("link", name=trace_id)).to_have_attribute(
        "href", JAEGER.replace("{trace_id}", trace_id)
    )
    shot(page, "3-call-log")


def ask_in_the_playground(page: Page, model: str, message: str) -> None:
    open_page(page, "Playground")
    page.get_by_label("Model").fill(model)
    page.get_by_label("Message").fill(message)
    page.get_by_role("button", name="Send").click()


def test_an_alias_is_added_called_in_the_playground_and_deleted(
    platform: RunningPlatform, page: Page, fake_openai: FakeOpenAI
) -> None:
    register(page, platform.gateway, unique_email("aliases"), MEMBER_PASSWORD)
    open_page(page, "Providers")
    credential = page.get_by_role("form", name="Add a credential")
    credential.get_by_label("Provider", exact=True).select_option("openai")
    credential.get_by_label("Name").fill("fake")
    credential.get_by_label("API key").fill(PROVIDER_KEY)
    credential.get_by_label("Base URL").fill(fake_openai.url)
    credential.get_by_role("button", name="Add credential").click()
    expect(page.locator("#credentials tbody tr", has_text="fake")).to_have_count(1)

    add = page.get_by_role("form", name="Add an alias")
    aliases = page.locator("#aliases tbody tr", has_text="fast")
    # A target without its provider: the API's words, and nothing added.
    add.get_by_label("Alias").fill("fast")
    add.get_by_label("Targets").fill("gpt-4o-mini")
    add.get_by_role("button", name="Add alias").click()
    expect(add.get_by_role("alert")).to_contain_text("targets.0.model")
    expect(aliases).to_have_count(0)
    add.get_by_label("Targets").fill("openai/gpt-4o-mini, openai/gpt-4o")
    add.get_by_role("button", name="Add alias").click()
    expect(aliases).to_contain_text("openai/gpt-4o-mini → openai/gpt-4o")
    expect(aliases).to_contain_text("ordered")
    shot(page, "1-alias-added")

    ask_in_the_playground(page, "fast", "words:3")
    expect(page.locator("#answer")).to_have_text("lorem ipsum dolor", timeout=30_000)
    shot(page, "2-alias-answered")

    open_page(page, "Providers")
    aliases.get_by_role("button", name="Delete fast").click()
    page.get_by_role("button", name="Confirm delete fast").click()
    expect(aliases).to_have_count(0)
    # Gone for the API too: the playground's next call to it is refused, in its words.
    ask_in_the_playground(page, "fast", "words:3")
    expect(page.get_by_role("alert")).to_contain_text("fast")
    shot(page, "3-alias-deleted")


def test_a_rate_limited_chat_shows_the_detail_and_when_to_retry(
    platform: RunningPlatform, page: Page, fake_openai: FakeOpenAI, login: Login
) -> None:
    email = unique_email("limited")
    with Member(platform, email) as member:
        member.credential("openai", "local", fake_openai.url, PROVIDER_KEY)
        user_id = member.browser.get("/auth/me").json()["id"]
    admin = login(ADMIN_EMAIL, ADMIN_PASSWORD)
    assert admin.patch(f"/auth/users/{user_id}", json={"rpm_limit": 1}).status_code == 200
    page.goto(console_url(platform.gateway, "/playground"))
    sign_in(page, email, MEMBER_PASSWORD)
    page.get_by_label("Model").fill("openai/gpt-4o-mini")
    page.get_by_label("Message").fill("words:2")
    page.get_by_role("button", name="Send").click()
    expect(page.locator("#answer")).to_have_text("lorem ipsum")
    page.get_by_label("Message").fill("words:3")
    page.get_by_role("button", name="Send").click()
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text("rate limit of 1 requests a minute")  # the API's detail
    expect(alert).to_contain_text("You can try again at")  # from Retry-After
    shot(page, "1-rate-limited")


def test_the_usage_charts_show_the_numbers_of_v1_usage(
    platform: RunningPlatform, page: Page, fake_openai: FakeOpenAI
) -> None:
    email = unique_email("usage")
    with Member(platform, email) as member:
        member.credential("openai", "local", fake_openai.url, PROVIDER_KEY)
        for n in (3, 5):
            member.sdk.chat.completions.create(
                model="openai/gpt-4o-mini", messages=[{"role": "user", "content": f"words:{n}"}]
            )
        # Calls of earlier days, reported as a caller that records its own would.
        today = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0)
        events = [
            {"id": str(uuid.uuid4()), "occurred_at": (today - timedelta(days=days)).isoformat(),
             "provider": "openai", "model": "openai/gpt-4o", "status": status,
             "prompt_tokens": 100, "completion_tokens": 20 * days, "cost_usd": cost,
             "latency_ms": 300.0}
            for days, status, cost in [(1, "ok", "0.0125"), (1, "ok", "0.0031"), (3, "ok", "0.2"),
                                       (3, "rate_limited", "0"), (5, "ok", "0.07")]
        ]  # fmt: skip
        assert member.browser.post("/v1/events", json={"events": events}).status_code == 200
        member.calls(7)

        page.goto(console_url(platform.gateway, "/usage"))
        sign_in(page, email, MEMBER_PASSWORD)
        expect(page.get_by_role("heading", name="Usage", level=1)).to_be_visible()
        expect(page.locator("#usage-totals")).to_have_attribute("data-requests", "7")
        shot(page, "1-usage-last-7-days")
        doc_screenshot(page, "console-usage")

        def compare() -> None:
            start = page.get_by_label("From (UTC day)").input_value()
            end = page.get_by_label("To (UTC day)").input_value()
            to = (datetime.fromisoformat(end) + timedelta(days=1)).strftime("%Y-%m-%d")
            usage = member.browser.get(
                "/v1/usage",
                params={"group_by": "day", "from": f"{start}T00:00:00Z", "to": f"{to}T00:00:00Z"},
            ).json()
            by_day = {g["key"]: g for g in usage["groups"]}
            cost, calls = bars(page, "chart-cost"), bars(page, "chart-calls")
            assert set(by_day) <= set(cost)
            assert set(cost) == set(calls)
            for day in cost:
                group = by_day.get(day)
                assert Decimal(cost[day]) == Decimal(group["cost_usd"] if group else 0), day
                assert int(calls[day]) == (group["requests"] if group else 0), day
            expect(page.locator("#usage-totals")).to_have_attribute(
                "data-requests", str(usage["totals"]["requests"])
            )

        compare()
        # A narrower range: from two days ago, so the older reported calls fall out.
        page.get_by_label("From (UTC day)").fill((today - timedelta(days=2)).strftime("%Y-%m-%d"))
        expect(page.locator("#usage-totals")).to_have_attribute("data-requests", "4")
        expect(page.locator("#chart-cost rect[data-day]")).to_have_count(3)
        compare()
        shot(page, "2-usage-last-3-days")

        page.get_by_label("Group by").select_option("model")
        table = page.locator("#usage-table")
        expect(table.locator("tr", has_text="openai/gpt-4o-mini")).to_contain_text("2")
        # Grouping by user is for roles that read everyone's usage: not offered here.
        options = page.get_by_label("Group by").locator("option").all_inner_texts()
        assert "user" not in options
        assert "key" in options


def test_the_call_log_filters_and_pages_with_the_api_cursor(
    platform: RunningPlatform, page: Page
) -> None:
    page.route("**/console/config.json", lambda route: route.fulfill(json={"trace_url": JAEGER}))
    email = unique_email("calls")
    now = datetime.now(UTC)
    events = [
        {"id": str(uuid.uuid4()), "occurred_at": (now - timedelta(minutes=n)).isoformat(),
         "provider": "openai", "model": "openai/gpt-4o-mini",
         "status": "error" if n % 10 == 0 else "ok", "prompt_tokens": n,
         "completion_tokens": 1, "cost_usd": "0.001", "latency_ms": 100.0,
         "trace_id": uuid.uuid4().hex}
        for n in range(1, 61)
    ]  # fmt: skip
    with Member(platform, email) as member:
        assert member.browser.post("/v1/events", json={"events": events}).status_code == 200
        member.calls(60)
    page.goto(console_url(platform.gateway, "/calls"))
    sign_in(page, email, MEMBER_PASSWORD)
    rows = page.locator("#calls tbody tr")
    expect(rows).to_have_count(50)  # the newest page
    expect(rows.first.get_by_role("link")).to_have_attribute(
        "href", JAEGER.replace("{trace_id}", str(events[0]["trace_id"]))
    )
    shot(page, "1-newest-page")
    page.get_by_role("button", name="Next page").click()
    expect(rows).to_have_count(10)
    expect(rows.last).to_contain_text("60 / 1")  # the oldest call
    expect(page.get_by_role("button", name="Next page")).to_have_count(0)
    page.get_by_role("button", name="Previous page").click()
    expect(rows).to_have_count(50)
    page.get_by_label("Status").fill("error")
    page.get_by_role("button", name="Apply filters").click()
    expect(rows).to_have_count(6)
    for text in rows.all_inner_texts():
        assert "error" in text
    shot(page, "2-filtered")


def test_a_viewer_sees_no_write_buttons_and_a_forged_write_is_refused(
    platform: RunningPlatform, page: Page
) -> None:
    email = unique_email("viewer")
    # The admin makes them a viewer on the Admin page (users are listed oldest first).
    registered_then_admin(platform, page, email)
    row = page.locator(f'#users tr[data-user="{email}"]')
    first = page.locator("#users tbody tr").first
    expect(first).to_be_visible()
    while not row.count():
        shown = first.get_attribute("data-user")
        pager = page.get_by_role("group", name="Pages of users")
        pager.get_by_role("button", name="Next page").click()
        expect(first).not_to_have_attribute("data-user", str(shown))
    row.get_by_label(f"Role of {email}").select_option("viewer")
    row.get_by_role("button", name=f"Save {email}").click()
    expect(row.get_by_role("button", name=f"Save {email}")).to_be_disabled()
    shot(page, "0-admin-makes-a-viewer")
    page.get_by_role("navigation", name="Main").get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()

    page.goto(console_url(platform.gateway, "/playground"))
    sign_in(page, email, MEMBER_PASSWORD)
    expect(page.get_by_role("heading", name="Playground")).to_be_visible()
    expect(page.get_by_text("Your role cannot call models")).to_be_visible()
    expect(page.get_by_role("button", name="Send")).to_have_count(0)
    shot(page, "1-playground-read-only")
    open_page(page, "Providers")
    for name in ("Add credential", "Add alias", "Delete"):
        expect(page.get_by_role("button", name=name)).to_have_count(0)
    open_page(page, "Collections")
    for name in ("Create collection", "Add document", "Delete"):
        expect(page.get_by_role("button", name=name)).to_have_count(0)
    shot(page, "2-collections-read-only")
    open_page(page, "Teams", heading="Administration")
    expect(page.get_by_role("button", name="Create team")).to_have_count(0)
    nav = page.get_by_role("navigation", name="Main")
    expect(nav.get_by_role("link", name="Admin")).to_have_count(0)
    # A viewer's role holds api_keys:manage (keys with the viewer's read-only rights), so
    # the keys page offers that one write, as the API allows it.
    open_page(page, "API keys")
    expect(page.get_by_role("button", name="Create key")).to_be_visible()
    shot(page, "3-keys")

    # A write from the page's own origin, with the session cookie but without the CSRF
    # header, is refused; the same with the header goes through.
    forged = page.evaluate(
        """async () => {
            const r = await fetch("/auth/api-keys", {method: "POST", credentials: "same-origin",
                headers: {"Content-Type": "application/json"},
                body: JSON.stringify({name: "forged"})});
            return {status: r.status, type: r.headers.get("content-type"), body: await r.json()};
        }"""
    )
    assert forged["status"] == 403, forged
    assert forged["type"].startswith("application/problem+json")
    assert "CSRF" in forged["body"]["detail"]
    honest = page.evaluate(
        """async () => {
            const token = document.cookie.split("; ")
                .find((c) => c.startsWith("csrf_token=")).slice(11);
            const r = await fetch("/auth/api-keys", {method: "POST", credentials: "same-origin",
                headers: {"Content-Type": "application/json", "X-CSRF-Token": token},
                body: JSON.stringify({name: "honest"})});
            return r.status;
        }"""
    )
    assert honest == 201


def assert_nothing_private(page: Page, email: str) -> None:
    content = page.content()
    assert email not in content
    assert "private-key-name" not in content


def test_an_admin_sets_a_team_budget_adds_an_owner_and_reads_the_audit_log(
    platform: RunningPlatform, page: Page
) -> None:
    email = unique_email("owner")
    user_id = registered_then_admin(platform, page, email)
    team = f"team-{uuid.uuid4().hex[:6]}"
    page.get_by_label("New team name").fill(team)
    page.get_by_role("button", name="Create team").click()
    row = page.locator("#teams tbody tr", has_text=team)
    row.get_by_label(f"Budget of {team} (USD)").fill("25")
    row.get_by_label(f"Budget period of {team}").select_option("week")
    row.get_by_role("button", name="Set budget").click()
    expect(row).to_contain_text("$25.00 / week")
    row.get_by_role("button", name=f"Members of {team}").click()
    members = page.get_by_role("region", name=f"Members of {team}")
    expect(members).to_contain_text("No members yet.")
    members.get_by_label("User id").fill(user_id)
    members.get_by_label("Team role").select_option("owner")
    members.get_by_role("button", name="Add member").click()
    expect(members.locator("tbody tr", has_text=email)).to_contain_text("owner")
    shot(page, "1-team-with-budget-and-owner")
    page.get_by_label("Action", exact=True).fill("team.member_set")
    page.get_by_role("button", name="Filter").click()
    audit = page.locator("#audit tbody tr")
    expect(audit.first).to_contain_text("team.member_set")
    for text in audit.all_inner_texts():
        assert "team.member_set" in text
    shot(page, "2-audit-log")


def test_after_sign_out_the_back_button_shows_no_private_data(
    platform: RunningPlatform, page: Page
) -> None:
    email = unique_email("leaver")
    register(page, platform.gateway, email, MEMBER_PASSWORD)
    form = page.get_by_role("form", name="Create a key")
    form.get_by_label("Name").fill("private-key-name")
    form.get_by_role("button", name="Create key").click()
    page.get_by_role("button", name="Done").click()
    expect(page.locator("#keys")).to_contain_text("private-key-name")
    open_page(page, "Account", heading="Your account")
    expect(page.get_by_role("main").get_by_text(email)).to_be_visible()
    open_page(page, "API keys")
    expect(page.locator("#keys")).to_contain_text("private-key-name")
    shot(page, "1-signed-in")

    page.get_by_role("navigation", name="Main").get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    shot(page, "2-signed-out")
    for _ in range(2):  # back to the account page, then to the keys page before it
        page.go_back()
        expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
        assert_nothing_private(page, email)
    shot(page, "3-back-button")
    # Away to another document and back (the back/forward cache): still nothing private.
    page.goto(f"{platform.gateway}/healthz")
    page.go_back()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    assert_nothing_private(page, email)
    with httpx.Client(base_url=platform.gateway) as client:
        for name, value in [(c["name"], c["value"]) for c in page.context.cookies()]:
            client.cookies.set(name, value)
        assert client.get("/auth/me").status_code == 401  # the session itself is over


def test_a_session_revoked_elsewhere_returns_to_sign_in_and_back_to_the_page(
    platform: RunningPlatform, page: Page, chromium: Browser
) -> None:
    email = unique_email("revoked")
    register(page, platform.gateway, email, MEMBER_PASSWORD)
    open_page(page, "Call log")
    shot(page, "1-call-log")
    # Another browser signs in as the same user and revokes the first one's session.
    other = chromium.new_context(viewport={"width": 1280, "height": 800})
    try:
        elsewhere = other.new_page()
        # shot()'s folder, the test's own
        elsewhere.shots = page.shots  # type: ignore[attr-defined]
        elsewhere.goto(console_url(platform.gateway, "/account"))
        sign_in(elsewhere, email, MEMBER_PASSWORD)
        sessions = elsewhere.locator("#sessions tbody tr")
        expect(sessions).to_have_count(2)
        expect(sessions.filter(has_text="this one")).to_have_count(1)
        elsewhere.get_by_role("button", name=re.compile("^Revoke session")).click()
        elsewhere.get_by_role("button", name=re.compile("^Confirm revoke session")).click()
        expect(sessions).to_have_count(1)
        shot(elsewhere, "2-revoked-from-another-browser")
    finally:
        other.close()

    page.get_by_role("navigation", name="Main").get_by_role("link", name="Usage").click()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    assert "next=%2Fusage" in page.url
    shot(page, "3-back-to-sign-in")
    sign_in(page, email, MEMBER_PASSWORD)
    expect(page.get_by_role("heading", name="Usage", level=1)).to_be_visible()
    assert page.url.endswith("#/usage")
    shot(page, "4-back-on-the-page")


def test_the_console_at_390_pixels_wide_keeps_its_navigation_reachable(
    platform: RunningPlatform, page: Page
) -> None:
    page.set_viewport_size({"width": 390, "height": 844})
    register(page, platform.gateway, unique_email("phone"), MEMBER_PASSWORD)
    nav_link = page.get_by_role("navigation", name="Main").get_by_role("link", name="Usage")
    expect(nav_link).to_be_hidden()
    menu = page.get_by_role("button", name="Menu")
    expect(menu).to_have_attribute("aria-expanded", "false")
    menu.click()
    expect(nav_link).to_be_visible()
    shot(page, "1-menu-open")
    nav_link.click()
    expect(page.get_by_role("heading", name="Usage", level=1)).to_be_visible()
    expect(nav_link).to_be_hidden()  # the menu folds again on the new page
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    shot(page, "2-usage-on-a-phone")
    # By keyboard, from the top of the page: Tab reaches the Menu button, Enter opens it.
    page.reload()
    expect(menu).to_be_visible()
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")
    expect(menu).to_be_focused()
    page.keyboard.press("Enter")
    expect(nav_link).to_be_visible()


def test_change_the_password_and_sign_in_with_the_new_one(
    platform: RunningPlatform, page: Page
) -> None:
    email = unique_email("password")
    register(page, platform.gateway, email, MEMBER_PASSWORD)
    open_page(page, "Account", "Your account")
    current = page.get_by_label("Current password")
    fresh = page.get_by_label("New password")
    new_password = "another-long-e2e-Passphrase-7"
    # A wrong current password: the API's own words, nothing changed.
    current.fill("not-my-password-at-all-1")
    fresh.fill(new_password)
    page.get_by_role("button", name="Change password").click()
    expect(page.get_by_role("alert")).to_contain_text("password")
    current.fill(MEMBER_PASSWORD)
    fresh.fill(new_password)
    page.get_by_role("button", name="Change password").click()
    expect(page.get_by_role("status")).to_contain_text("Password changed")
    shot(page, "1-password-changed")
    # This session goes on; the old password no longer signs in, the new one does.
    open_page(page, "Usage")
    old = httpx.post(f"{platform.gateway}/auth/login",
                     json={"email": email, "password": MEMBER_PASSWORD})  # fmt: skip
    assert old.status_code == 401, old.text
    page.get_by_role("navigation", name="Main").get_by_role("button", name="Sign out").click()
    page.goto(console_url(platform.gateway, "/account"))
    sign_in(page, email, new_password)
    expect(page.get_by_role("heading", name="Your account", level=1)).to_be_visible()


def test_a_collection_is_created_filled_and_queried_with_a_metadata_filter(
    platform: RunningPlatform, page: Page
) -> None:
    register(page, platform.gateway, unique_email("collections"), MEMBER_PASSWORD)
    open_page(page, "Collections")
    create = page.get_by_role("form", name="Create a collection")
    create.get_by_label("Name").fill("notes")
    expect(create.get_by_label("Embedding model")).to_have_value("local/all-MiniLM-L6-v2")
    create.get_by_role("button", name="Create collection").click()
    row = page.locator("#collections tbody tr", has_text="notes")
    expect(row).to_contain_text("0", timeout=120_000)  # the local model may still load
    row.get_by_role("button", name="Open").click()
    detail = page.get_by_role("region", name="Collection notes")
    documents = [
        ("cat-fr", "le chat dort sur le canapé", '{"lang": "fr"}'),
        ("cat-en", "the cat sleeps on the sofa", '{"lang": "en"}'),
        ("stocks-en", "stock prices fell sharply today", '{"lang": "en"}'),
    ]
    for count, (doc_id, text, metadata) in enumerate(documents, start=1):
        detail.get_by_label("Document id (optional)").fill(doc_id)
        detail.get_by_label("Metadata (JSON, optional)").fill(metadata)
        detail.get_by_label("Document text").fill(text)
        detail.get_by_role("button", name="Add document").click()
        expect(detail.get_by_role("heading", level=2)).to_contain_text(f"({count} documents)")
    expect(row).to_contain_text("3")
    query = detail.get_by_label("Query text")
    query.fill("a cat sleeping")
    detail.get_by_role("button", name="Search").click()
    matches = detail.locator("#matches tbody tr")
    expect(matches).to_have_count(3)
    expect(matches.first).to_contain_text("cat-")
    # Only the English documents: the filter is the API's, the nearest first.
    detail.get_by_label("Metadata filter (JSON)").fill('{"lang": "en"}')
    detail.get_by_role("button", name="Search").click()
    expect(matches).to_have_count(2)
    expect(matches.first).to_contain_text("cat-en")
    expect(matches.nth(1)).to_contain_text("stocks-en")
    shot(page, "1-filtered-query")
    # Not JSON: said so by the page; an operator the API refuses: the API's detail.
    detail.get_by_label("Metadata filter (JSON)").fill("{lang: en")
    detail.get_by_role("button", name="Search").click()
    expect(detail.get_by_role("alert")).to_contain_text("not valid JSON")
    detail.get_by_label("Metadata filter (JSON)").fill('{"lang": {"$regex": "e"}}')
    detail.get_by_role("button", name="Search").click()
    expect(detail.get_by_role("alert")).to_contain_text("$regex")
