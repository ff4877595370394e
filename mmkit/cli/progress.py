"""One progress bar for every `mmkit` tool (label, transcribe, generate, ...): rich on stderr,
with the rate in the tool's own unit and the ETA, so stdout stays clean for results."""
from __future__ import annotations

import contextlib
import logging
import sys
from typing import Any, Callable, Iterator


@contextlib.contextmanager
def progress(description: str, total: int, unit: str = "it", completed: int = 0,
             enabled: bool = True) -> Iterator[Callable[[int], None]]:
    """Yield `advance(n=1)`; a no-op when `enabled` is False (quiet runs, a single input).

    Args:
        description: the verb shown at the left ("labelling", "transcribing").
        total: number of units of work.
        unit: rate unit, e.g. "img" prints "12.3 img/s".
        completed: units already done (a resumed run starts part-way).
    """
    if not enabled:
        yield lambda n=1: None
        return
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)
    from rich.text import Text

    class Rate(ProgressColumn):
        def render(self, task: Any) -> Text:
            done = task.completed - completed  # this run's (a resumed run's earlier units took no time here)
            mean = done / task.elapsed if done > 0 and task.elapsed else None
            speed = task.speed if _speed_span(task) >= MIN_SPEED_SPAN_S else None
            return Text(rate(speed or mean, unit))

    # On a terminal, what is printed while the bar runs (transcripts on stdout; a bad row's line, a warning on
    # stderr) goes above it: printed under it, a line was glued to the bar ("ETA -:--:--mmkit embed: line 8: ...")
    # and the next redraw overwrote it. Elsewhere (a log file) the bar is drawn once, at the end, and the lines
    # are written as they come.
    tty = sys.stderr.isatty()
    bar = Progress(TextColumn(description), BarColumn(), MofNCompleteColumn(), Rate(), TimeElapsedColumn(),
                   TextColumn("ETA"), TimeRemainingColumn(), console=Console(stderr=True),
                   redirect_stdout=sys.stdout.isatty(), redirect_stderr=tty)
    task = bar.add_task(description, total=total, completed=completed)
    with bar, _logging_to(sys.stderr if tty else None):
        yield lambda n=1: bar.advance(task, n)


# rich's speed is the units of its recent samples over the time between the first and the last of them. Units that
# finish in a burst (transcripts come out in input order: short files wait for a long one, then all end within
# milliseconds) put their samples milliseconds apart, and the "speed" read 802.4 file/s in a run of 105 s/file.
# Under this span the run's mean is shown instead.
MIN_SPEED_SPAN_S = 1.0


def _speed_span(task: Any) -> float:
    """Seconds between the first and the last of the samples rich's `task.speed` is estimated from (0 when
    there are fewer than two, or this rich keeps them elsewhere: then the mean is shown, never a burst)."""
    samples = getattr(task, "_progress", None)  # rich's deque of ProgressSample(timestamp, completed)
    try:
        return float(samples[-1].timestamp - samples[0].timestamp) if samples and len(samples) > 1 else 0.0
    except (AttributeError, TypeError, IndexError):
        return 0.0


def rate(speed: float | None, unit: str) -> str:
    """"12.3 img/s"; "42.0 s/file" below one unit a second (it read "0.0 file/s"); "-- img/s" before any unit is
    done. `speed` is rich's estimate over the last 30 s when its samples span a second or more, else this run's
    mean (rich has none once a unit takes longer than that: a long file read "0.0 file/s" for the whole run; and
    a burst of units makes it absurd, `MIN_SPEED_SPAN_S`)."""
    if not speed:
        return f"-- {unit}/s"
    return f"{speed:.1f} {unit}/s" if speed >= 1 else f"{1 / speed:.1f} s/{unit}"


@contextlib.contextmanager
def _logging_to(stream: Any) -> Iterator[None]:
    """The root logger's handlers that write to the process's stderr write to `stream` (the bar's proxy of
    stderr, which prints above the bar) in this block; None: as they are. A handler keeps the stream it was
    made with, so the bar's redirection of sys.stderr alone does not reach log records."""
    handlers = [h for h in logging.getLogger().handlers
                if isinstance(h, logging.StreamHandler) and h.stream is sys.__stderr__] if stream is not None else []
    for handler in handlers:
        handler.setStream(stream)
    try:
        yield
    finally:
        for handler in handlers:
            handler.setStream(sys.__stderr__)
