"""The tools' progress bar on a terminal: a line printed or logged while it runs (a bad row, a warning) is
written above it on a line of its own. Printed under it, the first such line was glued to the bar ("ETA
-:--:--mmkit embed: line 8: empty text") and the bar's next redraw wrote over the one after."""
from __future__ import annotations

import os
import pty
import re
import subprocess
import sys

from _ranks import env

PROGRAM = """
import logging, sys, time
from mmkit.cli.progress import progress
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
with progress("working", 4, "item") as advance:
    for i in range(4):
        time.sleep(0.15)  # the bar is drawn between the lines
        print(f"mmkit tool: row {i}: bad", file=sys.stderr)
        logging.getLogger("mmkit").warning("warned %d", i)
        advance()
print("done", file=sys.stderr)
"""


def _on_a_terminal(program: str) -> str:
    """What `program` writes to stderr on a pseudo-terminal, its escape sequences removed."""
    controller, terminal = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-c", program], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=terminal, env={**env(), "COLUMNS": "120", "TERM": "xterm"})
    os.close(terminal)
    out = b""
    while True:
        try:
            chunk = os.read(controller, 4096)
        except OSError:  # EIO: the program ended and closed the terminal
            break
        if not chunk:
            break
        out += chunk
    proc.wait(timeout=60)
    os.close(controller)
    assert proc.returncode == 0, out
    return re.sub(r"\x1b\[\?25[lh]|\x1b\[[0-9;]*m", "", out.decode())


def test_lines_printed_or_logged_while_the_bar_runs_are_lines_of_their_own():
    text = _on_a_terminal(PROGRAM)
    # A line as the terminal shows it: "\r" and "\x1b[2K" (clear the line) start it over
    lines = [re.split(r"\r|\x1b\[2K", line)[-1] for line in text.replace("\r\n", "\n").split("\n")]
    for i in range(4):
        assert f"mmkit tool: row {i}: bad" in lines, text
        assert f"WARNING mmkit: warned {i}" in lines, text
    assert not any("ETA" in line and "mmkit" in line for line in lines), text  # no message glued to the bar
    assert lines[-2:] == ["done", ""] and any(line.startswith("working") and "4/4" in line for line in lines), text


def test_the_rate_reads_at_any_speed(monkeypatch):
    """Below one unit a second the rate read "0.0 file/s" (and, once a unit took over rich's 30-s window, for the
    whole run); now the seconds per unit, this run's mean where rich has no estimate."""
    from types import SimpleNamespace

    import rich.progress

    from mmkit.cli.progress import progress, rate

    assert [rate(s, "file") for s in (None, 0, 0.025, 2.345)] == ["-- file/s", "-- file/s", "40.0 s/file",
                                                                 "2.3 file/s"]
    columns = []
    build = rich.progress.Progress.__init__

    def keep_columns(self, *given, **kwargs):
        columns.extend(given)
        build(self, *given, **kwargs)

    monkeypatch.setattr(rich.progress.Progress, "__init__", keep_columns)
    with progress("transcribing", 4, "file", completed=1):  # a resumed run: one file done before it
        pass
    column = next(c for c in columns if type(c).__name__ == "Rate")
    task = SimpleNamespace(speed=None, completed=3, elapsed=80.0)  # rich has no estimate; two files of this run
    assert str(column.render(task)) == "40.0 s/file"


def test_a_burst_of_units_shows_the_runs_mean_not_rich_s_speed(monkeypatch):
    """Transcripts come out in input order, so files finish in bursts: rich's speed over samples milliseconds
    apart read "802.4 file/s" after 5 minutes for 3 files. Under a second of samples the mean is shown; over
    it, rich's windowed speed (which follows a run whose pace changes)."""
    from types import SimpleNamespace

    import rich.progress
    from rich.progress import ProgressSample

    from mmkit.cli.progress import progress

    columns = []
    build = rich.progress.Progress.__init__

    def keep_columns(self, *given, **kwargs):
        columns.extend(given)
        build(self, *given, **kwargs)

    monkeypatch.setattr(rich.progress.Progress, "__init__", keep_columns)
    with progress("transcribing", 3, "file"):
        pass
    column = next(c for c in columns if type(c).__name__ == "Rate")
    burst = [ProgressSample(312.0, 1), ProgressSample(312.002, 1), ProgressSample(312.004, 1)]
    task = SimpleNamespace(speed=2 / 0.004, completed=3, elapsed=315.0, _progress=burst)
    assert str(column.render(task)) == "105.0 s/file"
    steady = [ProgressSample(t, 1) for t in (0.0, 2.0, 4.0, 6.0)]
    task = SimpleNamespace(speed=3 / 6.0, completed=40, elapsed=20.0, _progress=steady)
    assert str(column.render(task)) == "2.0 s/file"  # rich's recent pace, not the mean 0.5 s/file
    task = SimpleNamespace(speed=None, completed=0, elapsed=1.0, _progress=[])
    assert str(column.render(task)) == "-- file/s"
