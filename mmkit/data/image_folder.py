"""Image classification folders (``root/<class>/<images>``) as a LightningDataModule.

The layout and class ordering follow torchvision's ``ImageFolder``; training transforms come from
``timm.data.create_transform``, the eval one is ``mmkit.data.transforms.EvalTransform``. Unreadable files
are found by a header check in ``setup`` and kept out of the loaders; files that break later are dropped
batch by batch. Sizes are bounded (``check_image_size``): a typo cannot ask for an image no memory holds.
"""

from __future__ import annotations

import logging
import math
import os
import random
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl
import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform
from torch.utils.data import DataLoader, Dataset

from mmkit.data.images import IMAGE_EXTENSIONS, ImageLoadError, check_image, load_image, scan_images
from mmkit.data.sampling import order
from mmkit.data.transforms import EvalTransform

log = logging.getLogger(__name__)

Sample = tuple[Path, int]  # (file, class index); -1 for unlabelled prediction inputs
Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]

# Header checks are I/O-bound; threads overlap file-open latency (network filesystems).
_CHECK_THREADS = 8
_SUMMARY_LISTED = 5  # skipped files named in the setup summary; all are in `skipped`
_REPORTED_SKIPS: set[str] = set()  # per process, so a bad file warns once, not every epoch
# Largest network input side, in pixels. Classifiers take 224-518 (timm, open_clip), high-resolution
# ones (SAM, detection backbones) 1024-1536: 4096 leaves room for all of them, while one 4096² float32
# input is already 201 MB (a batch of 64, 13 GB). Past it a size is a typo: image_size 100000 asked
# for 120 GB per image and ended in a MemoryError deep in the resize.
MAX_IMAGE_SIDE = 4096
# Largest side the eval transform resizes to before its centre crop (image_size / crop_pct): a 0.5
# crop of the largest input; a tiny crop_pct would otherwise blow one image up just the same.
MAX_RESIZE_SIDE = 2 * MAX_IMAGE_SIDE


@dataclass(frozen=True)
class SkippedSample:
    """Returned by ImageFileDataset in place of a sample whose file failed to decode."""

    path: str
    reason: str


class ImageFileDataset(Dataset):
    """Decodes ``(path, target)`` samples; item ``i`` is ``(image, target, i)``.

    Args:
        samples: files and their class indices.
        transform: maps an RGB PIL image to a (C, H, W) float tensor.
    """

    def __init__(self, samples: Sequence[Sample], transform: Callable[[Image.Image], torch.Tensor]) -> None:
        self.samples = list(samples)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int] | SkippedSample:
        path, target = self.samples[index]
        try:
            image = load_image(path)
        except ImageLoadError as e:
            # Raising here would kill the DataLoader worker and the whole run.
            return SkippedSample(str(path), e.reason)
        return self.transform(image), target, index


def require_path(what: str, path: str | os.PathLike, folder: bool = True) -> Path:
    """`path` (user-expanded) if it is an existing folder (a file with folder=False); else a
    one-line ValueError naming `what`, e.g. "train_dir in/nope: no such folder"."""
    found = Path(path).expanduser()
    kind = "folder" if folder else "file"
    if not found.exists():
        raise ValueError(f"{what}: no such {kind}")
    if found.is_dir() != folder:
        raise ValueError(f"{what}: not a {kind}")
    return found


def check_image_size(image_size: int, crop_pct: float = 1.0) -> None:
    """Refuse, in one line, an input side or eval crop whose images could not be held: `image_size` in
    1..`MAX_IMAGE_SIDE`, `crop_pct` in (0, 1] with image_size / crop_pct (the side resized to before
    the centre crop) at most `MAX_RESIZE_SIDE`. Memory per image then stays bounded whatever the
    options (the training recipes use 32 to 224). Raises ValueError."""
    if isinstance(image_size, bool) or not isinstance(image_size, int) or not 1 <= image_size <= MAX_IMAGE_SIDE:
        raise ValueError(f"image_size must be an integer from 1 to {MAX_IMAGE_SIDE} (pixels a side), got "
                         f"{image_size!r}: larger inputs could not be held in memory")
    if not (isinstance(crop_pct, (int, float)) and 0.0 < crop_pct <= 1.0):  # also false for NaN
        raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct!r}")
    if image_size / crop_pct > MAX_RESIZE_SIDE:
        raise ValueError(f"image_size {image_size} / crop_pct {crop_pct} resizes images to "
                         f"{math.floor(image_size / crop_pct)} pixels a side before the centre crop; at most "
                         f"{MAX_RESIZE_SIDE}: raise crop_pct (timm uses 0.875-1.0)")


