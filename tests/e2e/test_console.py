"""The web console (issue 23) in Debian's Chromium, through the gateway of `make run`."""

from __future__ import annotations

from playwright.sync_api import Page, expect

from .browser import shot
from .conftest import RunningPlatform


def test_the_console_is_served_by_the_gateway_and_renders(
    platform: RunningPlatform, page: Page
) -> None:
    page.goto(f"{platform.gateway}/console/")
    expect(page.get_by_role("heading", level=1)).to_contain_text("console")
    shot(page, "console")
