"""Image-caption pairs as LightningDataModules: a CSV/TSV/JSONL table of (image path, caption)
rows, or a folder of images with side-car `.txt` captions (the img2dataset / webdataset layout,
`cat.jpg` + `cat.txt`). Images decode through `load_image` and unreadable files are skipped as
in `ImageFolderDataModule`; captions become CLIP BPE ids in the collate function.
"""
from __future__ import annotations

import csv
import json
import logging
import os
import random
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import pytorch_lightning as pl
import torch
from PIL import Image
from timm.data import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, create_transform
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from mmkit.data.image_folder import (SkippedSample, check_image_size, drop_skipped, keep_readable, require_path,
                                     summarise)
from mmkit.data.images import ImageLoadError, load_image, scan_images
from mmkit.data.sampling import order
from mmkit.data.text import CLIPTokenizer
from mmkit.data.transforms import CLIP_DEFAULTS, EvalTransform

log = logging.getLogger(__name__)

CaptionSample = tuple[Path, str]  # (image file, caption)


def _clean(caption: str) -> str:
    return re.sub(r"\s+", " ", caption).strip()


def _caption_or_reason(value: object) -> tuple[str, str | None]:
    """A row's caption, whitespace collapsed, and why it is unusable (None when it is not)."""
    if value is not None and not isinstance(value, str):  # a JSON list or number is not text
        return "", f"non-string caption ({type(value).__name__})"
    caption = _clean(value or "")
    return caption, None if caption else "empty caption"


def _report_dropped(source: object, dropped: list[tuple[str, str]], total: int, items: str) -> None:
    if dropped:
        log.warning("%s: dropped %d of %d %s: %s", source, len(dropped), total, items, summarise(dropped))


def _first_undecodable_line(path: Path) -> int:
    with open(path, "rb") as f:
        for n, line in enumerate(f, 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                return n
    return 0


def _csv_rows(f, path: Path, delimiter: str, keys: set[str]) -> list[tuple[int, dict]]:
    reader = csv.DictReader(f, delimiter=delimiter)
    try:
        missing = keys - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{path}: no column {sorted(missing)}; columns are {reader.fieldnames}")
        return [(reader.line_num, row) for row in reader]
    except csv.Error as e:  # e.g. a field past csv's 131,072-character limit, a NUL byte
        # DictReader.line_num is only updated after a good row; its reader's counts the failing line.
        raise ValueError(f"{path}:{reader.reader.line_num}: unreadable CSV record ({e})") from None


def _jsonl_rows(f, path: Path, image_key: str, caption_key: str) -> list[tuple[int, dict]]:
    rows = []
    for n, line in enumerate(f, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{n}: invalid JSON ({e.msg})") from None
        if not isinstance(row, dict) or image_key not in row or caption_key not in row:
            raise ValueError(f"{path}:{n}: expected an object with keys {image_key!r} and {caption_key!r}")
        rows.append((n, row))
    return rows


def read_caption_table(path: str | os.PathLike, image_key: str = "path", caption_key: str = "caption",
                       dropped: list[tuple[str, str]] | None = None) -> list[CaptionSample]:
    """Rows of a `.csv`, `.tsv` or `.jsonl` file -> (image path, caption) pairs.

    Relative image paths are relative to the table's folder. Rows with an empty or non-string
    caption are dropped with a warning (and appended to `dropped` as ("file:line", reason)); a
    missing column, a malformed JSON line or CSV record (e.g. a field over the csv module's
    131,072-character limit) or a file that is not UTF-8 raises ValueError naming the file and line.
    """
    path = Path(path).expanduser()
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".tsv", ".jsonl", ".ndjson"):
        raise ValueError(f"{path}: unsupported caption table; use .csv, .tsv or .jsonl")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:  # Excel's "CSV UTF-8" starts with a BOM
            if suffix in (".csv", ".tsv"):
                rows = _csv_rows(f, path, "\t" if suffix == ".tsv" else ",", {image_key, caption_key})
            else:
                rows = _jsonl_rows(f, path, image_key, caption_key)
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}:{_first_undecodable_line(path)}: not UTF-8 text ({e.reason}); "
                         "save it as UTF-8") from None
    kept, bad = [], []
    for n, row in rows:
        caption, reason = _caption_or_reason(row[caption_key])
        (bad.append((f"{path}:{n}", reason)) if reason else kept.append((path.parent / str(row[image_key]), caption)))
    _report_dropped(path, bad, len(rows), "rows")
    if dropped is not None:
        dropped.extend(bad)
    return kept


