"""Transcript files: plain text, JSON, SubRip (SRT), WebVTT and openai/whisper's TSV
(openai/whisper `utils.py` writers: times as HH:MM:SS,mmm / HH:MM:SS.mmm, "-->" kept out of cue
text), one `<stem>.<ext>` per input with repeated stems made unique. Each file is written to a
temporary file and renamed into place: an output is complete or absent, never half-written. SRT and
WebVTT of a transcript with word timestamps are cut by its words as openai's `SubtitlesWriter` cuts them
(`SubtitleOptions`: line width and count, words per subtitle, the spoken word underlined).
"""
from __future__ import annotations

import io
import json
import math
import re
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, TextIO

from mmkit.inference.inputs import check_types
from mmkit.inference.text_rows import write_atomically
from mmkit.inference.transcript import Segment, Transcript, Word

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


@dataclass(frozen=True)
class SubtitleOptions:
    """How SRT and WebVTT cut a transcript with word timestamps: openai-whisper's `--highlight_words`,
    `--max_line_width`, `--max_line_count` and `--max_words_per_line` (`whisper/utils.py` `SubtitlesWriter`),
    with its rules. Without them each segment is a subtitle of one line from its first word's start to its last
    word's end, as openai's (a segment without words, as an empty one, shows none). Words are used only when
    every segment has them (`Segment.words` not None); otherwise subtitles are the segments, as they are.

    Args:
        highlight_words: one cue per word while it is spoken, the word in <u></u> (and one of the plain text
            over each gap between words).
        max_line_width: characters per line, counted with each word's leading space; a line breaks before a
            word that would pass it (a longer word gets a line of its own). None: 1000.
        max_line_count: with max_line_width, lines per subtitle; subtitles then no longer follow segments: a
            subtitle ends when it is full or before a word starting over 3 s after the previous word's start.
            Without max_line_width it has no effect (only 1000-character lines would count).
        max_words_per_line: words per subtitle: each segment's words in runs of this many, each run starting a
            subtitle (cut into lines by max_line_width); no effect with max_line_count and max_line_width,
            which no longer follow segments.
    """

    highlight_words: bool = False
    max_line_width: int | None = None
    max_line_count: int | None = None
    max_words_per_line: int | None = None

    def __post_init__(self) -> None:
        counts = ("max_line_width", "max_line_count", "max_words_per_line")
        check_types(self, ints=counts)
        for name in counts:
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"SubtitleOptions: {name} must be >= 1 or None, got {getattr(self, name)}")


PAUSE = 3.0  # seconds from a word's start to the next one's that end a subtitle cut by lines (openai's)
UNCAPPED = 1000  # openai's line width and words per subtitle when none is given
# openai's underline: leading whitespace (a line break) stays outside the tags; a word holding a line break
# before its last character is not underlined (`.` stops at it and `$` does not match there)
_UNDERLINE = re.compile(r"^(\s*)(.*)$")


def _word_subtitles(segments: Sequence[Segment], layout: SubtitleOptions) -> Iterator[list[tuple[str, Word]]]:
    """Each subtitle's words with the text each shows (a line's first word stripped, "\\n" before it when a
    line ended), by openai's rules (`SubtitleOptions`)."""
    follow_segments = layout.max_line_count is None or layout.max_line_width is None
    width, run = layout.max_line_width or UNCAPPED, layout.max_words_per_line or UNCAPPED
    first = next((w for s in segments for w in s.words or ()), None)
    last = first.start if first is not None else segments[0].start  # the previous word's start
    subtitle: list[tuple[str, Word]] = []
    line_len, lines = 0, 1
    for s in segments:
        for k, w in enumerate(s.words or ()):
            pause = not follow_segments and w.start - last > PAUSE
            new_run = follow_segments and k % run == 0 and bool(subtitle)
            text = w.word
            if line_len > 0 and line_len + len(text) <= width and not pause and not new_run:
                line_len += len(text)
            else:
                text = text.strip()
                full = layout.max_line_count is not None and (pause or lines >= layout.max_line_count)
                if new_run or (subtitle and full):
                    yield subtitle
                    subtitle, lines = [], 1
                elif line_len > 0:
                    lines += 1
                    text = "\n" + text
                line_len = len(text.strip())
            subtitle.append((text, w))
            last = w.start
    if subtitle:
        yield subtitle


