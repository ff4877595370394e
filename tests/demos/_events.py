"""What a demo's events do, read from Gradio's config as the browser reads it."""
from __future__ import annotations


def stop_cancels(app, stop_id: str, api_name: str) -> bool:
    """Whether clicking the button `stop_id` cancels the event behind `api_name` (Gradio's config, as the browser
    reads it)."""
    [stop] = [b._id for b in app.blocks.values() if getattr(b, "elem_id", None) == stop_id]
    [event] = [f._id for f in app.fns.values() if f.api_name == api_name]
    return any((stop, "click") in map(tuple, d["targets"]) and event in d["cancels"]
               for d in app.get_config_file()["dependencies"])
