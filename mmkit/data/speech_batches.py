"""Speech examples without Lightning: manifests (CSV with `path` and `text` columns, or JSONL), a
dataset of decoded utterances, length-bucketed batches (ESPnet/fairseq style) and the collate
function that turns audio into the model's log-Mel input and transcripts into teacher-forcing
token ids. `AudioManifestDataModule` (audio_manifest.py) wires them into Lightning.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from mmkit.audio import AudioLoadError, load_audio, log_mel_spectrogram, pad_or_trim
from mmkit.errors import quoted

log = logging.getLogger(__name__)

IGNORE_INDEX = -100  # target value that cross-entropy skips (prompt and padding positions)


@dataclass
class ManifestEntry:
    path: str  # absolute
    text: str
    duration: float | None = None  # seconds
    extra: dict[str, Any] = field(default_factory=dict)  # other manifest fields (voice, speaker, ...)


def read_manifest(path: str | Path, option: str | None = None) -> list[ManifestEntry]:
    """Entries of a `.csv` (header with `path`, `text`) or `.jsonl` manifest (UTF-8, with or
    without a byte-order mark, as Excel's "CSV UTF-8" writes). An optional `duration` field must
    be a finite number of seconds >= 0; it is checked, not trusted (`AudioManifestDataModule`
    reads durations from the audio headers). `option` (e.g. "train_manifest") names the data option
    that gave `path` in the messages of a path that is missing or a folder.

    Raises:
        FileNotFoundError: no manifest at `path`.
        IsADirectoryError: `path` is a folder.
        ValueError: (one line naming the file and line or entry) text that is not UTF-8, a
            malformed CSV/JSON line, a row without `path` or `text`, a bad `duration`, or an
            unknown extension.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        where = f"--data.init_args.{option} {path}" if option else f"manifest {path}"
        raise IsADirectoryError(f"{where} is a folder, not a manifest: give a .csv or .jsonl file that lists the "
                                "clips (path and text of each)")
    if not path.is_file():
        raise FileNotFoundError(f"--data.init_args.{option} {path}: no such file" if option
                                else f"manifest not found: {path}")
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".jsonl", ".json"):
        raise ValueError(f"{path}: manifests are .csv or .jsonl files")
    text = _read_utf8(path)
    if suffix == ".csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        try:
            rows = list(reader)
        except csv.Error as e:  # e.g. a field over csv.field_size_limit() characters
            raise ValueError(f"{path}:{reader.reader.line_num}: unreadable CSV ({e})") from None
    else:
        rows = []
        for n, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{n}: invalid JSON ({e})") from None
    entries = []
    for n, row in enumerate(rows, start=1):
        if not isinstance(row, dict) or not row.get("path") or row.get("text") is None:
            raise ValueError(f"{path}: entry {n} needs 'path' and 'text' fields, got {quoted(row)}")
        extra = {k: v for k, v in row.items() if k not in ("path", "text", "duration")}
        duration = _duration(row.get("duration"), path, n)
        entries.append(ManifestEntry(str((path.parent / row["path"]).expanduser().resolve()), str(row["text"]),
                                     duration, extra))
    return entries


