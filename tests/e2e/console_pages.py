"""What the console's browser journeys do on its pages, as a user would (labels and
button names, not CSS classes): register, sign in, go to a page, read the usage charts."""

from __future__ import annotations

import os
from pathlib import Path

from playwright.sync_api import Page, expect

# Where the README's screenshots live; the journeys write them only when asked
# (CONSOLE_DOC_SCREENSHOTS=1), so that a test run leaves the tree as it was.
DOC_IMAGES = Path(__file__).resolve().parents[2] / "docs" / "images"


def console_url(gateway: str, route: str = "/") -> str:
    return f"{gateway}/console/#{route}"


def register(page: Page, gateway: str, email: str, password: str) -> None:
    """Registers through the form; the console signs the new user in."""
    page.goto(console_url(gateway, "/register"))
    page.get_by_label("Email").fill(email)
    page.get_by_label("Name").fill(email.split("@")[0])
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Register and sign in").click()
    expect(page.get_by_role("heading", name="API keys", level=1)).to_be_visible()


def sign_in(page: Page, email: str, password: str) -> None:
    """Signs in on the sign-in form the page shows, by keyboard alone."""
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    page.get_by_label("Email").focus()
    page.keyboard.type(email)
    page.keyboard.press("Tab")
    page.keyboard.type(password)
    page.keyboard.press("Enter")
    nav = page.get_by_role("navigation", name="Main")
    expect(nav.get_by_role("button", name="Sign out")).to_be_attached()


def open_page(page: Page, label: str, heading: str | None = None) -> None:
    """Follows the main navigation's link (opening the Menu first on a narrow screen)."""
    nav = page.get_by_role("navigation", name="Main")
    menu = page.get_by_role("button", name="Menu")
    if menu.is_visible() and menu.get_attribute("aria-expanded") != "true":
        menu.click()
    nav.get_by_role("link", name=label, exact=True).click()
    expect(page.get_by_role("heading", name=heading or label, level=1)).to_be_visible()


def bars(page: Page, chart: str) -> dict[str, str]:
    """A usage chart's bars: UTC day -> the exact value the bar stands for."""
    rects = page.locator(f"#{chart} rect[data-day]")
    return {
        str(rect.get_attribute("data-day")): str(rect.get_attribute("data-value"))
        for rect in rects.all()
    }


def doc_screenshot(page: Page, name: str) -> None:
    """The viewport (1280x800), into docs/images/, when CONSOLE_DOC_SCREENSHOTS=1."""
    if os.environ.get("CONSOLE_DOC_SCREENSHOTS") == "1":
        DOC_IMAGES.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(DOC_IMAGES / f"{name}.png"))