MAX_CAPTION_FILE_BYTES = 64 << 10  # far beyond what a text tower reads (77 tokens); more is not a caption


class _LongCaption(Exception):
    pass


def _read_caption_file(path: Path) -> str:
    """The UTF-8 text of a sidecar caption, read no further than MAX_CAPTION_FILE_BYTES + 1 bytes."""
    with open(path, "rb") as f:
        data = f.read(MAX_CAPTION_FILE_BYTES + 1)
    if len(data) > MAX_CAPTION_FILE_BYTES:
        raise _LongCaption(f".txt caption over {MAX_CAPTION_FILE_BYTES >> 10} KiB: not a caption")
    return data.decode("utf-8")


def find_sidecar_captions(root: str | os.PathLike,
                          dropped: list[tuple[str, str]] | None = None) -> list[CaptionSample]:
    """Images under `root` (recursively) that have a `.txt` file of the same stem next to them;
    the file's text, whitespace collapsed, is the caption. Images without a readable, non-empty
    one are left out with a warning (and appended to `dropped` as (image, reason))."""
    pairs, bad = [], []
    images = scan_images(Path(root).expanduser())
    for image in images:
        try:
            caption, reason = _caption_or_reason(_read_caption_file(image.with_suffix(".txt")))
        except _LongCaption as e:
            caption, reason = "", str(e)
        except FileNotFoundError:
            caption, reason = "", "no .txt caption"
        except (OSError, UnicodeDecodeError) as e:
            caption, reason = "", f"unreadable .txt caption: {getattr(e, 'strerror', None) or e}"
        (bad.append((str(image), reason)) if reason else pairs.append((image, caption)))
    _report_dropped(root, bad, len(images), "images")
    if dropped is not None:
        dropped.extend(bad)
    return pairs


class CaptionDataset(Dataset):
    """Decodes (path, caption) samples; item `i` is `(image, caption, i)` or a SkippedSample."""

    def __init__(self, samples: Sequence[CaptionSample], transform: Callable[[Image.Image], Tensor]) -> None:
        self.samples = list(samples)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, str, int] | SkippedSample:
        path, caption = self.samples[index]
        try:
            image = load_image(path)
        except ImageLoadError as e:
            return SkippedSample(str(path), e.reason)  # raising would kill the worker and the run
        return self.transform(image), caption, index


class CaptionCollate:
    """Stack images and tokenize captions; drops SkippedSample markers (warning once per file).

    Items are `(image, caption, index)` or `(image, caption, index, target)`, where target is a
    class index for zero-shot evaluation (-1 = none). Returns a dict with "images" (B, 3, H, W),
    "token_ids" (B, context_length) int64, "indices" (B,), "captions" (B strings) and, for
    4-tuples, "targets" (B,); or None when every item was skipped.
    """

    def __init__(self, tokenizer: CLIPTokenizer) -> None:
        self.tokenizer = tokenizer

    def __call__(self, batch: list) -> dict | None:
        kept = drop_skipped(batch)
        if not kept:
            return None
        columns = list(zip(*kept))
        out = {"images": torch.stack(columns[0]), "token_ids": self.tokenizer(list(columns[1])),
               "indices": torch.tensor(columns[2], dtype=torch.long), "captions": list(columns[1])}
        if len(columns) > 3:
            out["targets"] = torch.tensor(columns[3], dtype=torch.long)
        return out


