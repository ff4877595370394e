"""Output writers for batch inference. `write_predictions`: the classifier's rows, written atomically
(temp file + rename). `ResumableWriter`: `mmkit label`'s crash-safe rows, whose guarantees are
(OUT = the output file, ERR = its errors file, same rules):
  * OUT only ever appears by an atomic rename of a complete, fsynced file: readers never see a
    half-written OUT, and an existing OUT is replaced only when the new one is complete.
  * While running, rows go to OUT.partial: each batch is appended, flushed and fsynced before the
    next batch is scored, so a SIGKILL (or power loss) loses at most the batch being written,
    possibly leaving a cut-off last line.
  * `--resume` reads OUT.partial (else OUT), drops a cut-off last line and any malformed or
    repeated row, rewrites the rest atomically, and skips every path it holds (OUT's and ERR's).
    A run killed any number of times and resumed to the end leaves exactly one row per image:
    in OUT when it was scored, in ERR (path, reason) when it could not be read. OUT.run.json
    records the settings the rows depend on (model, prompts, examples, thresholds, columns); a
    resume with other settings is refused rather than mixing rows. A lock file keeps a second
    run off the same OUT.
  * Memory is bounded by the batch pipeline, not the folder: results are written as they come,
    never collected; only the file list and the set of done paths are held.
CSV cells that a spreadsheet would run as a formula (starting with =, +, -, @, tab or CR) are
written with a leading "'" (OWASP's CSV-injection rule; a cell starting with "'" gets one more,
so `csv_unsafe` reads every cell back exactly); JSON and JSONL hold the values as they are, and
never a bare NaN (not JSON).
File names that are not UTF-8 (legal on Linux; Python holds their bytes as surrogate escapes) are
written in one documented form, `path_text`: each byte that is not UTF-8 as a backslash escape
("bad\\xff.png"), as Python itself shows such bytes; every output stays valid UTF-8 and
`--resume` matches the rows with the files by that form.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence

from mmkit.errors import WriteFailed
from mmkit.inference.text_rows import output_temp

if TYPE_CHECKING:
    from mmkit.inference.classifier import Prediction

log = logging.getLogger(__name__)


def path_text(path: str | os.PathLike) -> str:
    """`path` as text that a UTF-8 output (CSV, JSON, a terminal) can hold: unchanged when it is valid
    Unicode, as every name on Windows and macOS and nearly every one on Linux is. A Linux name whose
    bytes are not UTF-8 comes from the OS with each such byte as a surrogate escape ("\\udcff" for
    0xff), which no UTF-8 writer accepts; here each becomes a backslash escape, "bad\\xff.png", the
    form Python's own ``bytes`` repr and ``backslashreplace`` use. `path_from_text` reverses it; the one
    ambiguity is with a name spelling such an escape out literally (a backslash, "x", then 80 to ff in
    hex), which no tool makes."""
    text = os.fspath(path)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:  # surrogate escapes back to the name's bytes, whose non-UTF-8 ones decode as \xNN
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate no file name holds (\ud800-\udc7f): \uNNNN
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


_BYTE_ESCAPE = re.compile(r"\\x([89a-f][0-9a-f])")  # what `path_text` writes: bytes 0x80-0xff only


def path_from_text(text: str) -> str:
    """The file name `path_text` wrote as `text` (its escapes back to surrogate escapes, which the OS
    functions turn into the name's bytes): how a resumed run finds the file a row names."""
    return _BYTE_ESCAPE.sub(lambda m: chr(0xDC00 + int(m[1], 16)), text)


def _text_values(values: Iterable[Any]) -> list[Any]:
    """`values` with every string made writable (`path_text`); numbers and the rest as they are."""
    return [path_text(v) if isinstance(v, str) else v for v in values]


class ResumableWriter:
    """Rows of fixed `fields` to CSV (with a header) or JSONL, by `path`'s extension; crash-safe as
    the module docstring states (one row per path, for `mmkit label`): appends to `path`.partial with
    flush + fsync per `append`, and `finish` renames it over `path` atomically."""

    def __init__(self, path: str | os.PathLike, fields: Sequence[str]) -> None:
        self.path = Path(path).expanduser()
        if self.path.suffix not in (".csv", ".jsonl"):
            raise ValueError(f"unsupported output {self.path}: use .csv or .jsonl")
        self.fields = list(fields)
        self.csv = self.path.suffix == ".csv"
        self.partial = self.path.with_name(self.path.name + ".partial")
        self._file: io.TextIOWrapper | None = None

    def exists(self) -> bool:
        return self.path.exists() or self.partial.exists()

    def start(self, resume: bool, keep: Callable[[dict[str, Any]], bool] = lambda row: True) -> None:
        """Open for appending. With `resume`, first carry over the valid rows of the previous run
        (the partial file, else the finished one) for which `keep(row)` is true; `keep` may raise
        to refuse them, leaving every file as it was."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        source = self.partial if self.partial.exists() else self.path
        tmp = self.partial.with_name(self.partial.name + ".tmp")
        try:
            with open(tmp, "w", encoding="utf-8", newline="") as f:
                if self.csv:
                    f.write(_csv_line(self.fields))
                if resume and source.exists():
                    f.write("".join(self._encode(row) for row in self.read(source) if keep(row)))
                _sync(f)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        os.replace(tmp, self.partial)
        _sync_dir(self.partial.parent)
        self._file = open(self.partial, "a", encoding="utf-8", newline="")

    def read(self, source: Path) -> Iterator[dict[str, Any]]:
        """Valid rows of a file this writer wrote, streamed, first occurrence of each path; a cut-off
        last line (from a kill mid-write) and malformed rows are dropped with a warning."""
        with open(source, "rb") as f:
            complete = f.seek(0, os.SEEK_END) == 0 or (f.seek(-1, os.SEEK_END), f.read(1))[1] == b"\n"
        seen: set[str] = set()
        with open(source, encoding="utf-8", errors="replace", newline="") as f:
            records = self._records(f, source)
            row = next(records, _END)
            while row is not _END:
                following = next(records, _END)
                if row is None or (following is _END and not complete):
                    log.warning("%s: dropping a %s row (redone on resume)", source,
                                "malformed" if row is None else "cut-off")
                elif row["path"] not in seen:
                    seen.add(row["path"])
                    yield row
                row = following

    def _records(self, f: io.TextIOBase, source: Path) -> Iterator[Any]:
        """Rows as dicts, None for a malformed one."""
        if not self.csv:
            for line in f:
                row = _json_row(line) if line.strip() else None
                if row is not None and list(row) != self.fields:
                    raise OutputConflict(f"{source} has fields {list(row)}; this run writes {self.fields}. "
                                         "Use the same labels and options, or --overwrite")
                if line.strip():
                    yield row
            return
        reader = csv.reader(f, strict=True)
        try:
            header = next(reader, None)
            header = None if header is None else [csv_unsafe(cell) for cell in header]
            if header is not None and header != self.fields:
                raise OutputConflict(f"{source} has columns {header}; this run writes {self.fields}. "
                                     "Use the same labels and options, or --overwrite")
            for record in reader:
                yield (dict(zip(self.fields, map(csv_unsafe, record))) if len(record) == len(self.fields)
                       else None)
        except csv.Error:  # a quote left open by a cut-off write: the end of the file is that record
            yield None

    def _encode(self, row: dict[str, Any]) -> str:
        values = _text_values(row.get(k, "") for k in self.fields)  # odd file names as `path_text`
        if self.csv:
            return _csv_line(values)
        # allow_nan=False: a bare NaN is not JSON; the scorer refuses non-finite scores before this.
        return json.dumps(dict(zip(self.fields, values)), ensure_ascii=False, allow_nan=False) + "\n"

    def append(self, rows: Sequence[dict[str, Any]]) -> None:
        """Write `rows` and make them durable (flush + fsync) before returning."""
        assert self._file is not None, "call start first"
        if rows:
            try:
                self._file.write("".join(self._encode(r) for r in rows))
                _sync(self._file)
            except OSError as e:  # a cut-off last line is dropped by --resume
                raise WriteFailed.of(f"write {self.partial}", e) from None

    def finish(self) -> None:
        """Close and rename the partial file over `path` (atomic), then sync the folder."""
        self.close()
        os.replace(self.partial, self.path)
        _sync_dir(self.path.parent)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


_END = object()
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_safe(value: Any) -> Any:
    """A text cell a spreadsheet would evaluate (=, +, -, @, tab, CR first) gets a leading "'"
    (OWASP's CSV-injection rule), and so does one that starts with "'", so that `csv_unsafe`
    restores every cell exactly; numbers are left alone."""
    if isinstance(value, str) and value.startswith((*_FORMULA_START, "'")):
        return "'" + value
    return value


def csv_unsafe(cell: str) -> str:
    """The value `csv_safe` wrote as `cell`."""
    return cell[1:] if cell.startswith("'") else cell


def _csv_line(values: Sequence[Any]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer).writerow([csv_safe(v) for v in values])
    return buffer.getvalue()


class OutputConflict(ValueError):
    """The output exists (no --resume/--overwrite), was written with other settings, or is being
    written by another run."""


def _json_row(line: str) -> dict[str, Any] | None:
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        return None
    return row if isinstance(row, dict) and isinstance(row.get("path"), str) else None


def _sync(f: io.TextIOWrapper) -> None:
    f.flush()
    os.fsync(f.fileno())


def _sync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a folder be opened
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


_HELD_LOCKS: set[int] = set()  # descriptors of the locks this process holds


def _close_locks_in_child() -> None:
    # A forked child (a DataLoader decoding worker) shares the parent's flock; were it kept open,
    # a killed run's lock would live on until its workers noticed (~6 s) and block `--resume`.
    for fd in list(_HELD_LOCKS):
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD_LOCKS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_locks_in_child)


@contextlib.contextmanager
def exclusive(path: Path, what: str = "mmkit label") -> Iterator[None]:
    """Hold an advisory lock on `path` (two runs appending to one output would interleave rows).
    Held by this process only: children it forks close it, and it goes with the process on a kill."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no locking
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)  # CLOEXEC: not in exec'd children
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise OutputConflict(f"another {what} run is writing next to {path}") from None
        _HELD_LOCKS.add(fd)
        yield
        path.unlink(missing_ok=True)  # on success only: a crashed run's lock file is harmless
    finally:
        _HELD_LOCKS.discard(fd)
        os.close(fd)


OUTPUT_SUFFIXES = (".csv", ".json", ".jsonl")
PREDICTION_FIELDS = ["path", "label", "prob", "top_k_labels", "top_k_probs", "error"]


class PredictionFile:
    """`mmkit predict`'s rows streamed to a temporary file next to `out` as they come, renamed
    over `out` by `commit` (atomic: `out` is complete or absent, never half-written). Opening it
    is the check that `out` can be written, so an unwritable location fails before any work."""

    def __init__(self, out: str | os.PathLike) -> None:
        self.out = Path(out).expanduser()
        if self.out.suffix not in OUTPUT_SUFFIXES:
            raise ValueError(f"unsupported output {self.out}: use .csv, .json or .jsonl")
        try:
            fd, self.tmp = output_temp(self.out)
        except OSError as e:
            raise OutputConflict(f"cannot write predictions to {self.out}: {e.strerror or e}") from None
        self._file = os.fdopen(fd, "w", encoding="utf-8", newline="")
        self.counts = {"ok": 0, "failed": 0}
        self._write("" if self.out.suffix != ".csv" else _csv_line(PREDICTION_FIELDS))

    def _write(self, text: str) -> None:
        try:
            self._file.write(text)
        except OSError as e:
            self.abort()
            raise OutputConflict(f"writing {self.out} failed: {e.strerror or e}; nothing was written") from None

    def write(self, predictions: Iterable[Prediction]) -> None:
        lines = []
        for p in predictions:
            n = self.counts["ok"] + self.counts["failed"]
            self.counts["failed" if p.error else "ok"] += 1
            if self.out.suffix == ".csv":  # strings as `path_text`: a non-UTF-8 file name is written escaped
                lines.append(_csv_line(_text_values([
                    p.path, p.labels[0] if p.labels else "", p.probs[0] if p.probs else "",
                    "|".join(p.labels), "|".join(f"{x:.6f}" for x in p.probs), p.error or ""])))
            else:
                row = {k: path_text(v) if isinstance(v, str) else v for k, v in p.__dict__.items()}
                text = json.dumps(row, ensure_ascii=False, allow_nan=False)
                lines.append(("[\n" if not n else ",\n") + text if self.out.suffix == ".json" else text + "\n")
        self._write("".join(lines))

    def commit(self) -> dict[str, int]:
        """Finish the file and rename it over `out`; returns counts of ok/failed rows."""
        if self.out.suffix == ".json":
            self._write("\n]\n" if self.counts["ok"] + self.counts["failed"] else "[\n]\n")
        try:
            _sync(self._file)
            self._file.close()
            os.replace(self.tmp, self.out)
        except OSError as e:
            self.abort()
            raise OutputConflict(f"writing {self.out} failed: {e.strerror or e}; nothing was written") from None
        _sync_dir(self.out.parent)
        return self.counts

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self._file.close()
        self.tmp.unlink(missing_ok=True)


def write_predictions(predictions: Iterable[Prediction], out: str | os.PathLike) -> dict[str, int]:
    """Stream predictions to CSV (path,label,prob,top_k_labels,top_k_probs,error) or JSON/JSONL
    by extension, atomically (temp file + rename). Returns counts of ok/failed rows."""
    rows = PredictionFile(out)
    try:
        for p in predictions:
            rows.write([p])
    except BaseException:
        rows.abort()
        raise
    return rows.commit()
