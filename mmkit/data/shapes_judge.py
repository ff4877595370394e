"""An independent judge of generated shapes images: it shares no weights with the generator.
Colour and position are read analytically from the pixels (the saturated foreground's mean colour
and centroid, nearest to `mmkit.data.shapes`' palette and places); shape and size come from a small
CNN trained here on the foreground masks of freshly rendered ground truth (masks, so that it
cannot use colour). Accuracy on rendered ground truth is the judge's own ceiling.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from mmkit.data.shapes import COLOURS, POSITIONS, SHAPES, SIZES, Shape, combinations, render

ATTRIBUTES = ("colour", "shape", "position", "size")
_SIZES = tuple(SIZES)
SATURATION = 80  # max−min channel spread (0..255): the palette is ≥ 160, the grey background ≤ 20


def foreground(image: Image.Image) -> np.ndarray:
    """(H, W) bool: saturated pixels, i.e. the shape."""
    a = np.asarray(image.convert("RGB"), dtype=np.int16)
    return (a.max(axis=2) - a.min(axis=2)) > SATURATION


def _mask_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveMaxPool2d(1), nn.Flatten(),
                         nn.Linear(32, len(SHAPES) + len(SIZES)))


@dataclass
class Verdict:
    colour: str | None
    shape: str | None
    position: str | None
    size: str | None

    def matches(self, spec: Shape) -> dict[str, bool]:
        return {a: getattr(self, a) == getattr(spec, a) for a in ATTRIBUTES}


class ShapesJudge:
    """Reads (colour, shape, position, size) off an image.

    Args:
        image_size: side of the images it judges.
        steps, batch_size: training of the shape/size CNN on rendered masks.
        seed: rendering and training seed (independent of the generator's data).
    """

    def __init__(self, image_size: int = 32, steps: int = 400, batch_size: int = 64, seed: int = 1234) -> None:
        self.image_size = image_size
        # Trained on construction, which may happen inside Lightning's test loop (inference mode).
        with torch.inference_mode(False), torch.enable_grad():
            self.net = _mask_net()
            self._train(image_size, steps, batch_size, seed)
        self.net.eval()

    def _train(self, image_size: int, steps: int, batch_size: int, seed: int) -> None:
        rng, specs = random.Random(f"judge-{seed}"), combinations()
        gen = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        opt = torch.optim.Adam(self.net.parameters(), lr=3e-3)
        for _ in range(steps):
            batch = [specs[int(torch.randint(len(specs), (1,), generator=gen))] for _ in range(batch_size)]
            masks = self._masks([render(s, image_size, rng) for s in batch])
            out = self.net(masks)
            loss = F.cross_entropy(out[:, : len(SHAPES)], torch.tensor([SHAPES.index(s.shape) for s in batch])) + \
                F.cross_entropy(out[:, len(SHAPES):], torch.tensor([_SIZES.index(s.size) for s in batch]))
            opt.zero_grad()
            loss.backward()
            opt.step()

    def _masks(self, images: list[Image.Image]) -> Tensor:
        return torch.from_numpy(np.stack([foreground(im) for im in images])).float()[:, None]  # (B, 1, H, W)

    @torch.no_grad()
    def __call__(self, images: list[Image.Image]) -> list[Verdict]:
        out = self.net(self._masks(images))
        shapes, sizes = out[:, : len(SHAPES)].argmax(1).tolist(), out[:, len(SHAPES):].argmax(1).tolist()
        palette = np.array(list(COLOURS.values()), dtype=np.float32)
        places = np.array([xy for xy, _ in POSITIONS.values()], dtype=np.float32)
        verdicts = []
        for image, shape, size in zip(images, shapes, sizes):
            mask = foreground(image)
            if mask.sum() < 4:  # no shape drawn: nothing can be right
                verdicts.append(Verdict(None, None, None, None))
                continue
            rgb = np.asarray(image.convert("RGB"), dtype=np.float32)[mask].mean(0)
            ys, xs = np.nonzero(mask)
            centre = np.array([xs.mean() + 0.5, ys.mean() + 0.5], dtype=np.float32) / mask.shape[0]
            verdicts.append(Verdict(list(COLOURS)[int(((palette - rgb) ** 2).sum(1).argmin())], SHAPES[shape],
                                    list(POSITIONS)[int(((places - centre) ** 2).sum(1).argmin())], _SIZES[size]))
        return verdicts


def accuracy(verdicts: list[Verdict], specs: list[Shape]) -> dict[str, float]:
    """Per-attribute and all-attribute accuracy of verdicts against the specs they were asked for."""
    hits = [v.matches(s) for v, s in zip(verdicts, specs)]
    out = {a: float(np.mean([h[a] for h in hits])) for a in ATTRIBUTES}
    out["all"] = float(np.mean([all(h.values()) for h in hits]))
    return out


CHANCE = {"colour": 1 / len(COLOURS), "shape": 1 / len(SHAPES), "position": 1 / len(POSITIONS),
          "size": 1 / len(SIZES), "all": 1 / (len(COLOURS) * len(SHAPES) * len(POSITIONS) * len(SIZES))}


def judged_report(images: list[Image.Image], specs: list[Shape], held_out: set[str], judge_steps: int = 400,
                  control_seed: int | None = 0) -> dict[str, float]:
    """Train a fresh judge and score `images` against the `specs` they should show: per-attribute and
    all-attribute accuracy on seen pairs ("seen_colour_acc", ..., "seen_all_acc") and on `held_out`
    pairs ("heldout_..."), plus, with `control_seed`, "shuffled_all_acc": each image judged against
    another image's spec (a shuffled-caption control, which must fall to chance)."""
    verdicts = ShapesJudge(image_size=images[0].size[0], steps=judge_steps)(images)
    out = {}
    for name, keep in (("seen", lambda s: s.pair not in held_out), ("heldout", lambda s: s.pair in held_out)):
        idx = [i for i, s in enumerate(specs) if keep(s)]
        if idx:
            for attr, value in accuracy([verdicts[i] for i in idx], [specs[i] for i in idx]).items():
                out[f"{name}_{attr}_acc"] = value
    if control_seed is not None:
        shuffled = specs[:]
        random.Random(control_seed).shuffle(shuffled)
        out["shuffled_all_acc"] = accuracy(verdicts, shuffled)["all"]
    return out
