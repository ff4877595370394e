"""Offline recipe dataset: captioned synthetic shapes for contrastive image-text training.

Every image is one shape x colour x position x size (5 x 7 x 5 x 2), drawn with PIL (4x supersampled) with
jittered hue, place, size and rotation, and captioned compositionally ("a small red circle on
the left"). Some colour-shape *pairs* are held out of training entirely (each colour and each
shape is still seen with the others), so zero-shot accuracy on them measures composition, in
the spirit of compositional zero-shot benchmarks (e.g. CLEVR-CoGenT's held-out attribute pairs).
Nothing is downloaded: samples are rendered on the fly, deterministically from (seed, split, i).
"""
from __future__ import annotations

import itertools
import json
import math
import os
import random
from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl
from PIL import Image, ImageDraw
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from mmkit.data.captions import CaptionCollate
from mmkit.data.sampling import order
from mmkit.data.text import CLIPTokenizer
from mmkit.data.transforms import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, EvalTransform

SHAPES = ("circle", "square", "triangle", "star", "cross")
# RGB 0..255 before jitter. Seven hues, so that each shape is seen in training in at least five
# colours spanning all three channels: with five, shape features stayed entangled with colour.
COLOURS = {"red": (220, 45, 45), "orange": (245, 140, 30), "yellow": (235, 215, 40), "green": (40, 170, 60),
           "cyan": (40, 200, 210), "blue": (50, 90, 235), "purple": (150, 60, 200)}
# Shape centre as a fraction of the image side (x, y), and the phrase that names the place.
POSITIONS = {"left": ((0.27, 0.5), "on the left"), "right": ((0.73, 0.5), "on the right"),
             "top": ((0.5, 0.27), "at the top"), "bottom": ((0.5, 0.73), "at the bottom"),
             "centre": ((0.5, 0.5), "in the centre")}
# Shape extent as a fraction of the image side: at 32 px a small shape spans ~10 pixels, about
# what a 8-pixel patch grid needs to tell a star from a triangle.
SIZES = {"small": 0.3, "large": 0.5}
_SUPERSAMPLE = 4  # draw at 4x and downsample: antialiased edges without an extra dependency
# Per sample: RGB steps per channel, brightness factor range, fraction of the side, relative size,
# degrees; the background is a random dark grey with a per-channel tint.
_JITTER = dict(colour=15, brightness=(0.85, 1.05), place=0.03, size=0.08, angle=15.0, background=(15, 70), tint=10)

ZEROSHOT_TEMPLATES = ("a {}",)  # the bare colour-shape caption the training captions include


@dataclass(frozen=True)
class Shape:
    """One attribute combination."""

    shape: str
    colour: str
    position: str
    size: str

    @property
    def pair(self) -> str:
        """The colour-shape label, e.g. "red circle"."""
        return f"{self.colour} {self.shape}"

    def caption(self, rng: random.Random | None = None, dropout: float = 0.0) -> str:
        """ "a small red circle on the left". With `dropout`, size and place are each left out with
        that probability (so bare "a red circle" prompts are in the training distribution), and
        with half of it the colour ("a small circle ...") or the shape ("a small red shape ...").

        Captions that name the shape without its colour, or the colour without the shape, are what
        makes composition learnable: without them both towers can treat "green triangle" as one
        entangled concept, and a held-out pair is then mistaken for a seen one (measured: held-out
        accuracy 58% vs 95% on seen pairs, the errors all of shape)."""
        drop = (lambda p: rng.random() < p) if rng is not None and dropout > 0 else (lambda p: False)
        size = "" if drop(dropout) else f"{self.size} "
        place = "" if drop(dropout) else f" {POSITIONS[self.position][1]}"
        colour, shape = f"{self.colour} ", self.shape
        if drop(dropout / 2):
            colour, shape = ("", shape) if drop(0.5) else (colour, "shape")
        return f"a {size}{colour}{shape}{place}"


def all_pairs() -> list[str]:
    """Every colour-shape label, colour-major: the zero-shot classes."""
    return [f"{c} {s}" for c in COLOURS for s in SHAPES]


def default_held_out() -> list[str]:
    """One pair per colour along a shifted diagonal, so every shape is held out once or twice:
    red square, orange triangle, yellow star, green cross, cyan circle, blue square, purple
    triangle. Each held-out colour is seen in training with the four other shapes, each held-out
    shape with at least five other colours."""
    return [f"{c} {SHAPES[(i + 1) % len(SHAPES)]}" for i, c in enumerate(COLOURS)]


def combinations(pairs: set[str] | None = None, exclude: set[str] | None = None) -> list[Shape]:
    """All shape x colour x position x size combinations whose colour-shape pair is in `pairs`
    (None = any) and not in `exclude`."""
    out = [Shape(s, c, p, z) for c, s, p, z in itertools.product(COLOURS, SHAPES, POSITIONS, SIZES)]
    return [x for x in out if (pairs is None or x.pair in pairs) and x.pair not in (exclude or set())]


