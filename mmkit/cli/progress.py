"""One progress bar for every `mmkit` tool (label, transcribe, generate, ...): rich on stderr,
with the rate in the tool's own unit and the ETA, so stdout stays clean for results."""
from __future__ import annotations

import contextlib
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
            return Text(f"{task.speed or 0:.1f} {unit}/s")

    # redirect_stdout keeps results printed while the bar runs (transcripts) above the bar.
    bar = Progress(TextColumn(description), BarColumn(), MofNCompleteColumn(), Rate(), TimeElapsedColumn(),
                   TextColumn("ETA"), TimeRemainingColumn(), console=Console(stderr=True),
                   redirect_stdout=sys.stdout.isatty(), redirect_stderr=False)
    task = bar.add_task(description, total=total, completed=completed)
    with bar:
        yield lambda n=1: bar.advance(task, n)
