"""The one mmkit demo: a Gradio app with a tab per family whose checkpoint was given.
Each family's module renders its tab (`classifier_tab`, `zero_shot_tab`, `speech_tab`, ...);
`mmkit demo` (mmkit/cli/demo.py) loads the checkpoints and passes the renderers here.
"""
from __future__ import annotations

from typing import Callable

import gradio as gr

# Requests waiting in Gradio's queue, beyond which a new one is refused ("queue is full") at once: without a
# bound, a burst of requests (a script, a stuck client retrying) queued without end behind one model.
MAX_QUEUE = 16


def build_app(tabs: dict[str, Callable[[], None]], title: str = "mmkit") -> gr.Blocks:
    """One Blocks app rendering `tabs` (family name -> function that renders its `gr.Tab`) in order."""
    if not tabs:
        raise ValueError("no demo tab to show")
    with gr.Blocks(title=title) as app:
        gr.Markdown(f"## {title}: " + ", ".join(tabs))
        for render in tabs.values():
            render()
    app.queue(max_size=MAX_QUEUE)
    return app
