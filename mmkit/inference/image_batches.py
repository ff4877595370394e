"""Image folders decoded in DataLoader workers for batch inference (`mmkit label`): uint8 crops
(a quarter of float32 to pass between processes) in file order, with each unreadable file's
reason instead of an exception, so one hostile file never ends a run over a folder.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from mmkit.data.images import ImageLoadError
from mmkit.data.transforms import EvalTransform


@dataclass
class ImageBatch:
    """What the DataLoader yields: positions in the file list with their pixels, and failures."""

    indices: list[int]
    images: Tensor | None  # (B, 3, S, S) uint8, None when every file in the batch failed
    failed: list[tuple[int, str]]  # (position, reason)

    def pin_memory(self) -> "ImageBatch":
        return ImageBatch(self.indices, None if self.images is None else self.images.pin_memory(), self.failed)


class ImageFiles(Dataset):
    """Files under `root` (relative paths) -> (position, uint8 pixels or the reason it failed)."""

    def __init__(self, root: str | os.PathLike, paths: Sequence[str], transform: EvalTransform) -> None:
        self.root, self.paths, self.transform = Path(root), list(paths), transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, Tensor | str]:
        try:
            return index, self.transform.load(self.root / self.paths[index])
        except ImageLoadError as e:
            return index, e.reason
        except Exception as e:  # noqa: BLE001 - one hostile file must not end a run over a folder
            return index, f"decoder error ({type(e).__name__}: {e})"


def collate(items: list[tuple[int, Tensor | str]]) -> ImageBatch:
    ok = [(i, x) for i, x in items if isinstance(x, Tensor)]
    failed = [(i, x) for i, x in items if not isinstance(x, Tensor)]
    images = torch.stack([x for _, x in ok]) if ok else None
    return ImageBatch([i for i, _ in ok], images, failed)


def default_workers() -> int:
    """Decoding workers: the cores but one, shared among the ranks a launcher runs on this machine, at most 8."""
    local_ranks = os.environ.get("LOCAL_WORLD_SIZE", "1")
    share = int(local_ranks) if local_ranks.isdigit() and int(local_ranks) > 0 else 1
    return max(1, min(8, ((os.cpu_count() or 2) - 1) // share))


def image_batches(root: str | os.PathLike, paths: Sequence[str], transform: EvalTransform, batch_size: int = 64,
                  num_workers: int = 2, pin_memory: bool = False) -> Iterator[ImageBatch]:
    """Decoded batches in file order. The workers start (and decode ahead, `prefetch_factor`
    batches each) as soon as this is called, so callers start it before loading the model."""
    loader = DataLoader(ImageFiles(root, paths, transform), batch_size=batch_size, num_workers=num_workers,
                        collate_fn=collate, pin_memory=pin_memory, prefetch_factor=2 if num_workers else None)
    return iter(loader)
