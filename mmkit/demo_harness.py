"""Run Gradio apps in the background (browser tests) or the foreground (`mmkit demo`).

Both entry points keep Gradio local and offline: no share tunnel, no analytics or
version check, no server-side rendering (that would start a Node process), no MCP server.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Callable

# Read by gradio when a Blocks is built; set before any demo module builds one.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402  (must follow the environment default above)

log = logging.getLogger(__name__)

_LAUNCH_KWARGS = dict(share=False, inbrowser=False, inline=False, ssr_mode=False, mcp_server=False)


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def launch(
    blocks: gr.Blocks, host: str = "127.0.0.1", port: int | None = None
) -> tuple[str, Callable[[], None]]:
    """Start `blocks` in a background thread and return once it answers HTTP.

    Args:
        blocks: the app to serve.
        host: interface to bind.
        port: port to bind; None picks a free one (the OS's choice, so parallel
            test sessions and a demo on 7860 do not collide).

    Returns:
        (url, close): the app's local URL and a function that stops the server.
    """
    blocks.analytics_enabled = False
    # A free port can be taken between probing and binding: retry with a new one.
    for attempt in range(3):
        try:
            _, url, _ = blocks.launch(
                server_name=host,
                server_port=port or _free_port(host),
                prevent_thread_lock=True,
                quiet=True,
                **_LAUNCH_KWARGS,
            )
            break
        except OSError:
            if port is not None or attempt == 2:
                raise
    log.info("Gradio app running at %s", url)
    return url, lambda: blocks.close(verbose=False)


def serve(blocks: gr.Blocks, host: str = "127.0.0.1", port: int = 7860) -> None:
    """Serve `blocks` at http://host:port until interrupted (Ctrl-C)."""
    blocks.analytics_enabled = False
    blocks.launch(server_name=host, server_port=port, prevent_thread_lock=True, quiet=False, **_LAUNCH_KWARGS)
    blocks.block_thread()  # closes the server on KeyboardInterrupt