def _cues(t: Transcript, layout: SubtitleOptions, stamp: Callable[[float], str]) -> Iterator[tuple[str, str, str]]:
    """(start, end, text) of each cue: the segments', or where every segment has its words (openai's
    `iterate_result`), subtitles cut by words, one cue per word and gap when highlighting."""
    if not t.segments or any(s.words is None for s in t.segments):
        for s in t.segments:
            yield stamp(s.start), stamp(s.end), s.text.strip()
        return
    for subtitle in _word_subtitles(t.segments, layout):
        texts = [text for text, _ in subtitle]
        start, end, plain = stamp(subtitle[0][1].start), stamp(subtitle[-1][1].end), "".join(texts)
        if not layout.highlight_words:
            yield start, end, plain
            continue
        shown = start  # where the cues so far end; compared as written (whole milliseconds), as openai's
        for i, (text, w) in enumerate(subtitle):
            word_start, word_end = stamp(w.start), stamp(w.end)
            if shown != word_start:
                yield shown, word_start, plain
            yield word_start, word_end, "".join(texts[:i] + [_UNDERLINE.sub(r"\1<u>\2</u>", text)] + texts[i + 1:])
            shown = word_end


def _cue_text(text: str) -> str:
    return text.replace("-->", "->")  # a cue's text never holds the arrow that starts a cue


def write_srt(t: Transcript, f: TextIO, layout: SubtitleOptions = SubtitleOptions()) -> None:
    for i, (start, end, text) in enumerate(_cues(t, layout, partial(format_timestamp, decimal_marker=",")), start=1):
        f.write(f"{i}\n{start} --> {end}\n{_cue_text(text)}\n\n")


def write_vtt(t: Transcript, f: TextIO, layout: SubtitleOptions = SubtitleOptions()) -> None:
    """WebVTT; times always with hours (openai's leave out a zero hour: both are WebVTT)."""
    f.write("WEBVTT\n\n")
    for start, end, text in _cues(t, layout, format_timestamp):
        f.write(f"{start} --> {end}\n{_cue_text(text)}\n\n")


def write_tsv(t: Transcript, f: TextIO) -> None:
    """start and end in integer milliseconds (openai/whisper's TSV)."""
    f.write("start\tend\ttext\n")
    for s in t.segments:
        f.write(f"{round(1000 * s.start)}\t{round(1000 * s.end)}\t{s.text.strip().replace(chr(9), ' ')}\n")


WRITERS: dict[str, Callable[[Transcript, TextIO], None]] = {
    "txt": write_txt, "json": write_json, "srt": write_srt, "vtt": write_vtt, "tsv": write_tsv}
# the formats `SubtitleOptions` cut (openai's apply to these only: txt, json and tsv keep the segments)
CUT_WRITERS: dict[str, Callable[[Transcript, TextIO, SubtitleOptions], None]] = {"srt": write_srt, "vtt": write_vtt}


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


def write_outputs(t: Transcript, stem: str, directory: Path, formats: Sequence[str],
                  layout: SubtitleOptions = SubtitleOptions()) -> list[Path]:
    """Write `<directory>/<stem>.<fmt>` for each of `formats`, each atomically (temp file + rename), SRT and
    WebVTT cut as `layout` says; returns the paths. A format that fails does not stop the others:
    `OutputWriteError` names the failures afterwards (the other outputs are in place, and no partial file is
    left)."""
    written, failed = [], []
    for fmt in formats:
        path = directory / f"{stem}.{fmt}"
        text = io.StringIO()
        cut = CUT_WRITERS.get(fmt)
        if cut is not None:
            cut(t, text, layout)
        else:
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