class _CaptionDataModule(pl.LightningDataModule):
    """Shared loaders of the caption DataModules; subclasses set `sources` and `_read` them."""

    zeroshot_labels: list[str] | None = None  # no class labels: zero-shot eval needs its own
    zeroshot_templates: list[str] | None = None

    def __init__(self, image_size: int, batch_size: int, num_workers: int, context_length: int,
                 val_split: float, scale: tuple[float, float], interpolation: str | None, seed: int) -> None:
        super().__init__()
        if not 0.0 <= val_split < 1.0:
            raise ValueError(f"val_split must be in [0, 1), got {val_split}")
        check_image_size(image_size)  # a typo's size would be met only in the first batch, as a MemoryError
        self.batch_size, self.num_workers, self.val_split, self.seed = batch_size, num_workers, val_split, seed
        self.tokenizer = CLIPTokenizer(context_length=context_length)
        self.image_size, self.scale = image_size, scale
        self.interpolation_chosen = interpolation is not None  # else the model's own (`normalize_as`)
        self._transforms(EvalTransform(image_size, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD,
                                       interpolation or CLIP_DEFAULTS["interpolation"]))
        self.samples: dict[str, list[CaptionSample]] = {}
        self.skipped: list[tuple[str, str]] = []  # (path, reason) of every file left out

    sources: dict[str, str | None]  # split -> table file or folder, set by the subclass
    _kind: str  # "file" or "dir": the arguments are named <split>_<kind>, for error messages
    _items: str  # what a source lists ("rows", "images"), for error messages

    def _read(self, source: str, what: str, dropped: list[tuple[str, str]]) -> list[CaptionSample]:
        """The split's samples; `what` names the argument and value in errors; unusable items are
        appended to `dropped` as (item, reason)."""
        raise NotImplementedError

    @property
    def interpolation(self) -> str:
        """The resize filter of both transforms."""
        return self.eval_transform.interpolation

    def _transforms(self, eval_transform: EvalTransform) -> None:
        """Validation's transform and training's with the same statistics and resize filter. No flips: captions
        say "left" and "right". CLIP's mild random-resized crop."""
        self.eval_transform = eval_transform
        self.train_transform = create_transform(self.image_size, is_training=True, hflip=0.0, scale=self.scale,
                                                ratio=(3 / 4, 4 / 3), interpolation=eval_transform.interpolation,
                                                mean=eval_transform.mean, std=eval_transform.std)

    def normalize_as(self, preprocess: dict) -> dict:
        """Normalise, and resize for evaluation, as a fine-tuned model was pretrained (`CLIPTask.setup`): the mean,
        std and resize_mode its import recorded (SigLIP: 0.5 and squash), over OpenAI's statistics and the short
        side, and its resize filter (AIMv2's, PE's bilinear) unless `interpolation` was given, as open_clip's
        training takes the pretrained model's own preprocess config. Returns those changed."""
        transform, changed = self.eval_transform.normalized_as(preprocess, interpolation=not self.interpolation_chosen)
        if changed:  # training's random crops resize with the model's filter too
            self._transforms(transform)
        return changed

    def inference_metadata(self) -> dict:
        """What an exported checkpoint needs to preprocess like validation did."""
        t = self.eval_transform
        return {"image_size": self.image_size, "crop_pct": 1.0, "interpolation": self.interpolation,
                "mean": list(t.mean), "std": list(t.std), "resize_mode": t.resize_mode,
                "context_length": self.tokenizer.context_length}

    def setup(self, stage: str | None = None) -> None:
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}.get(stage, ("train", "val", "test"))
        for split in wanted:
            if split not in self.samples:
                self._prepare(split)

    def _prepare(self, split: str) -> None:
        source = self.sources[split]
        if split == "val" and source is None and self.val_split > 0:
            self._prepare("train")  # carved from the checked train set
            return
        samples = [] if source is None else self._checked(split, source)
        if split == "train" and self.val_split > 0 and self.sources["val"] is None:
            samples, self.samples["val"] = self._hold_out(samples)
        self.samples[split] = samples

    def _hold_out(self, train: list[CaptionSample]) -> tuple[list[CaptionSample], list[CaptionSample]]:
        """Split `val_split` of the train rows off for validation, refusing in one line a split that leaves either
        side empty: no validation rows meant no val metric and no best checkpoint (`--ckpt_path best` failed later),
        no training rows a sampler traceback. ImageFolderDataModule clamps instead, keeping a training image of each
        class so that every class is trained; rows have no classes, and clamping to one training row would train
        nothing (a batch of one has nothing to contrast: its contrastive loss is 0)."""
        count, items, option = len(train), self._items, f"val_{self._kind}"
        held_count = round(count * self.val_split)
        if held_count == 0:  # a single row has no val_split that leaves one on each side
            fix = f"raise it to {1 / count:.2g} or more, or give {option}" if count > 1 else f"give {option}"
            raise ValueError(f"val_split {self.val_split} leaves no validation {items} ({count} in all); {fix}")
        if held_count == count:
            fix = f"lower it or give {option}" if count > 1 else f"give {option}"  # one row: no split keeps both
            raise ValueError(f"val_split {self.val_split} leaves no training {items} (all {count} held out for "
                             f"validation); {fix}")
        order = list(range(count))
        random.Random(self.seed).shuffle(order)
        held = set(order[:held_count])
        return [s for i, s in enumerate(train) if i not in held], [s for i, s in enumerate(train) if i in held]

    def _checked(self, split: str, source: str) -> list[CaptionSample]:
        """The split's readable samples; a split the user gave left with none is a one-line ValueError naming
        its option (a val or test table of unreadable files would mean no validation or a test without
        metrics)."""
        what, dropped = f"{split}_{self._kind} {source}", []
        found = self._read(source, what, dropped)
        if not found:
            raise ValueError(f"{what}: no usable {self._items} ({len(dropped)} dropped: {summarise(dropped)})"
                             if dropped else f"{what}: no {self._items}")
        return keep_readable(found, what, self.skipped, required=True)

    def _loader(self, split: str, shuffle: bool = False) -> DataLoader:
        if split == "test" and self.sources["test"] is None:
            raise ValueError(f"test_dataloader needs test_{self._kind}")
        if split not in self.samples:
            self.setup({"train": "fit", "val": "validate"}.get(split, split))
        transform = self.train_transform if split == "train" else self.eval_transform
        dataset = CaptionDataset(self.samples[split], transform)
        return DataLoader(dataset, batch_size=self.batch_size, **order(dataset, shuffle), num_workers=self.num_workers,
                          collate_fn=CaptionCollate(self.tokenizer),
                          persistent_workers=self.num_workers > 0, pin_memory=torch.cuda.is_available(),
                          drop_last=split == "train" and len(self.samples[split]) > self.batch_size)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")


