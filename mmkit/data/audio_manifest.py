"""Speech DataModule over manifests: CSV (header with `path` and `text` columns) or JSONL (one
`{"path": ..., "text": ...}` object per line); relative paths are resolved against the manifest's
folder, an optional `duration` field (seconds) saves reading the file header.

Batches are bucketed by length (ESPnet/fairseq style): each epoch shuffles the utterances,
sorts them by duration within pools of `bucket_size` batches, and shuffles the batches, so a
batch holds utterances of similar length (little padding in the token sequences) while the
order stays random. The collate function turns audio into the model's log-Mel input and
transcripts into teacher-forcing token ids.
"""
from __future__ import annotations

import csv
import json
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pytorch_lightning as pl
import soundfile as sf
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from mmkit.audio import SAMPLE_RATE, load_audio, log_mel_spectrogram, pad_or_trim

log = logging.getLogger(__name__)

IGNORE_INDEX = -100  # target value that cross-entropy skips (prompt and padding positions)


@dataclass
class ManifestEntry:
    path: str  # absolute
    text: str
    duration: float | None = None  # seconds
    extra: dict[str, Any] = field(default_factory=dict)  # other manifest fields (voice, speaker, ...)


def read_manifest(path: str | Path) -> list[ManifestEntry]:
    """Entries of a `.csv` (header with `path`, `text`) or `.jsonl` manifest.

    Raises:
        FileNotFoundError: no manifest at `path`.
        ValueError: a row without `path` or `text`, or an unknown extension.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path}")
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    elif path.suffix.lower() in (".jsonl", ".json"):
        rows = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{n}: invalid JSON ({e})") from None
    else:
        raise ValueError(f"{path}: manifests are .csv or .jsonl files")
    entries = []
    for n, row in enumerate(rows, start=1):
        if not isinstance(row, dict) or not row.get("path") or row.get("text") is None:
            raise ValueError(f"{path}: entry {n} needs 'path' and 'text' fields, got {row!r}")
        extra = {k: v for k, v in row.items() if k not in ("path", "text", "duration")}
        duration = float(row["duration"]) if row.get("duration") not in (None, "") else None
        entries.append(ManifestEntry(str((path.parent / row["path"]).expanduser().resolve()), str(row["text"]),
                                     duration, extra))
    return entries


class SpeechDataset(Dataset):
    """(audio (N,) float32 16 kHz, text, index) per manifest entry."""

    def __init__(self, entries: Sequence[ManifestEntry]) -> None:
        self.entries = list(entries)

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i: int) -> tuple[np.ndarray, str, int]:
        e = self.entries[i]
        return load_audio(e.path), e.text, i


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
         "texts": list of B transcripts, "indices": (B,) dataset indices}.
    """

    def __init__(self, tokenizer: Any, prompt: Sequence[int], n_mels: int, n_samples: int) -> None:
        self.tokenizer, self.prompt, self.n_mels, self.n_samples = tokenizer, list(prompt), n_mels, n_samples

    def sequence(self, text: str) -> list[int]:
        """prompt + text ids + eot."""
        return self.prompt + text_ids(self.tokenizer, text) + [self.tokenizer.eot]

    def __call__(self, items: Sequence[tuple[np.ndarray, str, int]]) -> dict[str, Any]:
        audio = torch.stack([torch.from_numpy(pad_or_trim(np.ascontiguousarray(a), self.n_samples)) for a, _, _ in items])
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
                "indices": torch.tensor([i for _, _, i in items])}


