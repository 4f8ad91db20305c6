"""A real browser for the console's tests: Debian's Chromium (`make test` installs it with
apt-get; Playwright's own browser download needs the internet) driven by Playwright.

Fixtures (imported by tests/e2e/conftest.py): `chromium`, a browser per test, and
`page`, a fresh context (no cookies) and page in it that fails the test on any
Content-Security-Policy violation or uncaught error. `shot(page, name)` saves a
screenshot under the test's output directory; `off_loop` runs a coroutine from a browser
test. `requests_of(page)` lists every URL the page's context asks for (to show that
nothing leaves the gateway); `watch(page)` collects what the `page` fixture checks, and
`csp_violations` picks the violations out of it."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, Request, sync_playwright

T = TypeVar("T")

# Where Debian puts it; CHROMIUM overrides (another distribution's path).
CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
# This machine has no internet: without these, Chromium's background services try to
# reach Google at every start, many connections at a time.
FLAGS = [
    "--no-sandbox",  # root in CI
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def chromium() -> Iterator[Browser]:
    """A browser for one test. Not shared by the session: Playwright's sync API keeps an
    event loop running in this thread while it is started, and every later test calling
    asyncio.run() would fail ("cannot be called from a running event loop"). Within a
    browser test, run a coroutine in a thread of its own (`off_loop`)."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"no Chromium at {CHROMIUM}: `make browser` installs Debian's (apt-get)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        yield browser
        browser.close()


def off_loop(coroutine: Coroutine[Any, Any, T]) -> T:
    """asyncio.run(coroutine) from a browser test (in a thread: Playwright's loop runs in
    this one)."""
    with ThreadPoolExecutor(1) as thread:
        return thread.submit(asyncio.run, coroutine).result()


def watch(page: Page) -> list[str]:
    """The page's console errors and uncaught exceptions, as they come. Chromium reports a
    Content-Security-Policy violation as a console error ("Refused to execute inline script
    because it violates the following Content Security Policy directive: ...")."""
    problems: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            problems.append(message.text)

    page.on("console", on_console)
    page.on("pageerror", lambda error: problems.append(str(error)))
    return problems


def csp_violations(problems: list[str]) -> list[str]:
    return [text for text in problems if "Content Security Policy" in text]


def requests_of(page: Page) -> list[str]:
    """Every URL the page's browser context requests from now on, in order (its workers'
    and other pages' included)."""
    urls: list[str] = []

    def on_request(request: Request) -> None:
        urls.append(request.url)

    page.context.on("request", on_request)
    return urls


@pytest.fixture
def page(chromium: Browser, tmp_path: Path) -> Iterator[Page]:
    context = chromium.new_context(viewport={"width": 1280, "height": 800})
    opened = context.new_page()
    problems = watch(opened)
    opened.shots = tmp_path / "screenshots"  # type: ignore[attr-defined]
    yield opened
    context.close()
    violations = csp_violations(problems)
    assert not violations, violations


def shot(page: Page, name: str) -> Path:
    """A full-page screenshot, `<test's tmp dir>/screenshots/<name>.png`."""
    path: Path = page.shots / f"{name}.png"  # type: ignore[attr-defined]
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path), full_page=True)
    return path
