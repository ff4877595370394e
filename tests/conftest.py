"""Shared test set-up: offline environment, and headless Chromium for Gradio demos.

Browser tests use Debian's /usr/bin/chromium through Playwright's sync API (no
Playwright-downloaded browser); they skip only where that binary is absent.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

# No test may touch the network: hubs resolve from local caches/files only.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
# Gradio and the browser talk to 127.0.0.1; a configured HTTP proxy must not intercept that.
for _var in ("NO_PROXY", "no_proxy"):
    os.environ[_var] = ",".join(filter(None, [os.environ.get(_var), "127.0.0.1", "localhost"]))

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
]
BROWSER_TIMEOUT_MS = 60_000
# Pages may load only what the local Gradio server serves (plus data:/blob: URLs,
# which never reach the network); fonts/CDNs elsewhere are aborted.
_LOCAL_URL = re.compile(r"^(https?|wss?)://(127\.0\.0\.1|localhost)(:\d+)?/")


def pytest_collection_modifyitems(items):
    # Any test that drives a browser gets the `browser` marker, declared or not.
    for item in items:
        if {"browser", "page"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.browser)


@pytest.fixture(scope="session")
def browser():
    """Headless Debian Chromium, shared by the whole session."""
    if not CHROMIUM.exists():
        pytest.skip(f"browser tests need Debian chromium at {CHROMIUM} (scripts/setup.sh installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    """A fresh context + page per test, offline except for localhost."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(BROWSER_TIMEOUT_MS)
    context.route(lambda url: not _LOCAL_URL.match(url), lambda route: route.abort())
    page = context.new_page()
    yield page
    context.close()


@pytest.fixture
def serve_blocks():
    """Start gradio Blocks on a free local port: `url = serve_blocks(blocks)`; stopped after the test."""
    from mmkit.demo_harness import launch

    closers = []

    def _serve(blocks):
        url, close = launch(blocks)
        closers.append(close)
        return url

    yield _serve
    for close in reversed(closers):
        close()