class AudioManifestDataModule(pl.LightningDataModule):
    """Speech DataModule: manifests in, log-Mel + token batches out (see `SpeechCollator`).

    The model's input format (tokenizer, prompt, Mel bins, window length) is set with
    `configure_inputs`, which `SpeechRecognizer.setup` calls; until then `tokenizer` offers the
    data's own tokenizer for models trained from scratch. Utterances longer than the window or
    whose tokens do not fit the decoder are dropped, with a warning that counts them.

    Args:
        train_manifest, val_manifest, test_manifest: CSV/JSONL manifests (None: no such split).
        tokenizer: a `tokenizer.json` file or a checkpoint directory to read the tokenizer from;
            None: build one from the training transcripts (`tokenizer_type`).
        tokenizer_type: "char" or "bpe" (built tokenizers only).
        bpe_vocab_size: text tokens of a built BPE.
        batch_size: utterances per batch.
        num_workers: DataLoader worker processes (0: load in the main process).
        bucket_size: batches per length-sorting pool (1: plain shuffling within single batches).
        seed: length-bucketing shuffle seed.
    """

    def __init__(
        self,
        train_manifest: str | None = None,
        val_manifest: str | None = None,
        test_manifest: str | None = None,
        tokenizer: str | None = None,
        tokenizer_type: str = "char",
        bpe_vocab_size: int = 256,
        batch_size: int = 32,
        num_workers: int = 0,
        bucket_size: int = 50,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        # Read back from attributes, not hparams: a subclass's save_hyperparameters sees its own arguments.
        self.tokenizer_source, self.tokenizer_type, self.bpe_vocab_size = tokenizer, tokenizer_type, bpe_vocab_size
        self.batch_size, self.num_workers, self.bucket_size, self.seed = batch_size, num_workers, bucket_size, seed
        self.manifests = {"train": train_manifest, "val": val_manifest, "test": test_manifest}
        self.entries: dict[str, list[ManifestEntry]] = {}
        self.skipped: list[tuple[str, str]] = []  # (path, reason) of utterances left out
        self._tokenizer: Any = None
        self.collator: SpeechCollator | None = None
        self._limits: tuple[float, int] | None = None  # (max seconds, max tokens)

    # --- tokenizer and model input ----------------------------------------------------------------

    @property
    def tokenizer(self) -> Any:
        """The tokenizer the data is encoded with: `configure_inputs`'s, the one read from
        `tokenizer`, or one built from the training transcripts (on first use)."""
        if self._tokenizer is None:
            self._tokenizer = self._load_or_build_tokenizer()
        return self._tokenizer

    def _load_or_build_tokenizer(self) -> Any:
        from mmkit.data.char_tokenizer import TOKENIZER_FILE, CharTokenizer

        source = self.tokenizer_source
        if source:
            path = Path(source).expanduser()
            if path.is_file():
                return CharTokenizer.from_file(path)
            if (path / TOKENIZER_FILE).is_file():
                try:
                    return CharTokenizer.from_dir(path)
                except ValueError:  # a Whisper checkpoint's tokenizer.json
                    pass
            from mmkit.data.whisper_tokenizer import WhisperTokenizer

            return WhisperTokenizer.from_dir(path)
        if not self.manifests["train"]:
            raise ValueError("building a tokenizer needs train_manifest (or pass tokenizer=PATH)")
        texts = [e.text for e in read_manifest(self.manifests["train"])]
        tok = CharTokenizer.build(texts, self.tokenizer_type, self.bpe_vocab_size)
        log.info("built a %s tokenizer from %d transcripts: %d tokens", tok.kind, len(texts), tok.vocab_size)
        return tok

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    def configure_inputs(self, tokenizer: Any, prompt: Sequence[int], n_mels: int, n_samples: int,
                         max_tokens: int) -> None:
        """Encode for a model: `prompt` ids before each transcript, `n_mels`-bin log-Mel of audio
        padded/trimmed to `n_samples`; sequences longer than `max_tokens` are dropped."""
        self._tokenizer = tokenizer
        self.collator = SpeechCollator(tokenizer, prompt, n_mels, n_samples)
        self._limits = (n_samples / SAMPLE_RATE, max_tokens)
        self.entries, self.skipped = {}, []  # re-filter for the new limits

    # --- splits ----------------------------------------------------------------------------------

    def setup(self, stage: str | None = None) -> None:
        pass  # splits are read when their dataloader is built: after `configure_inputs`

    def split(self, name: str) -> list[ManifestEntry]:
        """The usable entries of a split (read, checked against the model's limits, cached)."""
        if name not in self.entries:
            if not self.manifests[name]:
                raise ValueError(f"no {name}_manifest given")
            self.entries[name] = self._usable(name, read_manifest(self.manifests[name]))
        return self.entries[name]

    def _usable(self, name: str, entries: list[ManifestEntry]) -> list[ManifestEntry]:
        max_seconds, max_tokens = self._limits or (float("inf"), 1 << 30)
        keep, too_long = [], 0
        for e in entries:
            if not Path(e.path).is_file():
                self.skipped.append((e.path, "file not found"))
                continue
            if e.duration is None:
                try:
                    e.duration = sf.info(e.path).duration
                except (RuntimeError, sf.SoundFileError, OSError) as err:  # unreadable: listed, not fatal
                    self.skipped.append((e.path, f"unreadable audio ({err})"))
                    continue
            if e.duration > max_seconds + 1e-3:
                too_long += 1
                continue
            if self.collator is not None:
                try:
                    n = len(self.collator.sequence(e.text))
                except ValueError as err:  # text the tokenizer cannot encode
                    self.skipped.append((e.path, str(err)))
                    continue
                if n > max_tokens:
                    too_long += 1
                    continue
            keep.append(e)
        if too_long or len(keep) + too_long < len(entries):
            log.warning("%s: using %d of %d utterances (%d longer than the model's %.1f s window or %d tokens, "
                        "%d unreadable or not encodable)", name, len(keep), len(entries), too_long, max_seconds,
                        max_tokens, len(entries) - len(keep) - too_long)
        if not keep:
            raise ValueError(f"{name}: no usable utterances in {self.manifests[name]}")
        return keep

    def _loader(self, name: str, shuffle: bool) -> DataLoader:
        if self.collator is None:
            raise RuntimeError("call configure_inputs(...) first (SpeechRecognizer.setup does)")
        entries = self.split(name)
        trainer = self.trainer
        replicas, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        sampler = LengthBucketBatchSampler([e.duration for e in entries], self.batch_size, shuffle,
                                           self.bucket_size, self.seed, drop_last=False,
                                           num_replicas=replicas, rank=rank)
        return DataLoader(SpeechDataset(entries), batch_sampler=sampler, collate_fn=self.collator,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
