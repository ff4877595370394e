"""Input and output rows of the text batch tools (`mmkit embed`, `mmkit classify-text`; `mmkit translate`
reads its lines with `iter_lines` too): texts from .txt (one per line), .jsonl or .csv files, read in
bounded pieces (`mmkit.data.lines`, the line reader the training corpora share; a line holds at most
`MAX_LINE_BYTES`) and decoded line by line so one non-UTF-8 or empty row is reported and skipped, not
fatal; outputs written atomically (temp file + rename).
"""
from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import os
import signal
import tempfile
import threading
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, TypeVar

from mmkit.data import lines as line_reader
from mmkit.data.lines import MAX_LINE_BYTES, READ_BYTES, Line, decode_line
from mmkit.errors import FULL, WriteFailed, in_context

TEXT_FILE_SUFFIXES = (".txt", ".jsonl", ".csv")
T = TypeVar("T")


@dataclass(frozen=True)
class TextRow:
    """One input row: its 1-based line (record) number, the text, or why it cannot be used."""

    line: int
    text: str | None
    error: str | None = None
    fields: dict | None = None  # the row's other columns or keys (csv/jsonl)


ROWS_PER_CHUNK = 4096  # rows a batch text tool holds at once: memory is bounded whatever the file's size
CHARS_PER_CHUNK = 16 << 20  # ... and at most about this many characters of text in those rows
# MAX_LINE_BYTES (imported): a longer line keeps its first MiB, far beyond any model's context
_READ_BYTES = READ_BYTES


def iter_lines(path: str | Path) -> Iterator[Line]:
    """The lines of `path` (~ expanded) as `bytes.splitlines()` splits them, each keeping its first
    `MAX_LINE_BYTES` (`cut` if longer), read `_READ_BYTES` at a time: `mmkit.data.lines.iter_lines` with
    this module's limits, looked up at each call (tests lower them). Memory holds a line or two of at
    most `MAX_LINE_BYTES`, however long the file's lines or the file."""
    return line_reader.iter_lines(Path(path).expanduser(), MAX_LINE_BYTES, _READ_BYTES)


def read_text_rows(path: str | Path, text_key: str = "text") -> list[TextRow]:
    """All rows of a .txt/.jsonl/.csv file (`iter_text_rows`, as a list)."""
    return list(iter_text_rows(path, text_key))


