"""Transcript files: plain text, JSON, SubRip (SRT), WebVTT and openai/whisper's TSV
(openai/whisper `utils.py` writers: times as HH:MM:SS,mmm / HH:MM:SS.mmm, "-->" kept out of cue
text), one `<stem>.<ext>` per input with repeated stems made unique. Each file is written to a
temporary file and renamed into place: an output is complete or absent, never half-written.
"""
from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any, Callable, Sequence, TextIO

from mmkit.inference.text_rows import write_atomically
from mmkit.inference.transcript import Transcript

OUTPUT_FORMATS = ("txt", "json", "srt", "vtt", "tsv")


def format_timestamp(seconds: float, decimal_marker: str = ".") -> str:
    """HH:MM:SS.mmm (SRT uses "," as the decimal marker)."""
    ms = max(0, round(seconds * 1000))
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal_marker}{ms:03d}"


def write_txt(t: Transcript, f: TextIO) -> None:
    for s in t.segments:
        f.write(s.text.strip() + "\n")


def write_json(t: Transcript, f: TextIO) -> None:
    """The transcript as JSON, whose numbers are finite: a statistic that is not (NaN, inf) is null, since a
    bare NaN is not JSON and strict readers (jq, JavaScript) reject the whole file."""
    json.dump(_finite(t.to_dict()), f, ensure_ascii=False, indent=2, allow_nan=False)
    f.write("\n")


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def write_srt(t: Transcript, f: TextIO) -> None:
    for i, s in enumerate(t.segments, start=1):
        f.write(f"{i}\n{format_timestamp(s.start, ',')} --> {format_timestamp(s.end, ',')}\n"
                f"{s.text.strip().replace('-->', '->')}\n\n")


def write_vtt(t: Transcript, f: TextIO) -> None:
    f.write("WEBVTT\n\n")
    for s in t.segments:
        f.write(f"{format_timestamp(s.start)} --> {format_timestamp(s.end)}\n{s.text.strip().replace('-->', '->')}\n\n")


def write_tsv(t: Transcript, f: TextIO) -> None:
    """start and end in integer milliseconds (openai/whisper's TSV)."""
    f.write("start\tend\ttext\n")
    for s in t.segments:
        f.write(f"{round(1000 * s.start)}\t{round(1000 * s.end)}\t{s.text.strip().replace(chr(9), ' ')}\n")


WRITERS: dict[str, Callable[[Transcript, TextIO], None]] = {
    "txt": write_txt, "json": write_json, "srt": write_srt, "vtt": write_vtt, "tsv": write_tsv}


def output_stems(paths: Sequence[str | Path]) -> list[str]:
    """`<stem>` per input, made unique: repeated stems (a.wav, a.mp3, x/a.wav) get -2, -3, ..., each the first
    not yet given out, so that no input's outputs replace another's (x/a.wav, y/a.wav, z/a-2.wav: a, a-2, a-2-2)."""
    taken: set[str] = set()
    stems = []
    for p in paths:
        stem = Path(p).stem or "audio"
        unique, n = stem, 1
        while unique in taken:
            n += 1
            unique = f"{stem}-{n}"
        taken.add(unique)
        stems.append(unique)
    return stems


class OutputWriteError(OSError):
    """Some of a transcript's outputs could not be written; `written` lists those that were."""

    def __init__(self, message: str, written: list[Path]) -> None:
        super().__init__(message)
        self.written = written


def write_outputs(t: Transcript, stem: str, directory: Path, formats: Sequence[str]) -> list[Path]:
    """Write `<directory>/<stem>.<fmt>` for each of `formats`, each atomically (temp file + rename);
    returns the paths. A format that fails does not stop the others: `OutputWriteError` names
    the failures afterwards (the other outputs are in place, and no partial file is left)."""
    written, failed = [], []
    for fmt in formats:
        path = directory / f"{stem}.{fmt}"
        text = io.StringIO()
        WRITERS[fmt](t, text)
        data = text.getvalue().encode("utf-8")
        try:
            write_atomically(path, lambda f: f.write(data))
        except OSError as e:
            failed.append(f"{path.name} ({e.strerror or e})")
        else:
            written.append(path)
    if failed:
        raise OutputWriteError(f"could not write {', '.join(failed)} in {directory}", written)
    return written
