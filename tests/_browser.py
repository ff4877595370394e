"""Playwright helpers for driving Gradio 6 demos in tests (see tests/conftest.py).

Selectors are Gradio's own data-testid attributes; scope them with a component's
`elem_id` (rendered as the block's DOM id) when an app has more than one of a kind.
"""

from __future__ import annotations

from pathlib import Path

from playwright.sync_api import Locator, Page, expect

TIMEOUT_MS = 60_000
# An uploaded file is previewed from the server's upload cache, never from a data: URL.
UPLOADED_PREVIEW = 'img[src*="/gradio_api/file="]'


def open_app(page: Page, url: str) -> None:
    """Load a Gradio app and wait until its components have rendered."""
    page.goto(url, wait_until="domcontentloaded")
    expect(page.locator(".gradio-container")).to_be_visible(timeout=TIMEOUT_MS)


def upload_image(scope: Page | Locator, path: str | Path) -> None:
    """Upload `path` through the (first) gr.Image in `scope` and wait for the server copy.

    The <input type=file> is hidden (display:none); set_input_files works on it anyway.
    Waiting for the preview matters: a click before the upload finishes sends None.
    """
    scope.locator('input[type="file"]').first.set_input_files(str(path))
    expect(scope.locator(UPLOADED_PREVIEW).first).to_be_visible(timeout=TIMEOUT_MS)


def label_top_class(scope: Page | Locator) -> Locator:
    """The heading of a gr.Label that shows its top class."""
    return scope.locator('[data-testid="label-output-value"]').first


def label_confidence(scope: Page | Locator, class_name: str) -> Locator:
    """A gr.Label's row for one class; its <meter> carries the confidence as `value`."""
    return scope.locator(f'[data-testid="{class_name}-confidence-set"] meter')
