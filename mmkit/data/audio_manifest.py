"""Speech DataModule over manifests: CSV (header with `path` and `text` columns) or JSONL (one
`{"path": ..., "text": ...}` object per line); relative paths are resolved against the manifest's
folder, an optional `duration` field (seconds) saves reading the file header.

Batches are bucketed by length (ESPnet/fairseq style): each epoch shuffles the utterances,
sorts them by duration within pools of `bucket_size` batches, and shuffles the batches, so a
batch holds utterances of similar length (little padding in the token sequences) while the
order stays random. The collate function turns audio into the model's log-Mel input and
transcripts into teacher-forcing token ids (those pieces, without Lightning, are in speech_batches.py).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import pytorch_lightning as pl
import soundfile as sf
from torch.utils.data import DataLoader

from mmkit.audio import SAMPLE_RATE
from mmkit.data.speech_batches import (  # noqa: F401 - IGNORE_INDEX, read_manifest, text_ids re-exported
    IGNORE_INDEX, LengthBucketBatchSampler, ManifestEntry, SpeechCollator, SpeechDataset, read_manifest, text_ids,
)

log = logging.getLogger(__name__)

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