def _read_utf8(path: Path) -> str:
    """The file's text (UTF-8, a leading byte-order mark dropped); not UTF-8 is one ValueError
    naming the line."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ValueError(f"{path}:{line}: not UTF-8 text (byte {data[e.start]:#04x} at offset {e.start}); "
                         "save the manifest as UTF-8") from None


def _duration(value: Any, path: Path, n: int) -> float | None:
    """A manifest `duration` (None when absent); non-numeric, non-finite or negative values are refused."""
    if value is None or value == "":
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = float("nan")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{path}: entry {n} has duration {quoted(value)}: give seconds >= 0, or leave it out")
    return seconds


class SpeechDataset(Dataset):
    """(audio (N,) float32 16 kHz, text, index) per manifest entry; a file that fails to load
    (NaN/inf samples, no samples, undecodable: `AudioLoadError`) gives a `SkippedSample` marker,
    which `SpeechCollator` drops (raising would end the DataLoader worker and the run)."""

    def __init__(self, entries: Sequence[ManifestEntry]) -> None:
        self.entries = list(entries)

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i: int) -> tuple[np.ndarray, str, int] | Any:
        e = self.entries[i]
        try:
            return load_audio(e.path), e.text, i
        except AudioLoadError as err:
            from mmkit.data.image_folder import SkippedSample  # the image modules' marker

            return SkippedSample(e.path, err.reason)


class LengthBucketBatchSampler(Sampler[list[int]]):
    """Batches of indices with similar `lengths`.

    Training (`shuffle=True`): per epoch, shuffle, sort within pools of `bucket_size` batches,
    shuffle the batches. Evaluation: sorted by length, longest first (a stable order). Under DDP
    each of `num_replicas` ranks takes every `num_replicas`-th batch of the same permutation.

    Args:
        lengths: one sortable length per item (seconds, frames, tokens).
        batch_size: items per batch.
        shuffle: training order (see above) instead of sorted.
        bucket_size: batches per sorting pool (larger: less padding, less randomness).
        seed: base of the per-epoch permutation (`set_epoch`, which Lightning calls).
        drop_last: drop a final smaller batch (training only).
    """

    def __init__(self, lengths: Sequence[float], batch_size: int, shuffle: bool = True, bucket_size: int = 50,
                 seed: int = 0, drop_last: bool = False, num_replicas: int = 1, rank: int = 0) -> None:
        if batch_size < 1 or bucket_size < 1:
            raise ValueError("batch_size and bucket_size must be >= 1")
        self.lengths, self.batch_size, self.shuffle = list(lengths), batch_size, shuffle
        self.bucket_size, self.seed, self.drop_last = bucket_size, seed, drop_last
        self.num_replicas, self.rank, self.epoch = num_replicas, rank, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> list[list[int]]:
        n, bs = len(self.lengths), self.batch_size
        if not self.shuffle:
            order = sorted(range(n), key=lambda i: -self.lengths[i])
            return [order[k:k + bs] for k in range(0, n, bs)]
        rng = random.Random(self.seed + self.epoch)
        order = list(range(n))
        rng.shuffle(order)
        pool = bs * self.bucket_size
        batches = []
        for start in range(0, n, pool):
            chunk = sorted(order[start:start + pool], key=lambda i: self.lengths[i])
            batches += [chunk[k:k + bs] for k in range(0, len(chunk), bs)]
        if self.drop_last:
            batches = [b for b in batches if len(b) == bs]
        rng.shuffle(batches)
        return batches

    def _rank_batches(self) -> list[list[int]]:
        batches = self._batches()
        if self.num_replicas > 1:  # the same count on every rank: DDP steps in lockstep
            per_rank = len(batches) // self.num_replicas if self.shuffle else -(-len(batches) // self.num_replicas)
            batches = (batches[self.rank::self.num_replicas] + batches[:1])[:per_rank]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._rank_batches())

    def __len__(self) -> int:
        return len(self._rank_batches())


def text_ids(tokenizer: Any, text: str) -> list[int]:
    """Token ids of a transcript: Whisper's BPE expects the text after a leading space (that is
    how its transcripts follow the prompt); a `CharTokenizer` marks words itself."""
    from mmkit.data.char_tokenizer import CharTokenizer

    return tokenizer.encode(text) if isinstance(tokenizer, CharTokenizer) else tokenizer.encode(" " + text.strip())


class SpeechCollator:
    """[(audio, text, index)] -> batch dict for a Whisper-style model.

    Returns:
        {"mel": (B, n_mels, 2·n_audio_ctx) log-Mel of the audio padded/trimmed to `n_samples`,
         "tokens": (B, T) decoder input = prompt + text ids (right-padded with eot),
         "targets": (B, T) the next token at each position (text ids + eot; IGNORE_INDEX at the
            prompt and padding),
         "texts": list of B transcripts, "indices": (B,) dataset indices,
         "skipped": [(path, reason)] of the items `SpeechDataset` could not load (dropped: the
            batch shrinks; each file is warned about once per process)};
        {"skipped": [...]} alone when no item of the batch loaded (the DataModule's
        `on_before_batch_transfer` lists them and hands the step None: it should do nothing).
    """

    def __init__(self, tokenizer: Any, prompt: Sequence[int], n_mels: int, n_samples: int) -> None:
        self.tokenizer, self.prompt, self.n_mels, self.n_samples = tokenizer, list(prompt), n_mels, n_samples

    def sequence(self, text: str) -> list[int]:
        """prompt + text ids + eot."""
        return self.prompt + text_ids(self.tokenizer, text) + [self.tokenizer.eot]

    def __call__(self, items: Sequence[tuple[np.ndarray, str, int] | Any]) -> dict[str, Any] | None:
        from mmkit.data.image_folder import SkippedSample, drop_skipped

        skipped = [(s.path, s.reason) for s in items if isinstance(s, SkippedSample)]
        items = drop_skipped(list(items))
        if not items:
            return {"skipped": skipped}
        audio = torch.stack([torch.from_numpy(pad_or_trim(np.ascontiguousarray(a), self.n_samples))
                             for a, _, _ in items])
        mel = log_mel_spectrogram(audio, n_mels=self.n_mels)  # (B, n_mels, n_samples // 160)
        seqs = [self.sequence(text) for _, text, _ in items]
        T = max(len(s) for s in seqs) - 1
        tokens = torch.full((len(seqs), T), self.tokenizer.eot, dtype=torch.long)
        targets = torch.full((len(seqs), T), IGNORE_INDEX, dtype=torch.long)
        p = len(self.prompt)
        for i, s in enumerate(seqs):
            tokens[i, :len(s) - 1] = torch.tensor(s[:-1])
            targets[i, p - 1:len(s) - 1] = torch.tensor(s[p:])  # from the last prompt token on
        return {"mel": mel, "tokens": tokens, "targets": targets, "texts": [t for _, t, _ in items],
                "indices": torch.tensor([i for _, _, i in items]), "skipped": skipped}