class CaptionTableDataModule(_CaptionDataModule):
    """(image, caption) pairs listed in CSV/TSV/JSONL tables (see `read_caption_table`).

    Batches are dicts from `CaptionCollate`. Contrastive training drops the last incomplete train
    batch (a tiny batch is a weak contrastive signal and would unbalance DDP ranks).

    Args:
        train_file / val_file / test_file: caption tables; paths inside relative to each table.
        image_key / caption_key: the columns (CSV) or keys (JSONL) of image path and caption.
        image_size: side of the square network input, in pixels.
        context_length: tokens per caption (at most the text tower's max_len).
        val_split: fraction of the train rows held out for validation when there is no val_file; one that
            rounds to no validation or no training rows is refused.
        scale: RandomResizedCrop area range for training (CLIP's mild (0.9, 1.0); no flips).
        interpolation: resize filter name ("bicubic", "bilinear"); None (default): the fine-tuned model's own, as
            its import recorded it (`CLIP.preprocess`), else bicubic (OpenAI's and most open_clip models').
        seed: seed of the val_split draw.
    """

    _kind, _items = "file", "rows"

    def __init__(
        self,
        train_file: str | None = None,
        val_file: str | None = None,
        test_file: str | None = None,
        image_key: str = "path",
        caption_key: str = "caption",
        image_size: int = 224,
        batch_size: int = 64,
        num_workers: int = 2,
        context_length: int = 77,
        val_split: float = 0.0,
        scale: tuple[float, float] = (0.9, 1.0),
        interpolation: str | None = None,
        seed: int = 0,
    ) -> None:
        # 13 arguments: the flat, CLI-visible knobs (grouping them would hide them from --print_config).
        super().__init__(image_size, batch_size, num_workers, context_length, val_split, scale, interpolation, seed)
        self.save_hyperparameters()
        self.sources = {"train": train_file, "val": val_file, "test": test_file}
        self.image_key, self.caption_key = image_key, caption_key

    def _read(self, source: str, what: str, dropped: list[tuple[str, str]]) -> list[CaptionSample]:
        return read_caption_table(require_path(what, source, folder=False), self.image_key, self.caption_key,
                                  dropped)


class SidecarCaptionDataModule(_CaptionDataModule):
    """Folders of images with side-car `.txt` captions (see `find_sidecar_captions`).

    Args:
        train_dir / val_dir / test_dir: folders, scanned recursively.
        other arguments: as `CaptionTableDataModule`.
    """

    _kind, _items = "dir", "images"

    def __init__(
        self,
        train_dir: str | None = None,
        val_dir: str | None = None,
        test_dir: str | None = None,
        image_size: int = 224,
        batch_size: int = 64,
        num_workers: int = 2,
        context_length: int = 77,
        val_split: float = 0.0,
        scale: tuple[float, float] = (0.9, 1.0),
        interpolation: str | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(image_size, batch_size, num_workers, context_length, val_split, scale, interpolation, seed)
        self.save_hyperparameters()
        self.sources = {"train": train_dir, "val": val_dir, "test": test_dir}

    def _read(self, source: str, what: str, dropped: list[tuple[str, str]]) -> list[CaptionSample]:
        return find_sidecar_captions(require_path(what, source), dropped)
