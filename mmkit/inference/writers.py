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
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence

if TYPE_CHECKING:
    from mmkit.inference.classifier import Prediction

log = logging.getLogger(__name__)


class ResumableWriter:
    """Rows of fixed `fields` to CSV (with a header) or JSONL, by `path`'s extension; crash-safe as
    the module docstring states (one row per path, for `mmkit label`): appends to `path`.partial with flush + fsync per `append`, and
    `finish` renames it over `path` atomically."""

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
        (the partial file, else the finished one) for which `keep(row)` is true."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        source = self.partial if self.partial.exists() else self.path
        tmp = self.partial.with_name(self.partial.name + ".tmp")
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            if self.csv:
                csv.writer(f).writerow(self.fields)
            if resume and source.exists():
                kept = [self._encode(row) for row in self.read(source) if keep(row)]
                f.write("".join(kept))
            _sync(f)
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
            if header is not None and header != self.fields:
                raise OutputConflict(f"{source} has columns {header}; this run writes {self.fields}. "
                                     "Use the same labels and options, or --overwrite")
            for record in reader:
                yield dict(zip(self.fields, record)) if len(record) == len(self.fields) else None
        except csv.Error:  # a quote left open by a cut-off write: the end of the file is that record
            yield None

    def _encode(self, row: dict[str, Any]) -> str:
        if self.csv:
            buffer = io.StringIO()
            csv.writer(buffer).writerow([row.get(k, "") for k in self.fields])
            return buffer.getvalue()
        return json.dumps({k: row.get(k, "") for k in self.fields}, ensure_ascii=False) + "\n"

    def append(self, rows: Sequence[dict[str, Any]]) -> None:
        """Write `rows` and make them durable (flush + fsync) before returning."""
        assert self._file is not None, "call start first"
        if rows:
            self._file.write("".join(self._encode(r) for r in rows))
            _sync(self._file)

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


@contextlib.contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """Hold an advisory lock on `path` (two runs appending to one output would interleave rows)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no locking
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise OutputConflict(f"another mmkit label run is writing next to {path}") from None
        yield
        path.unlink(missing_ok=True)  # on success only: a crashed run's lock file is harmless


OUTPUT_SUFFIXES = (".csv", ".json", ".jsonl")


def write_predictions(predictions: Iterable[Prediction], out: str | os.PathLike) -> dict[str, int]:
    """Stream predictions to CSV (path,label,prob,top_k_labels,top_k_probs,error) or JSON/JSONL
    by extension, atomically (temp file + rename). Returns counts of ok/failed rows."""
    out = Path(out).expanduser()
    if out.suffix not in OUTPUT_SUFFIXES:
        raise ValueError(f"unsupported output {out}: use .csv, .json or .jsonl")
    out.parent.mkdir(parents=True, exist_ok=True)
    counts = {"ok": 0, "failed": 0}
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="") as f:
            writer = csv.writer(f) if out.suffix == ".csv" else None
            if writer:
                writer.writerow(["path", "label", "prob", "top_k_labels", "top_k_probs", "error"])
            elif out.suffix == ".json":
                f.write("[")
            for n, p in enumerate(predictions):
                counts["failed" if p.error else "ok"] += 1
                if writer:
                    writer.writerow([p.path, p.labels[0] if p.labels else "", p.probs[0] if p.probs else "",
                                     "|".join(p.labels), "|".join(f"{x:.6f}" for x in p.probs), p.error or ""])
                else:
                    sep = ("," if n else "") + "\n" if out.suffix == ".json" else ""
                    f.write(sep + json.dumps(p.__dict__) + ("\n" if out.suffix == ".jsonl" else ""))
            if out.suffix == ".json":
                f.write("\n]\n")
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return counts
