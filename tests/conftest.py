"""Shared test set-up: offline environment, and headless Chromium for Gradio demos.

Browser tests use Debian's /usr/bin/chromium through Playwright's sync API (no
Playwright-downloaded browser); they skip only where that binary is absent.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

# `make test` runs the suite in two worker processes (pytest-xdist), one per core of the 2-core machines it is sized
# for: each worker, and every process a test starts, keeps to one intra-op thread, or the two workers' OpenMP
# threads would spin against each other (measured: two-thread workers ran slower than one serial process).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"

# No test may touch the network: hubs resolve from local caches/files only.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
# The decoding tools' packed weights (`mmkit.inference.packed`) for every layer, however small: the tests' tiny
# models then decode through them, as real-sized ones do (in this process and every one a test starts).
os.environ["MMKIT_PACKED_MIN_ELEMENTS"] = "0"
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


# The files that run longest start first, so that the two workers (which take whole files, `--dist loadfile`) end
# together rather than one of them running the AVX2 rerun alone at the end.
LONGEST_FIRST = ("tests/test_machine_kinds.py", "tests/test_gpu_check.py")


def pytest_configure(config):
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_logreport(report):
    """A worker sends its reports to the main process as UTF-8 (execnet): output that holds a non-UTF-8 file name
    (a surrogate escape, tests/test_odd_file_names.py) would crash the worker, so it goes as a backslash escape."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return

    def utf8(text: str) -> str:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")

    report.sections = [(utf8(title), utf8(content)) for title, content in report.sections]
    if report.longrepr is not None and str(report.longrepr) != utf8(str(report.longrepr)):
        report.longrepr = utf8(str(report.longrepr))


def pytest_collection_modifyitems(items):
    # Any test that drives a browser gets the `browser` marker, declared or not.
    for item in items:
        if {"browser", "page"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.browser)
    rank = {path: position for position, path in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))  # stable: the rest keep their order


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