def iter_text_rows(path: str | Path, text_key: str = "text") -> Iterator[TextRow]:
    """Rows of a .txt/.jsonl/.csv file, read line by line (memory: one line or CSV record at a time);
    bad rows (not UTF-8, empty, no `text_key`, JSON nested too deeply or holding too long a number) carry an
    error. A UTF-8 byte order mark before the first line is dropped (`strip_bom`).

    A line longer than `MAX_LINE_BYTES` keeps its first MiB in a .txt file (a model reads far less of
    it) and is a bad row in a .jsonl file (the record is cut).

    Raises (when iteration starts, before any row):
        FileNotFoundError: no such file.
        ValueError: not a regular file (a folder, /dev/null, a pipe), another suffix, or a CSV without a
            `text_key` column; or, after rows, a CSV record that cannot be read (`_csv_rows`).
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"input file not found: {path}")
    if not path.is_file():
        raise ValueError(f"{path}: not a regular file (a folder or a device); give a .txt, .jsonl or .csv file")
    if path.suffix not in TEXT_FILE_SUFFIXES:
        raise ValueError(f"{path}: use a {', '.join(TEXT_FILE_SUFFIXES)} file")
    lines = iter_lines(path)
    if path.suffix == ".csv":
        yield from _csv_rows(path, lines, text_key)
        return
    for line in lines:
        n = line.number
        try:
            text = decode_line(line)
        except UnicodeDecodeError as e:
            yield TextRow(n, None, _not_utf8(line, e))
            continue
        if n == 1:
            text = strip_bom(text)
        if path.suffix == ".txt":
            yield _checked(n, text)
            continue
        if line.cut:
            yield TextRow(n, None, f"a JSON record longer than {MAX_LINE_BYTES >> 20} MiB")
            continue
        if not text.strip():
            continue  # blank lines between JSON records are not records
        record, problem = json_record(text)
        if problem:
            yield TextRow(n, None, problem)
            continue
        value = record.get(text_key) if isinstance(record, dict) else None
        yield (_checked(n, value, {k: v for k, v in record.items() if k != text_key}) if isinstance(value, str)
               else TextRow(n, None, _no_key(text_key)))


def strip_bom(text: str) -> str:
    """A file's first line without the UTF-8 byte order mark some editors (Notepad) put before it: kept, it
    would be the first character of the first text, or make a JSON record of the first line unreadable."""
    return text[1:] if text.startswith("\ufeff") else text


def json_record(text: str) -> tuple[object, str | None]:
    """(the JSON value of a .jsonl line, None), or (None, why it cannot be read) for a line that is not JSON
    at all (None: the caller says "not a JSON object with ..."), nests too deeply for the parser
    (RecursionError: `[` a hundred thousand times) or holds a number too long to convert (a ValueError past
    `sys.get_int_max_str_digits()`): one bad row each, never the end of the run."""
    try:
        return json.loads(text), None
    except json.JSONDecodeError:
        return None, None
    except RecursionError:
        return None, "not readable JSON (nested too deeply)"
    except ValueError as e:  # "Exceeds the limit (4300 digits) for integer string conversion: ..."
        return None, f"not readable JSON ({str(e).split(':')[0]})"


def _not_utf8(line: Line, e: UnicodeDecodeError) -> str:
    utf16 = line.number == 1 and line.data[:2] in (b"\xff\xfe", b"\xfe\xff")  # its byte order mark
    return f"not UTF-8 text (byte {e.start})" + ("; UTF-16 text? save it as UTF-8" if utf16 else "")


def _no_key(text_key: str) -> str:
    return f"not a JSON object with a string {text_key!r}"


def count_text_rows(path: str | Path, text_key: str = "text") -> int:
    """The number of rows `iter_text_rows` gives, read a line at a time as it reads them (memory: one
    line), the check of an input before a model loads: it raises what `iter_text_rows` raises, and a
    ValueError for a .jsonl file none of whose rows has a string `text_key` (as for a CSV without the
    column: a wrong --text-key, not a file of bad rows)."""
    total, keyed = 0, False
    for row in iter_text_rows(path, text_key):
        total += 1
        keyed = keyed or row.error != _no_key(text_key)
    if total and not keyed:
        raise ValueError(f"{Path(path).expanduser()}: no row is a JSON object with a string {text_key!r} field "
                         "(see --text-key)")
    return total


def _csv_rows(path: Path, lines: Iterator[Line], text_key: str) -> Iterator[TextRow]:
    """CSV records (one may span lines, in quotes) as rows numbered by the line where each ends; a line
    that is not UTF-8 is a bad row of its own and left out of the CSV text. A line longer than
    `MAX_LINE_BYTES`, or a record the csv module cannot read (a field over its `field_size_limit`, a
    quote never closed, text after a closing quote), raises ValueError naming the line: after it, where
    the next record starts is unknown. The reader is strict: a lenient one reads a quote left open as a
    field holding the rest of the file, and `"a"b` as `ab`: silently wrong rows."""
    bad: list[TextRow] = []  # bad lines met since the last record
    # the last line handed to the reader, the first line of the record it is reading (0: none yet; the
    # reader pulls a line at a time), and whether that record is the header
    at = {"last": 0, "start": 0, "header": True}

    def decoded() -> Iterator[str]:
        for line in lines:
            if line.cut:
                raise ValueError(f"{path} line {line.number}: longer than {MAX_LINE_BYTES >> 20} MiB; a CSV file's "
                                 "lines must be shorter (put long texts in a .txt or .jsonl file)")
            try:
                text = decode_line(line, "utf-8-sig" if line.number == 1 else "utf-8")
            except UnicodeDecodeError as e:
                if at["header"]:  # skipping it would make the first record the header
                    raise ValueError(f"{path} line {line.number}: the header is {_not_utf8(line, e)}") from None
                bad.append(TextRow(line.number, None, _not_utf8(line, e)))
                continue
            at["last"] = line.number
            if text and not at["start"]:  # the reader skips empty lines between records
                at["start"] = line.number
            yield text + "\n"  # a quoted field spanning lines keeps its line break

    reader = csv.DictReader(decoded(), strict=True)
    try:
        if reader.fieldnames is None or text_key not in reader.fieldnames:
            raise ValueError(f"{path}: no {text_key!r} column (columns: {', '.join(reader.fieldnames or [])})")
        at.update(start=0, header=False)
        for record in reader:
            at["start"] = 0
            row = _checked(at["last"], record[text_key] or "", {k: v for k, v in record.items() if k != text_key})
            yield from sorted(bad + [row], key=lambda r: r.line)
            bad.clear()
    except csv.Error as e:  # e.g. "field larger than field limit (131072)"
        if "unexpected end of data" in str(e):  # only a strict reader tells
            raise ValueError(f"{path} line {at['start']}: a quoted field opened in the record starting here is "
                             "never closed (it runs to the end of the file)") from None
        hint = "; put long texts in a .txt or .jsonl file" if "field limit" in str(e) else ""
        raise ValueError(f"{path} line {at['last']}: not a readable CSV record ({e}){hint}") from None
    yield from bad


def chunks(rows: Iterable[T], size: int | None = None, chars: Callable[[T], int] | None = None) -> Iterator[list[T]]:
    """Consecutive lists of `rows`, read lazily: at most `size` (default `ROWS_PER_CHUNK`) items, and
    where `chars` gives an item's length in characters, ending as soon as they hold `CHARS_PER_CHUNK`."""
    size = size or ROWS_PER_CHUNK
    chunk: list[T] = []
    held = 0
    for row in rows:
        chunk.append(row)
        held += chars(row) if chars else 0
        if len(chunk) == size or held >= CHARS_PER_CHUNK:
            yield chunk
            chunk, held = [], 0
    if chunk:
        yield chunk


