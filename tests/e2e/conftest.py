"""Browser tests: Debian's headless Chromium driven by Playwright's sync API.

``browser`` (session) is one Chromium; ``page`` (function) is a tab in a fresh context, so
cookies never leak between tests; ``demo_page`` drives the demo page in it like a person
and keeps the page's uncaught errors and console errors (CSP or CORS refusals among them).
``spa_server`` serves the demo page's files from a second loopback origin, as an SPA author
would deploy them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.e2e.pages import DemoPage, SpaServer

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
# Playwright's assertions wait 5 s by default; a login crosses three servers.
expect.set_options(timeout=15_000)


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: the browser tests drive Debian's Chromium, which "
            "`make test` installs (apt-get install chromium)",
            pytrace=False,
        )
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context()
    context.set_default_timeout(15_000)
    try:
        yield context.new_page()
    finally:
        context.close()


@pytest.fixture
def demo_page(page: Page) -> DemoPage:
    return DemoPage(page)


@pytest.fixture
def spa_server() -> Iterator[Callable[[], SpaServer]]:
    started: list[SpaServer] = []

    def start() -> SpaServer:
        server = SpaServer()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
