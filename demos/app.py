"""The one mmkit demo: a Gradio app with a tab per family whose checkpoint was given.
Each family's module renders its tab (`classifier_tab`, `zero_shot_tab`, `speech_tab`, ...);
`mmkit demo` (mmkit/cli/demo.py) loads the checkpoints and passes the renderers here.
"""
from __future__ import annotations

from typing import Callable

import gradio as gr


def build_app(tabs: dict[str, Callable[[], None]], title: str = "mmkit") -> gr.Blocks:
    """One Blocks app rendering `tabs` (family name -> function that renders its `gr.Tab`) in order."""
    if not tabs:
        raise ValueError("no demo tab to show")
    with gr.Blocks(title=title) as app:
        gr.Markdown(f"## {title}: " + ", ".join(tabs))
        for render in tabs.values():
            render()
    return app