# Characters that show nothing: controls (Cc), format characters such as the zero-width space and the
# BOM (Cf), lone surrogates (Cs), spaces and line/paragraph separators (Z*), and letters/symbols drawn
# blank (Hangul fillers, the blank Braille pattern: used to pass off empty text as text).
_INVISIBLE_CATEGORIES = {"Cc", "Cf", "Cs", "Zs", "Zl", "Zp"}
_BLANK_GLYPHS = {"\u115f", "\u1160", "\u2800", "\u3164", "\uffa0"}


def text_problem(text: str) -> str | None:
    """Why `text` is no text to give a model, or None: NUL characters (in every line of UTF-16 read as
    UTF-8) or nothing visible ("empty text": only whitespace, control or invisible characters).
    The one definition of an empty text for `embed`, `classify-text` and `translate`."""
    if "\x00" in text:
        return "holds NUL bytes (UTF-16 text? save it as UTF-8)"
    if any(c not in _BLANK_GLYPHS and unicodedata.category(c) not in _INVISIBLE_CATEGORIES for c in text):
        return None
    return "empty text" if not text.strip() else "empty text (only control or invisible characters)"


def _checked(line: int, text: str, fields: dict | None = None) -> TextRow:
    problem = text_problem(text)
    return TextRow(line, None, problem) if problem else TextRow(line, text, None, fields)


def temp_beside(path: Path) -> tuple[int, Path]:
    """(an open descriptor, the path) of a new hidden temp file in `path`'s folder, for an output
    renamed over `path` when complete. It gets the permissions a plainly created file would (0666 less
    the umask), not `mkstemp`'s owner-only 0600, so the renamed output is readable as any other."""
    from mmkit.weights.native import plain_file_mode

    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, plain_file_mode())
    return fd, Path(tmp)


def output_temp(path: Path) -> tuple[int, Path]:
    """`temp_beside(path)` once `path`'s folder is made; an OSError of one line naming `path` and the
    problem (a folder at `path`, a file where a folder should be, a read-only or virtual file system)."""
    try:
        if path.is_dir():
            raise IsADirectoryError(errno.EISDIR, "it is a folder")
        existing = next(p for p in path.parents if p.exists())  # "/" at last
        if not existing.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, f"{existing} is not a folder")
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _write_error(path, e.strerror or str(e)) from None
    try:
        return temp_beside(path)
    except OSError as e:  # a read-only or virtual file system (/proc, /sys), no permission
        raise _write_error(path, f"no file can be made in {path.parent} ({e.strerror or e})") from None


def _write_error(path: Path, reason: str, after: str = "") -> OSError:
    """"cannot write PATH: REASON" (+ `after`) as an OSError whose `strerror` is the reason alone (callers that
    name the file themselves, as `subtitles.write_outputs`, show that) and `headline` the message without
    `after`, as `WriteFailed.of`'s."""
    error = OSError(f"cannot write {path}: {reason}{after}")
    error.strerror, error.headline = reason, f"cannot write {path}: {reason}"
    return error


def _probe(folder: Path) -> None:
    """Raise the OSError met making a file in `folder`, or (when it does not exist yet) a folder in
    the nearest existing one above it, where it would be made: a real probe, removed at once
    (permission bits say nothing of read-only mounts or /proc, and root passes them all). A file
    where a folder should be is a NotADirectoryError. Leaves nothing behind, makes no folder."""
    existing = next((p for p in (folder, *folder.parents) if p.exists()), folder)
    if not existing.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, f"{existing} is not a folder")
    if existing == folder:
        with tempfile.TemporaryFile(dir=folder):
            pass
    else:
        Path(tempfile.mkdtemp(dir=existing, prefix=".mmkit-probe-")).rmdir()


