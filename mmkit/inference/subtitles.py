"""Transcript files: plain text, JSON, SubRip (SRT), WebVTT and openai/whisper's TSV
(openai/whisper `utils.py` writers: times as HH:MM:SS,mmm / HH:MM:SS.mmm, "-->" kept out of cue
text), one `<stem>.<ext>` per input with repeated stems made unique.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Sequence, TextIO

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
    json.dump(t.to_dict(), f, ensure_ascii=False, indent=2)
    f.write("\n")


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
    """`<stem>` per input, made unique: repeated stems (a.wav, a.mp3, x/a.wav) get -2, -3, ..."""
    seen: dict[str, int] = {}
    stems = []
    for p in paths:
        stem = Path(p).stem or "audio"
        seen[stem] = seen.get(stem, 0) + 1
        stems.append(stem if seen[stem] == 1 else f"{stem}-{seen[stem]}")
    return stems


def write_outputs(t: Transcript, stem: str, directory: Path, formats: Sequence[str]) -> list[Path]:
    """Write `<directory>/<stem>.<fmt>` for each of `formats`; returns the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt in formats:
        path = directory / f"{stem}.{fmt}"
        with open(path, "w", encoding="utf-8") as f:
            WRITERS[fmt](t, f)
        written.append(path)
    return written
