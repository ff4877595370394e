"""The files of texts a tool reads one text a line (`mmkit translate`, `mmkit generate-text`): which argument is
such a file (`input_file`), its lines with their problems (`iter_lines`), and the results written or printed in
order (`write_rows`)."""
from __future__ import annotations

import logging
import os
import stat
from pathlib import Path
from typing import Callable, Iterator, Sequence, TypeVar

INPUT_SUFFIXES = (".txt", ".jsonl")
T = TypeVar("T")
log = logging.getLogger("mmkit")


def iter_lines(path: Path) -> Iterator[tuple[str, str | None]]:
    """(source, problem) per line of a .txt (one a line) or .jsonl ("text" field) file, its lines as
    `text_rows.iter_lines` reads them (memory: one line, at most 1 MiB); problem names a line that is not
    UTF-8, not a JSON object with a "text" string, JSON nested too deeply or holding too long a number
    (`text_rows.json_record`) or no text (`checked_line`; its source is ""), else None. A UTF-8 byte order mark
    before the first line is dropped."""
    from mmkit.inference.text_rows import MAX_LINE_BYTES, decode_line, json_record, strip_bom
    from mmkit.inference.text_rows import iter_lines as file_lines

    for line in file_lines(path):
        n = line.number
        try:
            text = decode_line(line)
        except UnicodeDecodeError as e:
            yield "", f"line {n}: not UTF-8 (byte 0x{line.data[e.start]:02x} at column {e.start + 1})"
            continue
        if n == 1:
            text = strip_bom(text)
        if path.suffix == ".jsonl" and line.cut:
            yield "", f"line {n}: a JSON record longer than {MAX_LINE_BYTES >> 20} MiB"
            continue
        if path.suffix == ".jsonl" and text.strip():
            obj, problem = json_record(text)
            if problem:
                yield "", f"line {n}: {problem}"
                continue
            if not (isinstance(obj, dict) and isinstance(obj.get("text"), str)):
                yield "", f'line {n}: not a JSON object with a "text" string'
                continue
            text = obj["text"]
        yield checked_line(text, n)


def checked_line(text: str, line: int) -> tuple[str, str | None]:
    """(source, problem) of a text: a blank one stays an empty line (no error: lines stay aligned); one
    that is no text by `text_rows.text_problem` (NUL bytes, only control or invisible characters) is
    reported, its source ""."""
    from mmkit.inference.text_rows import text_problem

    problem = text_problem(text) if text.strip() else None
    return ("", f"line {line}: {problem}") if problem else (text, None)


def input_file(inputs: Sequence[str], prog: str, item: str) -> Path | None:
    """The .txt/.jsonl file `prog` ("mmkit translate") reads when `inputs` is one, None when they are its
    items (`item`: "sentence", "prompt") themselves; a ValueError for a path of another kind (a folder, another
    suffix, "-"), several paths, or a missing .txt/.jsonl file. Probing an argument as a path never fails: an
    OSError (a text longer than a file name may be, say) means it is text."""
    def kind(arg: str) -> int | None:
        try:
            return os.stat(arg).st_mode
        except (OSError, ValueError):  # ValueError: a NUL in the argument
            return None

    tool = prog.removeprefix("mmkit ")
    if "-" in inputs:
        raise ValueError(f"-: standard input is not read; give {item}s or a .txt/.jsonl file")
    paths = [arg for arg in inputs if kind(arg) is not None]
    if len(inputs) > 1 and paths:
        raise ValueError(f"{paths[0]}: a file or folder among {len(inputs)} arguments; {tool} reads one "
                         f".txt/.jsonl file at a time (or give only {item}s)")
    if len(inputs) != 1:
        return None
    path, mode = Path(inputs[0]), kind(inputs[0])
    if mode is None:
        if path.suffix in INPUT_SUFFIXES:
            raise ValueError(f"{path}: no such file")
        return None
    if stat.S_ISDIR(mode):
        raise ValueError(f"{path}: a folder; give a .txt or .jsonl file (or {item}s)")
    if not stat.S_ISREG(mode):
        raise ValueError(f"{path}: not a regular file; give a .txt or .jsonl file (or {item}s)")
    if path.suffix not in INPUT_SUFFIXES:
        raise ValueError(f"{path}: use a .txt or .jsonl file (one {item} a line, or JSON objects with a "
                         '"text" field)')
    return path


def check_output_file(output: str, source: Path | None) -> None:
    """A ValueError of one line unless `output` (--output) is a .txt/.jsonl file that is not the input file
    `source` and can be written (`text_rows.check_not_input`, `check_output`), met before the model loads."""
    from mmkit.inference.text_rows import check_not_input, check_output

    if Path(output).suffix not in INPUT_SUFFIXES:
        raise ValueError(f"--output {output}: use a .txt or .jsonl file")
    if source:
        check_not_input(output, source, "--output")
    check_output(output)


def write_rows(prog: str, out: Path | None, rows: Iterator[T], show: Callable[[Iterator[T]], None],
               save: Callable[[Path, Iterator[T]], None], counts: list[int], noun: str) -> int:
    """The first rank's end of a run over rows: `rows` (each row's result, in order; consuming them counts
    [rows, errors] in `counts`) printed by `show`, or saved to `out` by `save` whole or not at all (`written`),
    then one line saying so. Exit code: `written`'s for an output that could not be written, 1 where every row
    failed, else 0."""
    from mmkit.cli.bert_text_files import written

    if out is None:
        code = written(prog, lambda: show(rows), atomic=False)
    else:
        code = written(prog, lambda: save(out, rows))
        if not code:
            log.info("wrote %d %s (%d with errors) to %s", counts[0], noun, counts[1], out)
    return code or (1 if counts[0] and counts[1] == counts[0] else 0)  # no row done