def check_output(path: str | Path) -> Path:
    """`path` (expanded) if an output file can be written there (its folder is made when the output
    is written, `output_temp`); an OSError of one line naming `path` and the problem otherwise, so a
    tool fails before any work. Leaves nothing behind (`_probe`)."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise _write_error(path, "it is a folder")
    try:
        _probe(path.parent)
    except NotADirectoryError as e:
        raise _write_error(path, e.strerror) from None
    except OSError as e:  # a read-only or virtual file system (/proc, /sys), no permission
        raise _write_error(path, f"no file can be made in {path.parent} ({e.strerror or e})") from None
    return path


def check_not_input(output: str | Path, source: str | Path, option: str = "--out") -> None:
    """A ValueError of one line when the output file `output` (given as `option`) is the input `source`
    itself, by name or through a symbolic or hard link (`os.path.samefile`): the output, renamed over it
    when complete, would replace the texts it was made from. Nothing is refused when either is missing."""
    try:
        same = os.path.samefile(Path(output).expanduser(), Path(source).expanduser())
    except OSError:  # no such output yet (or input): not the same file
        return
    if same:
        raise ValueError(f"{option} {output} is the input file {source}: writing it would replace the input; "
                         "give another output file")


def check_output_dir(directory: str | Path) -> Path:
    """`directory` (expanded) if files can be created in it, or, when it does not exist yet, in the
    nearest existing folder above it, where it will be made; an OSError of one line otherwise.
    Leaves nothing behind (`_probe`)."""
    directory = Path(directory).expanduser()
    try:
        _probe(directory)
    except NotADirectoryError as e:
        raise OSError(f"{directory}: a file, not a folder" if directory.is_file() else f"{directory}: {e.strerror}"
                      ) from None
    except OSError as e:
        raise OSError(f"{directory}: cannot write there ({e.strerror or e})") from None
    return directory


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temp file's path beside `path` for the body to write; renamed over `path` when the body
    ends, removed if it raises: readers never see a half-written output, and an existing output is
    replaced only by a complete one. Making the temp file or the rename failing, or a full disk or quota
    met in the body (its writes, or any other work it does), is an OSError of one line naming `path`, or the
    other file the body's OSError names (a cache on a full /tmp). `check_output` meets most of them before any
    work; the bare "[Errno 28] No space left on device" named no file."""
    path = Path(path).expanduser()
    with contextlib.ExitStack() as hold:
        hold.enter_context(interruptions_held())  # no temp file made and not yet in the `try` below
        fd, tmp = output_temp(path)
        os.close(fd)
        release = hold.pop_all()
    try:
        release.close()  # an interruption held back is raised here, where the temp file is removed
        try:
            yield tmp
        except OSError as e:
            if e.errno in FULL:  # an inner output's WriteFailed first (closing this one then failed too)
                inner = in_context(e, lambda x: isinstance(x, WriteFailed))
                if inner is None and e.filename not in (None, str(tmp)):  # another file (a cache on a full /tmp)
                    inner = WriteFailed.of(f"write {e.filename}", e, f"; {path} was not written")
                raise inner or WriteFailed.of(f"write {path}", e, "; nothing was written") from None
            raise
        try:
            os.replace(tmp, path)
        except OSError as e:  # e.g. a folder made at `path` meanwhile
            raise _write_error(path, e.strerror or str(e), "; nothing was written") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def reserve(path: Path) -> None:
    """Allocate the disk blocks of the file at `path` for its present size, before it is filled through a memory
    map: a map's write to a full disk is a SIGBUS that kills the process (its temp file left behind), where this
    is an OSError (ENOSPC, which `atomic_path` names) before any work. Filesystems that cannot preallocate are
    left as they are."""
    with open(path, "r+b") as f:
        try:
            os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                raise
            # no preallocation on this filesystem: the map is filled as before


@contextlib.contextmanager
def interruptions_held() -> Iterator[None]:
    """SIGINT and SIGTERM in this block recorded, then handed to their handlers as it ends (KeyboardInterrupt
    for Ctrl-C and, in a tool run, SIGTERM: `Ranks.group`). `atomic_path` makes its temp file so: a signal in
    that moment, met hundreds of times a second by `mmkit generate` with small images, left the file behind in
    about one interrupted run of five. In the main thread only (elsewhere signals stay as they are)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = {signum: signal.signal(signum, lambda signum, frame: held.append(signum))
                for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():  # None: set outside Python, cannot be put back
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
        if held:
            handler = previous[held[0]]
            if callable(handler):
                handler(held[0], None)
            elif handler != signal.SIG_IGN:
                signal.raise_signal(held[0])  # its default action, as if it had not been held


def write_atomically(path: str | Path, write: Callable[[io.BufferedWriter], None]) -> Path:
    """Call `write(f)` on a temp file beside `path`, then rename it over `path` (`atomic_path`)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        write(f)
    return Path(path).expanduser()