def summarise(items: Sequence[tuple[str, str]]) -> str:
    """`(name, reason)` pairs as one line: the first few named, the rest counted."""
    listed = "; ".join(f"{name} ({reason})" for name, reason in items[:_SUMMARY_LISTED])
    more = f"; and {len(items) - _SUMMARY_LISTED} more" if len(items) > _SUMMARY_LISTED else ""
    return listed + more


def keep_readable(samples: list[tuple], what: str, skipped: list[tuple[str, str]],
                  required: bool = False) -> list[tuple]:
    """The `(path, ...)` samples whose file passes check_image (checked in threads); the others are
    appended to `skipped` as (path, reason) and summarised in one warning naming `what`.

    Raises:
        ValueError: with `required`, when no sample is readable (one line naming `what` and why).
    """
    with ThreadPoolExecutor(_CHECK_THREADS) as pool:
        reasons = list(pool.map(_check_reason, [sample[0] for sample in samples]))
    bad = [(str(sample[0]), reason) for sample, reason in zip(samples, reasons) if reason]
    if bad:
        skipped.extend(bad)
        log.warning("skipped %d of %d files in %s: %s%s", len(bad), len(samples), what, summarise(bad),
                    " (all in .skipped)" if len(bad) > _SUMMARY_LISTED else "")
    kept = [sample for sample, reason in zip(samples, reasons) if reason is None]
    if required and not kept:
        raise ValueError(f"{what}: no readable images ({len(bad)} skipped: {summarise(bad)})" if bad
                         else f"{what}: no images found")
    return kept


def drop_skipped(batch: list) -> list:
    """The items of `batch` that are not SkippedSample markers; each skipped file is warned about
    once per process (collates of every DataModule share this)."""
    kept = []
    for item in batch:
        if not isinstance(item, SkippedSample):
            kept.append(item)
        elif item.path not in _REPORTED_SKIPS:
            _REPORTED_SKIPS.add(item.path)
            log.warning("skipping %s: %s", item.path, item.reason)
    return kept


def collate_skipping(batch: list[tuple[torch.Tensor, int, int] | SkippedSample]) -> Batch | None:
    """Stack a batch, dropping SkippedSample markers and warning once per file per process.

    Returns:
        ``(images, targets, indices)`` with shapes (B, C, H, W), (B,), (B,), where
        ``indices`` are positions in the dataset's ``samples``; or ``None`` when every
        sample in the batch was skipped, which a LightningModule step should treat as
        "nothing to do" (returning None from ``training_step`` skips the optimiser step).
    """
    kept = drop_skipped(batch)
    if not kept:
        return None
    images, targets, indices = zip(*kept)
    return torch.stack(images), torch.tensor(targets, dtype=torch.long), torch.tensor(indices, dtype=torch.long)


def stratified_split(targets: Sequence[int], fractions: Sequence[float], seed: int) -> list[list[int]]:
    """Deterministically split sample positions per class.

    Returns:
        ``[rest, part_1, ..., part_k]`` where part ``j`` holds about ``fractions[j-1]`` of
        each class; every class with two or more samples keeps at least one in ``rest``.
    """
    rng = random.Random(seed)
    by_class: dict[int, list[int]] = defaultdict(list)
    for position, target in enumerate(targets):
        by_class[target].append(position)
    parts: list[list[int]] = [[] for _ in range(len(fractions) + 1)]
    for target in sorted(by_class):
        members = by_class[target]
        rng.shuffle(members)
        start = 0
        for part, fraction in zip(parts[1:], fractions):
            count = max(0, min(round(len(members) * fraction), len(members) - start - 1))
            part.extend(members[start : start + count])
            start += count
        parts[0].extend(members[start:])
    return [sorted(part) for part in parts]


def list_classes(root: str | os.PathLike) -> list[str]:
    """Sorted names of the visible sub-folders of ``root`` (one listdir, no file scan)."""
    return sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))


def find_samples(root: str | os.PathLike, class_to_idx: dict[str, int]) -> list[Sample]:
    """All image files under ``root/<class>/`` (recursively), labelled by ``class_to_idx``."""
    samples: list[Sample] = []
    for name in list_classes(root):
        if name not in class_to_idx:
            raise ValueError(f"{root} has class folder {name!r}, not one of {sorted(class_to_idx)}")
        samples.extend((path, class_to_idx[name]) for path in scan_images(Path(root, name)))
    return samples


def _check_reason(path: Path) -> str | None:
    try:
        check_image(path)
    except ImageLoadError as e:
        return e.reason
    return None


