"""Run Gradio apps in the background (browser tests) or the foreground (`mmkit demo`).

Both entry points keep Gradio local and offline: no share tunnel, no analytics or
version check, no server-side rendering (that would start a Node process), no MCP server;
and they bound its disk use: uploads up to `MAX_FILE_SIZE`, its file cache emptied of old files.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import time
from typing import Callable

# Read by gradio when a Blocks is built; set before any demo module builds one.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402  (must follow the environment default above)

log = logging.getLogger(__name__)

# Disk use stays bounded whatever the traffic. Gradio refuses a larger upload (HTTP 413) before it is written
# to its cache: 200 MB is about 100 minutes of 16 kHz mono 16-bit WAV, far more than any image a tab reads.
# In bytes (Gradio's "200mb": 200 MiB), so that a tab can check what does not come through /upload (an image
# sent inline as a data: URL, `demos.classifier.image_path_input`) against the same number.
MAX_FILE_SIZE = 200 * 1024 * 1024
# Gradio's cache (/tmp/gradio: uploads, and every file or image a tab returns) keeps a file an hour, long
# enough to download a result; checked every 10 minutes, and emptied of this app's files when the server stops.
DELETE_CACHE = (600, 3600)  # (check every N seconds, delete files older than M seconds)

_LAUNCH_KWARGS = dict(share=False, inbrowser=False, inline=False, ssr_mode=False, mcp_server=False)


def _prepare(blocks: gr.Blocks) -> dict:
    """Settings every app gets, whoever built it; returns launch()'s keyword arguments."""
    blocks.analytics_enabled = False
    blocks.delete_cache = DELETE_CACHE  # a Blocks constructor argument, read when the server starts
    return dict(_LAUNCH_KWARGS, max_file_size=MAX_FILE_SIZE)


def server_name(host: str) -> str:
    """`host` as Gradio takes it: an IPv6 literal in brackets ("::1" -> "[::1]"), since Gradio writes its URL
    as host:port and reads the port back after the last colon; names and IPv4 addresses as they are."""
    bare = unbracketed(host)
    try:
        return f"[{bare}]" if ipaddress.ip_address(bare.split("%")[0]).version == 6 else host
    except ValueError:  # a name, not an address
        return host


def unbracketed(host: str) -> str:
    """`host` without the brackets of a URL's IPv6 literal ("[::1]" -> "::1"), as sockets take it."""
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def _free_port(host: str) -> int:
    family, kind, proto, _, address = socket.getaddrinfo(unbracketed(host), 0, type=socket.SOCK_STREAM)[0]
    with socket.socket(family, kind, proto) as s:
        s.bind(address)
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
    kwargs = _prepare(blocks)
    # A free port can be taken between probing and binding: retry with a new one.
    for attempt in range(3):
        try:
            _, url, _ = blocks.launch(
                server_name=server_name(host),
                server_port=port or _free_port(host),
                prevent_thread_lock=True,
                quiet=True,
                **kwargs,
            )
            break
        except OSError:
            if port is not None or attempt == 2:
                raise
    log.info("Gradio app running at %s", url)
    return url, lambda: blocks.close(verbose=False)


def serve(blocks: gr.Blocks, host: str = "127.0.0.1", port: int = 7860,
          on_start: Callable[[str], None] | None = None) -> None:
    """Serve `blocks` at http://host:port until the server stops or an interruption (KeyboardInterrupt: Ctrl-C,
    or a signal the caller raises as one) reaches this thread, starting included. The server is closed either
    way (its queue stopped, the port freed) and the interruption goes on to the caller, which reports it:
    Gradio's own wait (`Blocks.block_thread`) printed a line of its own and returned as if nothing had happened.
    Gradio launches quietly (its banner advised `share=True` in `launch()`, which a user of `mmkit demo` cannot
    set); `on_start` gets the app's URL once it answers, for the caller to tell."""
    kwargs = _prepare(blocks)
    # Gradio checks its own server with httpx as it starts; at INFO (where `mmkit` logs) each request was a line
    # before "Running on ...".
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        _, url, _ = blocks.launch(server_name=server_name(host), server_port=port, prevent_thread_lock=True,
                                  quiet=True, **kwargs)
        if on_start is not None:
            on_start(url)
        _wait(blocks)
    finally:
        blocks.close(verbose=False)


def _wait(blocks: gr.Blocks) -> None:
    while blocks.is_running:
        time.sleep(0.1)
