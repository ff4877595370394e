"""Speech DataModule over manifests: CSV (header with `path` and `text` columns) or JSONL (one
`{"path": ..., "text": ...}` object per line); relative paths are resolved against the manifest's
folder. Durations come from the audio headers (read at setup); a manifest `duration` field is
checked (non-finite or negative: refused) and a value that disagrees with the file is warned about.

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
from mmkit.errors import quoted
from mmkit.data.speech_batches import (  # noqa: F401 - IGNORE_INDEX, read_manifest, text_ids re-exported
    IGNORE_INDEX, LengthBucketBatchSampler, ManifestEntry, SpeechCollator, SpeechDataset, read_manifest, text_ids,
)

log = logging.getLogger(__name__)
_SUMMARY_LISTED = 5  # left-out utterances named in a split's warning
_NO_TOKENIZER = ("no tokenizer encodes {what}: give --data.init_args.tokenizer (a trained run's "
                 "export_dir/tokenizer.json), --data.init_args.train_manifest to build one from its transcripts, or "
                 "--ckpt_path of a run trained on its own tokenizer")


class AudioManifestDataModule(pl.LightningDataModule):
    """Speech DataModule: manifests in, log-Mel + token batches out (see `SpeechCollator`).

    The model's input format (tokenizer, prompt, Mel bins, window length) is set with
    `configure_inputs`, which `SpeechRecognizer.setup` calls; until then `tokenizer` offers the
    data's own tokenizer for models trained from scratch. Utterances with an empty transcript,
    a missing, unreadable or empty audio file, text the tokenizer cannot encode, audio longer than
    the window or tokens that do not fit the decoder are left out, with one warning per split that
    counts them and names the first few (`skipped` lists all but the over-long). A file that fails
    only when decoded (NaN/inf samples) is dropped from its batch, warned about and added to
    `skipped`; a batch with no loadable item reaches the step as None (its files listed too).

    Args:
        train_manifest, val_manifest, test_manifest: CSV/JSONL manifests (val None: no validation;
            train/test None: that dataloader is an error).
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
        self.skipped: list[tuple[str, str]] = []  # (path, reason) of unusable utterances (not the over-long)
        self._load_skipped: set[str] = set()  # files dropped from batches at load time, already in `skipped`
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

    @property
    def tokenizer_origin(self) -> str | None:
        """Where `tokenizer` comes from: "given" (read from the `tokenizer` option), "built" (from the training
        transcripts) or None: neither, and a model trained from scratch encodes with its checkpoint's
        (`SpeechRecognizer` reads it from the checkpoint it resumes or tests)."""
        if self.tokenizer_source:
            return "given"
        return "built" if self.manifests["train"] else None

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
            raise ValueError(_NO_TOKENIZER.format(what="the data"))
        texts = [e.text for e in read_manifest(self.manifests["train"], "train_manifest")]
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
        """The usable entries of a split (read, checked against the model's limits, cached); no
        `val_manifest` is an empty validation split (no validation), other splits need theirs."""
        if name not in self.entries:
            if not self.manifests[name]:
                if name == "val":
                    return []
                raise ValueError(f"{name}_dataloader needs {name}_manifest: give --data.init_args.{name}_manifest "
                                 "(a .csv or .jsonl file that lists the clips)")
            self.entries[name] = self._usable(name, read_manifest(self.manifests[name], f"{name}_manifest"))
        return self.entries[name]

    def _usable(self, name: str, entries: list[ManifestEntry]) -> list[ManifestEntry]:
        """The entries that can be trained on: a transcript with characters the tokenizer keeps,
        a readable non-empty audio file (duration from its header) and the model's limits met.
        The others are summarised in one warning naming the first few; all but the over-long
        ones are appended to `skipped`. Transcripts that lose letters or digits to the
        tokenizer's normalisation ('café' -> 'caf') are kept, as normalised, with one warning."""
        max_seconds, max_tokens = self._limits or (float("inf"), 1 << 30)
        tok = self.collator.tokenizer if self.collator is not None else None
        keep: list[ManifestEntry] = []
        dropped: list[tuple[str, str]] = []  # (path, reason), over-long ones included
        mangled: list[tuple[ManifestEntry, str]] = []  # (entry, lost characters)
        misdated: list[tuple[ManifestEntry, float, float]] = []  # (entry, manifest, header duration)
        for e in entries:
            reason, too_long = self._check(e, tok, max_seconds, max_tokens, mangled, misdated), False
            if isinstance(reason, tuple):
                reason, too_long = reason[0], True
            if reason is None:
                keep.append(e)
                continue
            dropped.append((e.path, reason))
            if not too_long:
                self.skipped.append((e.path, reason))
        if dropped:
            listed = "; ".join(f"{path} ({reason})" for path, reason in dropped[:_SUMMARY_LISTED])
            more = f"; and {len(dropped) - _SUMMARY_LISTED} more" if len(dropped) > _SUMMARY_LISTED else ""
            log.warning("%s: left out %d of %d utterances: %s%s", name, len(dropped), len(entries), listed, more)
        if mangled:
            e, lost = mangled[0]
            log.warning("%s: %d transcripts lose letters/digits the tokenizer does not keep, trained on as "
                        "normalised, e.g. %s: %r -> %r (lost %r)", name, len(mangled), e.path, e.text,
                        tok.normalize(e.text), lost)
        if misdated:
            e, listed_s, seconds = misdated[0]
            log.warning("%s: %d manifest durations disagree with the audio files, e.g. %s: %g s listed, %.2f s "
                        "in the file; the files' are used", name, len(misdated), e.path, listed_s, seconds)
        if not keep:
            raise ValueError(f"{name}: no usable utterances in {self.manifests[name]}")
        return keep

    def _check(self, e: ManifestEntry, tok: Any, max_seconds: float, max_tokens: int,
               mangled: list, misdated: list) -> str | tuple[str] | None:
        """Why `e` cannot be used (None: it can; a 1-tuple: it is too long for the model); sets
        `e.duration` from the audio header, noting a manifest value that disagrees in `misdated`."""
        if not e.text.strip():
            return "empty transcript"
        if not Path(e.path).is_file():
            return "file not found"
        try:
            info = sf.info(e.path)
        except (RuntimeError, sf.SoundFileError, OSError) as err:  # unreadable: listed, not fatal
            return f"unreadable audio ({err})"
        if info.frames <= 0:
            return "empty audio (0 samples)"
        seconds = info.frames / info.samplerate
        if e.duration is not None and abs(e.duration - seconds) > max(0.1, 0.05 * seconds):
            misdated.append((e, e.duration, seconds))
        e.duration = seconds
        if seconds > max_seconds + 1e-3:
            return (f"{seconds:.1f} s, over the model's {max_seconds:.1f} s window",)
        if tok is None:
            return None
        try:
            n = len(self.collator.sequence(e.text))
        except ValueError as err:  # text the tokenizer cannot encode
            return str(err)
        if n == len(self.collator.prompt) + 1:  # no text tokens: every character normalised away
            return f"no characters the tokenizer keeps in {quoted(e.text)}"
        if n > max_tokens:
            return (f"{n} tokens, over the model's {max_tokens}",)
        lost = tok.lost_chars(e.text) if hasattr(tok, "lost_chars") else ""
        if lost:
            mangled.append((e, lost))
        return None

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Lists the files a batch dropped at load time (NaN/inf samples, ...) in `skipped`, once;
        a batch left with no item (the collator's bare {"skipped": ...}) becomes None."""
        if isinstance(batch, dict):
            for path, reason in batch.get("skipped", ()):
                if path not in self._load_skipped:
                    self._load_skipped.add(path)
                    self.skipped.append((path, reason))
            if "mel" not in batch:
                return None
        return batch

    def _loader(self, name: str, shuffle: bool) -> DataLoader:
        if self.collator is None and self._tokenizer is None and self.tokenizer_origin is None:
            if not self.manifests[name]:
                self.split(name)  # "test_dataloader needs test_manifest" (and no validation without one)
                return DataLoader([])
            read_manifest(self.manifests[name], f"{name}_manifest")  # a missing, folder or malformed one said first
            raise ValueError(_NO_TOKENIZER.format(what=f"{name}_manifest {self.manifests[name]}"))
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