class ImageFolderDataModule(pl.LightningDataModule):
    """Train/val/test class folders plus loose prediction inputs, with timm transforms.

    Class names are the sorted sub-folders of the first of ``train_dir``, ``val_dir``,
    ``test_dir`` that is set, read at construction so the CLI can link ``num_classes``
    and ``class_names``. Batches are ``(images, targets, indices)`` from
    :func:`collate_skipping`; for prediction, ``indices[i]`` names
    ``self.predict_files[indices[i]]`` (targets are -1).

    Args:
        train_dir / val_dir / test_dir: class-folder roots.
        predict_paths: files and/or folders (scanned recursively) to predict on.
        image_size: side of the square network input, in pixels (1 to `MAX_IMAGE_SIDE`, 4096: a
            larger one is a typo whose images could not be held; `check_image_size`).
        val_split: fraction of each train class held out for validation, when no val_dir (rounded per class,
            each class keeping one image for training; one that holds out no image at all is refused).
        hflip / scale / auto_augment: training augmentation, as in timm (e.g. "rand-m9-mstd0.5").
        mean / std: per-channel normalisation of 0..1 RGB.
        crop_pct: eval centre crop = image_size / crop_pct resize, then crop; in (0, 1], the resize
            at most `MAX_RESIZE_SIDE` pixels a side.
        interpolation: resize filter name understood by timm ("bicubic", "bilinear").
        seed: seed of the val_split draw.
    """

    def __init__(
        self,
        train_dir: str | None = None,
        val_dir: str | None = None,
        test_dir: str | None = None,
        predict_paths: list[str] | None = None,
        image_size: int = 224,
        batch_size: int = 64,
        num_workers: int = 2,
        val_split: float = 0.0,
        hflip: float = 0.5,
        scale: tuple[float, float] = (0.08, 1.0),
        auto_augment: str | None = None,
        mean: tuple[float, float, float] = IMAGENET_DEFAULT_MEAN,
        std: tuple[float, float, float] = IMAGENET_DEFAULT_STD,
        crop_pct: float = 0.875,
        interpolation: str = "bicubic",
        seed: int = 0,
    ) -> None:
        # 16 arguments, past the house ~12: they are the flat, CLI-visible knobs of timm's
        # transform factory, and grouping them would hide them from --print_config.
        super().__init__()
        if not 0.0 <= val_split < 1.0:
            raise ValueError(f"val_split must be in [0, 1), got {val_split}")
        if val_split > 0 and val_dir is not None:
            raise ValueError("give either val_dir or val_split, not both")
        check_image_size(image_size, crop_pct)  # before any transform is sized by them
        self.save_hyperparameters()
        self.dirs = {"train": train_dir, "val": val_dir, "test": test_dir}
        self.predict_paths = list(predict_paths or [])
        self.batch_size, self.num_workers = batch_size, num_workers
        self.val_split, self.seed = val_split, seed
        for split, folder in self.dirs.items():  # a missing folder named by its option, not just errno
            if folder is not None:
                require_path(f"{split}_dir {folder}", folder)
        first = next((d for d in self.dirs.values() if d is not None), None)
        self._class_names = list_classes(Path(first).expanduser()) if first else []
        if train_dir is not None and len(self._class_names) < 2:  # else a torchmetrics traceback at the first step
            raise ValueError(f"train_dir {train_dir} holds {len(self._class_names)} class folder(s) "
                             f"{self._class_names}: a classifier needs at least 2 (train_dir/<class>/<images>)")
        self.train_transform = create_transform(image_size, is_training=True, hflip=hflip, scale=scale,
                                                auto_augment=auto_augment, interpolation=interpolation,
                                                mean=mean, std=std)
        self.eval_transform = EvalTransform(image_size, tuple(mean), tuple(std), interpolation, crop_pct=crop_pct)
        self.samples: dict[str, list[Sample]] = {}  # split -> header-checked samples
        self.skipped: list[tuple[str, str]] = []  # (path, reason) of every file left out
        self.predict_files: list[str] = []
        self.predict_inputs: list[tuple[str, str | None]] = []  # every input in order, (path, reason it was skipped)

    @property
    def class_names(self) -> list[str]:
        return list(self._class_names)

    @property
    def num_classes(self) -> int:
        return len(self._class_names)

    def setup(self, stage: str | None = None) -> None:
        """Scan and cheaply check the files the stage needs (each split once per instance)."""
        splits = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("predict",)}
        wanted = splits.get(stage, ("train", "val", "test", "predict"))
        for split in wanted:
            if split not in self.samples:
                self._prepare(split)

    def _prepare(self, split: str) -> None:
        if split == "predict":
            candidates = self._predict_candidates()
            self.samples["predict"] = keep_readable(candidates, "predict_paths", self.skipped)
            self.predict_files = [str(path) for path, _ in self.samples["predict"]]
            reasons = dict(self.skipped)
            kept = {str(path) for path, _ in self.samples["predict"]}
            self.predict_inputs = [(str(p), None if str(p) in kept else reasons.get(str(p), "unreadable"))
                                   for p, _ in candidates]
        elif split == "val" and self.val_split > 0:
            self._prepare("train")  # the held-out part is carved from the checked train set
        elif self.dirs[split] is None:
            self.samples[split] = []
        else:
            what = f"{split}_dir {self.dirs[split]}"
            root = require_path(what, self.dirs[split])
            class_to_idx = {name: i for i, name in enumerate(self._class_names)}
            # Every folder the user named must yield something: a val_dir or test_dir of unreadable
            # files would otherwise mean no validation (no best checkpoint) or a test with no metrics.
            self.samples[split] = keep_readable(find_samples(root, class_to_idx), what, self.skipped,
                                                required=True)
            self._check_classes(split, what)
            if split == "train" and self.val_split > 0:
                self._hold_out()

    def _hold_out(self) -> None:
        """Carve `val_split` of each train class out for validation (`stratified_split`). A split that holds
        out nothing at all is refused in one line: the run would log no val metric and write no best checkpoint,
        and `--ckpt_path best` would fail only later. A class too small to give one is only warned about
        (`_check_classes`), as a val_dir lacking a class is: the other classes still make a score."""
        train = self.samples["train"]
        targets = [t for _, t in train]
        rest, held_out = stratified_split(targets, [self.val_split], self.seed)
        if not held_out:
            sizes = sorted(Counter(targets).values())
            per_class = f"{sizes[0]}" if sizes[0] == sizes[-1] else f"{sizes[0]} to {sizes[-1]}"
            # stratified_split keeps one image of each class for training: a class of one gives none.
            fix = (f"raise it to {1 / sizes[-1]:.2g} or more, or give val_dir" if sizes[-1] > 1
                   else "every class keeps its only image for training: give val_dir")
            raise ValueError(f"val_split {self.val_split} leaves no validation images ({per_class} per class, "
                             f"{len(train)} in all); {fix}")
        self.samples["train"] = [train[i] for i in rest]
        self.samples["val"] = [train[i] for i in held_out]
        self._check_classes("val", f"val_split {self.val_split}", lacking="no held-out images")

    def _check_classes(self, split: str, what: str, lacking: str = "no readable images") -> None:
        """Refuse a train split missing a class (the model would never see it, yet val could score
        1.0); only warn for val/test, where a small held-out set may lack one and is still a score."""
        present = {target for _, target in self.samples[split]}
        missing = [name for i, name in enumerate(self._class_names) if i not in present]
        if not missing:
            return
        message = f"{what}: {lacking} for class(es) {', '.join(missing)}"
        if split == "train":
            raise ValueError(f"{message}; every class needs training images (add some or remove the folder)")
        log.warning("%s; the %s scores cover the other classes only", message, split)

    def _predict_candidates(self) -> list[Sample]:
        """Every file named and every image under each folder named. A missing file beside others is a row with
        its error; when no named path exists at all (a typo), predicting is refused in one line. A folder with no
        images is warned about (a not-yet-filled folder); when no path yields anything, predicting would only
        write an empty table, so that is refused too."""
        entries = [Path(p).expanduser() for p in self.predict_paths]
        if entries and not any(os.path.lexists(entry) for entry in entries):  # typos, not unreadable inputs
            raise ValueError(f"predict_paths: no such file or folder: {', '.join(map(str, entries))}")
        candidates: list[Sample] = []
        empty: list[str] = []
        for entry in entries:
            # A named file is taken whatever its extension; a missing one shows up in `skipped`.
            paths = scan_images(entry) if entry.is_dir() else [entry]
            if not paths:
                empty.append(str(entry))
            candidates.extend((path, -1) for path in paths)
        if empty and not candidates:
            raise ValueError(f"predict_paths: no images found in {', '.join(empty)} (looked for "
                             f"{', '.join(sorted(IMAGE_EXTENSIONS))}, in subfolders too)")
        if empty:
            log.warning("predict_paths: no images found in %s", ", ".join(empty))
        return candidates

    def _loader(self, split: str, transform: Callable, shuffle: bool = False) -> DataLoader:
        # An empty val loader just means "no validation"; asking to test or predict on
        # nothing is a configuration mistake worth stopping for.
        if split == "test" and self.dirs["test"] is None:
            raise ValueError("test_dataloader needs test_dir")
        if split == "predict" and not self.predict_paths:
            raise ValueError("predict_dataloader needs predict_paths")
        if split not in self.samples:
            self.setup({"train": "fit", "val": "validate"}.get(split, split))
        dataset = ImageFileDataset(self.samples[split], transform)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            **order(dataset, shuffle),
            num_workers=self.num_workers,
            collate_fn=collate_skipping,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.train_transform, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.eval_transform)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.eval_transform)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict", self.eval_transform)
