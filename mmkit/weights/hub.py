"""Hugging Face hub downloads that fail fast without a network: open_clip's pretrained tags, SigLIP's tokenizer,
timm's pretrained weights and repo ids (`hf.hub_snapshot`).

Offline, huggingface_hub retries each file with growing pauses: a tag or tokenizer that is not in the hub cache
failed after ~50 s of retry warnings. `hub_access` first checks that the hub's endpoint answers (one TCP connect,
3 s at most); when it does not, the download runs in the hub's offline mode, so what the hub cache holds still
loads at once and what it lacks fails at once, with the reason the hub is out of reach.
"""
from __future__ import annotations

import logging
import socket
import threading
import urllib.parse
import urllib.request
from contextlib import contextmanager
from typing import Iterator

PROBE_SECONDS = 3.0


def _probe(host: str, port: int, timeout: float) -> str | None:
    """None if `host:port` accepts a TCP connection within `timeout` seconds, else why not (name resolution
    included: it runs in a thread, as `socket.create_connection`'s timeout does not cover it)."""
    outcome: list[str | None] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome.append(None)
        except OSError as e:
            outcome.append(e.strerror or type(e).__name__)

    thread = threading.Thread(target=connect, name="mmkit-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    if not outcome:
        return f"no answer from {host} within {timeout:g} s"
    return f"connecting to {host}: {outcome[0]}" if outcome[0] else None


def hub_unreachable(timeout: float = PROBE_SECONDS) -> str | None:
    """Why the Hugging Face hub cannot be reached (`HF_HUB_OFFLINE`, or its endpoint, `HF_ENDPOINT`, refusing or
    not answering a connection), or None. Behind an HTTP proxy (the environment's, which the hub's client
    uses too) it is not probed: None, and the download itself finds out."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    url = urllib.parse.urlsplit(constants.ENDPOINT)
    host = url.hostname or ""
    proxies = urllib.request.getproxies()
    if (url.scheme in proxies or "all" in proxies) and not urllib.request.proxy_bypass(host):
        return None
    return _probe(host, url.port or (443 if url.scheme == "https" else 80), timeout)


class _DropRootRecords(logging.Filter):
    """Drops what is logged on the root logger itself (open_clip's `logging.error` of a failed download, which
    the caller reports in its own words)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return False


@contextmanager
def hub_access() -> Iterator[str | None]:
    """Around a hub download: yields None when the hub answers (the download runs as it would), else why it does
    not, with the hub's offline mode on inside (files of the hub cache load, others fail at once: the caller
    names the reason in its error). Records logged on the root logger inside are dropped either way."""
    from huggingface_hub import constants

    reason = hub_unreachable()
    before = constants.HF_HUB_OFFLINE
    quiet = _DropRootRecords()
    root = logging.getLogger()
    root.addFilter(quiet)
    constants.HF_HUB_OFFLINE = before or reason is not None
    try:
        yield reason
    finally:
        constants.HF_HUB_OFFLINE = before
        root.removeFilter(quiet)


def failure(error: BaseException, reason: str | None) -> str:
    """A failed download in a few words: with the hub out of reach, that the hub cache lacks it and why the hub
    could not be asked; else the library's own exception, on one line."""
    if reason is not None:
        return f"not in the Hugging Face hub cache, and the hub is out of reach: {reason}"
    return " ".join(f"{type(error).__name__}: {error}".split())
