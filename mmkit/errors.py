"""Errors every layer raises alike (torch-free, below them all, as `mmkit.limits`)."""
from __future__ import annotations

import errno
import re
import sys
from typing import Any, Callable

MAX_QUOTED_CHARS = 80  # of a value (a prompt, a caption, a manifest row) quoted in a message or log line
FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # what only writing meets: a full disk, a quota, a file size limit


def print_error(prog: str, problem: object) -> None:
    """The one line a tool ends with on a user's mistake, a bad input or an output it could not write (exit code
    2 or 1): "<prog>: error: <problem>" on stderr, as argparse's usage errors. Not for an interruption, a summary
    or a bad row skipped (the run goes on): those lines carry no "error:"."""
    print(f"{prog}: error: {problem}", file=sys.stderr)


def quoted(value: Any, limit: int = MAX_QUOTED_CHARS) -> str:
    """`value` as a message or log line quotes it: its repr, cut to `limit` characters with its length told (a
    prompt of megabytes made a warning of megabytes). Here, below every layer, so that all of them quote alike."""
    shown = repr(value)
    if len(shown) <= limit:
        return shown
    size = len(value) if isinstance(value, str) else len(shown)
    return f"{shown[:limit - 3]}... ({size:,} characters{'' if isinstance(value, str) else ' in all'})"


def in_context(e: BaseException | None, wanted: Callable[[BaseException], bool]) -> BaseException | None:
    """The first of `e` and the exceptions behind it (each one's `__cause__`, else the one it was raised while
    handling, `__context__`; in order) for which `wanted` is true, else None: what a failure raised while
    unwinding another (a file's close after a full disk, a launcher's lost connection after Ctrl-C) or a
    wrapper (jsonargparse's, around a class's own ValueError) hides."""
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if wanted(e):
            return e
        e = e.__cause__ or e.__context__
    return None


def out_of_memory(e: BaseException) -> str | None:
    """"out of memory (...)" where `e` is an allocation that failed (Python's MemoryError, torch's CPU allocator's
    RuntimeError, CUDA's OutOfMemoryError), with the size asked for where it says; None otherwise."""
    text = str(e)
    if not (isinstance(e, MemoryError) or "can't allocate memory" in text or "out of memory" in text.lower()):
        return None
    asked = re.search(r"tried to allocate (\d+(?:\.\d+)?) ?(bytes|[KMGT]i?B)", text, re.IGNORECASE)
    if asked is None:
        return "out of memory"
    size, unit = float(asked.group(1)), asked.group(2)
    if unit == "bytes":
        size, unit = (size / 2**30, "GiB") if size >= 2**30 else (size / 2**20, "MiB")
    return f"out of memory (tried to allocate {size:,.1f} {unit})"


class WriteFailed(OSError):
    """Writing an output failed mid-run (a full disk or quota, an I/O error): one line naming the file
    and why, where the bare OSError ("[Errno 28] No space left on device") named none."""

    @classmethod
    def of(cls, what: str, e: OSError | str, after: str = "") -> "WriteFailed":
        """"cannot WHAT: REASON" (+ `after`, e.g. "; nothing was written"; `headline` is the message without it, for
        a caller that says itself what was written), its `strerror` the reason alone, as callers that name the file
        themselves show it (`subtitles.write_outputs`); no errno, so that it is not taken for the OSError of a
        write it wraps again (`atomic_path`)."""
        reason = e if isinstance(e, str) else e.strerror or str(e)
        error = cls(f"cannot {what}: {reason}{after}")
        error.strerror, error.headline = reason, f"cannot {what}: {reason}"
        return error