def _polygon(shape: str, radius: float) -> list[tuple[float, float]]:
    """Unit-centred outline of a polygonal shape with circumradius `radius`."""
    if shape == "square":
        r = radius / math.sqrt(2)
        return [(-r, -r), (r, -r), (r, r), (-r, r)]
    if shape == "triangle":
        return [(radius * math.cos(a), radius * math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    if shape == "star":
        return [((radius if k % 2 == 0 else 0.45 * radius) * math.cos(-math.pi / 2 + k * math.pi / 5),
                 (radius if k % 2 == 0 else 0.45 * radius) * math.sin(-math.pi / 2 + k * math.pi / 5))
                for k in range(10)]
    if shape == "cross":
        a, w = radius, radius * 0.36
        return [(-w, -a), (w, -a), (w, -w), (a, -w), (a, w), (w, w), (w, a), (-w, a), (-w, w), (-a, w), (-a, -w),
                (-w, -w)]
    raise ValueError(f"unknown shape {shape!r}")


def render(spec: Shape, image_size: int, rng: random.Random, background: int | None = None) -> Image.Image:
    """Draw `spec` on a dark background with jittered colour, place, size and rotation. The background
    is a random tinted dark grey, or the plain grey level `background` (0..255) when given; the
    random draws are the same either way, so the shape itself does not change with it."""
    side = image_size * _SUPERSAMPLE
    grey, tint = rng.randint(*_JITTER["background"]), _JITTER["tint"]
    fill = tuple(grey + rng.randint(-tint, tint) for _ in range(3))
    image = Image.new("RGB", (side, side), fill if background is None else (background,) * 3)
    draw = ImageDraw.Draw(image)
    gain = rng.uniform(*_JITTER["brightness"])
    colour = tuple(max(0, min(255, round(v * gain) + rng.randint(-_JITTER["colour"], _JITTER["colour"])))
                   for v in COLOURS[spec.colour])
    (fx, fy), _ = POSITIONS[spec.position]
    cx = (fx + rng.uniform(-_JITTER["place"], _JITTER["place"])) * side
    cy = (fy + rng.uniform(-_JITTER["place"], _JITTER["place"])) * side
    radius = SIZES[spec.size] * (1 + rng.uniform(-_JITTER["size"], _JITTER["size"])) * side / 2
    if spec.shape == "circle":
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=colour)
    else:
        angle = math.radians(rng.uniform(-_JITTER["angle"], _JITTER["angle"]))
        cos, sin = math.cos(angle), math.sin(angle)
        draw.polygon([(cx + x * cos - y * sin, cy + x * sin + y * cos) for x, y in _polygon(spec.shape, radius)],
                     fill=colour)
    return image.resize((image_size, image_size), Image.Resampling.BOX)


class ShapesDataset(Dataset):
    """`num_samples` rendered samples cycling over `combos` (balanced); item `i` is
    `(image, caption, i, target)` with target the index of its colour-shape pair in
    `all_pairs()`. Sample i is the same every time (seeded by seed, split and i). `background`:
    see `render` (None = random tinted dark grey)."""

    def __init__(self, combos: list[Shape], num_samples: int, image_size: int, transform, split: str,
                 seed: int = 0, caption_dropout: float = 0.0, background: int | None = None) -> None:
        if not combos:
            raise ValueError(f"no attribute combinations for the {split} split")
        self.combos, self.num_samples, self.image_size = combos, num_samples, image_size
        self.transform, self.split, self.seed, self.caption_dropout = transform, split, seed, caption_dropout
        if background is not None and not 0 <= background <= 255:
            raise ValueError(f"background must be a grey level in [0, 255], got {background}")
        self.background = background
        self._pair_index = {p: i for i, p in enumerate(all_pairs())}

    def __len__(self) -> int:
        return self.num_samples

    def sample(self, index: int) -> tuple[Image.Image, str, Shape]:
        """The PIL image, caption and attributes of item `index`."""
        rng = random.Random(f"{self.seed}-{self.split}-{index}")  # str seeds are stable across processes
        spec = self.combos[index % len(self.combos)]
        return render(spec, self.image_size, rng, self.background), spec.caption(rng, self.caption_dropout), spec

    def __getitem__(self, index: int) -> tuple[Tensor, str, int, int]:
        image, caption, spec = self.sample(index)
        return self.transform(image), caption, index, self._pair_index[spec.pair]


class ShapesDataModule(pl.LightningDataModule):
    """Captioned shapes with held-out colour-shape pairs: train on the other pairs (all
    positions and sizes), validate and test on unseen draws of the held-out pairs only.

    Batches are `CaptionCollate` dicts whose "targets" index `zeroshot_labels` (every
    colour-shape pair), so `ZeroShotEvaluation` measures: given an image of a never-seen
    pair, pick its colour and shape among all 35 pair prompts "a {colour} {shape}".

    Args:
        image_size: side of the rendered square images, in pixels.
        train_samples / val_samples / test_samples: samples per split (one epoch of train).
        held_out: colour-shape pairs kept out of training ("red square", ...); None =
            `default_held_out()`.
        caption_dropout: probability of leaving size, and separately place, out of a training
            caption; colour or shape is left out with half of it (see `Shape.caption`).
        batch_size, num_workers: DataLoader settings.
        context_length: tokens per caption (the captions need about 10).
        seed: seed of the rendering.
    """

    def __init__(
        self,
        image_size: int = 32,
        train_samples: int = 20_000,
        val_samples: int = 500,
        test_samples: int = 1_000,
        held_out: list[str] | None = None,
        caption_dropout: float = 0.5,
        batch_size: int = 128,
        num_workers: int = 0,
        context_length: int = 16,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.held_out = list(default_held_out() if held_out is None else held_out)
        unknown = set(self.held_out) - set(all_pairs())
        if unknown:
            raise ValueError(f"unknown colour-shape pairs {sorted(unknown)}; pairs look like 'red circle'")
        self.image_size, self.batch_size, self.num_workers = image_size, batch_size, num_workers
        self.tokenizer = CLIPTokenizer(context_length=context_length)
        # Shapes are drawn at the network's size; the eval transform (also the demo's) only
        # resizes other inputs. No augmentation: jitter is in the rendering, flips would swap sides.
        self.transform = EvalTransform(image_size, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, "bicubic")
        held = set(self.held_out)
        self.datasets = {
            "train": ShapesDataset(combinations(exclude=held), train_samples, image_size, self.transform, "train",
                                   seed, caption_dropout),
            "val": ShapesDataset(combinations(pairs=held), val_samples, image_size, self.transform, "val", seed),
            "test": ShapesDataset(combinations(pairs=held), test_samples, image_size, self.transform, "test", seed),
        }

    @property
    def zeroshot_labels(self) -> list[str]:
        return all_pairs()

    @property
    def zeroshot_templates(self) -> list[str]:
        return list(ZEROSHOT_TEMPLATES)

    def normalize_as(self, preprocess: dict) -> dict:
        """Normalise, and resize other inputs, as a fine-tuned model was pretrained (`CLIPTask.setup`; the caption
        data modules' rule): its recorded mean, std, resize_mode and resize filter. Returns those changed."""
        self.transform, changed = self.transform.normalized_as(preprocess, interpolation=True)
        for dataset in self.datasets.values():
            dataset.transform = self.transform
        return changed

    def inference_metadata(self) -> dict:
        """Preprocessing and zero-shot defaults for an exported checkpoint (and the demo)."""
        t = self.transform
        return {"image_size": self.image_size, "crop_pct": 1.0, "interpolation": t.interpolation,
                "mean": list(t.mean), "std": list(t.std), "resize_mode": t.resize_mode,
                "context_length": self.tokenizer.context_length, "zeroshot_labels": self.zeroshot_labels,
                "zeroshot_templates": self.zeroshot_templates, "held_out_pairs": self.held_out}

    def _loader(self, split: str) -> DataLoader:
        return DataLoader(self.datasets[split], batch_size=self.batch_size,
                          **order(self.datasets[split], split == "train"),
                          drop_last=split == "train", num_workers=self.num_workers,
                          collate_fn=CaptionCollate(self.tokenizer), persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")


def write_shapes_folder(root: str | os.PathLike, num_samples: int, split: str = "train", image_size: int = 64,
                        held_out: list[str] | None = None, seed: int = 0) -> Path:
    """Write `num_samples` shapes as `root/NNNNN.png` with side-car `NNNNN.txt` captions (the
    layout `SidecarCaptionDataModule` reads) and a `captions.jsonl` index (`CaptionTableDataModule`).

    "train" draws from the non-held-out pairs (captions with dropout 0.5), any other split from
    the held-out pairs (full captions). Returns root.
    """
    root = Path(root).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    held = set(default_held_out() if held_out is None else held_out)
    combos = combinations(exclude=held) if split == "train" else combinations(pairs=held)
    data = ShapesDataset(combos, num_samples, image_size, None, split, seed, 0.5 if split == "train" else 0.0)
    with open(root / "captions.jsonl", "w", encoding="utf-8") as index:
        for i in range(num_samples):
            image, caption, spec = data.sample(i)
            image.save(root / f"{i:05d}.png")
            (root / f"{i:05d}.txt").write_text(caption + "\n", encoding="utf-8")
            index.write(json.dumps({"path": f"{i:05d}.png", "caption": caption, "pair": spec.pair}) + "\n")
    return root
