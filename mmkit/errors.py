"""Errors every layer raises alike (torch-free, below them all, as `mmkit.limits`)."""
from __future__ import annotations

import errno

FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # what only writing meets: a full disk, a quota, a file size limit


class WriteFailed(OSError):
    """Writing an output failed mid-run (a full disk or quota, an I/O error): one line naming the file
    and why, where the bare OSError ("[Errno 28] No space left on device") named none."""

    @classmethod
    def of(cls, what: str, e: OSError | str, after: str = "") -> "WriteFailed":
        """"cannot WHAT: REASON" (+ `after`), its `strerror` the reason alone, as callers that name the file
        themselves show it (`subtitles.write_outputs`); no errno, so that it is not taken for the OSError of a
        write it wraps again (`atomic_path`)."""
        reason = e if isinstance(e, str) else e.strerror or str(e)
        error = cls(f"cannot {what}: {reason}{after}")
        error.strerror = reason
        return error
