"""`mmkit label`: zero-shot (and few-shot) labelling of image folders with CLIP.

Zero-shot classification as in Radford et al., "Learning Transferable Visual Models From Natural
Language Supervision" (2021), section 3.1.4: a label's embedding is the renormalised mean of its
normalised prompt embeddings (templates x synonyms, the prompt ensemble) and an image's scores are
softmax(logit_scale * cosine). Few-shot labels add a prototype from example images, the mean
normalised image embedding of a folder (prototypical networks; Tip-Adapter's training-free cache).

Output guarantees (OUT = the --out file, ERR = its errors file, same rules):
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

import argparse
import contextlib
import csv
import importlib.util
import io
import json
import logging
import math
import os
import re
import shutil
import sys
import time
import unicodedata
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from mmkit.data.images import DEFAULT_MAX_PIXELS, ImageLoadError, load_image, scan_images
from mmkit.models.clip import CLIP, CLIP_MEAN, CLIP_STD, CLIP_VOCAB_SIZE
from mmkit.tasks.prompts import Tokenizer, check_templates, encode_prompts, expand_prompts

log = logging.getLogger(__name__)

# General-purpose templates from CLIP's 80 ImageNet prompts (the dataset-specific ones such as
# "a {} in a video game" left out); "itap" = "I took a picture".
DEFAULT_TEMPLATES = (
    "a photo of a {}.", "a bad photo of a {}.", "a good photo of a {}.", "a close-up photo of a {}.",
    "a cropped photo of a {}.", "a bright photo of a {}.", "a dark photo of a {}.", "a blurry photo of a {}.",
    "a photo of the large {}.", "a photo of the small {}.", "itap of a {}.", "art of the {}.",
)
# Multi-label scoring of softmax-trained CLIP: a label is "present" when it beats this neutral
# prompt set, sigmoid(scale * (cos(label) - cos(background))) (see ZeroShotLabeler.scores).
BACKGROUND_WORDS = ("object", "thing", "scene")
OTHER = "other"
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_RESAMPLE = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST,
             "lanczos": Image.LANCZOS}


# ---- labels and prompts -----------------------------------------------------------------------

def parse_label_entry(entry: str) -> tuple[str, list[str]]:
    """`label` or `label: alt1 | alt2 | "a literal prompt"` -> (label, alternatives).

    Alternatives are synonyms written into every template; one in double quotes is a complete
    prompt used as it is. Without alternatives the label itself is the synonym.
    """
    name, colon, rest = entry.partition(":")
    name = name.strip()
    if not name:
        raise ValueError(f"empty label name in {entry!r}")
    if "|" in name:
        raise ValueError(f"label name {name!r} may not contain '|' (it joins labels in multi-label output)")
    alternatives = [a.strip() for a in rest.split("|") if a.strip()] if colon else [name]
    if not alternatives:
        raise ValueError(f"label {name!r} has a ':' but no prompts after it")
    return name, alternatives


def parse_labels(entries: Iterable[str]) -> dict[str, list[str]]:
    """Label entries (see `parse_label_entry`) -> {label: alternatives}, in order; a label given
    twice gathers the alternatives of both."""
    labels: dict[str, list[str]] = {}
    for entry in entries:
        if entry.strip():
            name, alternatives = parse_label_entry(entry)
            labels.setdefault(name, []).extend(a for a in alternatives if a not in labels.get(name, []))
    return labels


def read_labels_file(path: str | os.PathLike) -> dict[str, list[str]]:
    """One label entry per line (`cat: kitten | tabby cat`); blank lines and `#` comments skipped."""
    lines = Path(path).expanduser().read_text(encoding="utf-8").splitlines()
    return parse_labels(line for line in lines if not line.lstrip().startswith("#"))


# ---- images -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Preprocess:
    """open_clip's eval transform (torchvision Resize of the short side to image_size / crop_pct,
    as timm, + CenterCrop; or "squash" to a square), split in two: `load` runs in DataLoader
    workers and returns uint8 (3, S, S), a quarter of the float tensor to pass between processes;
    `normalize` makes a stacked batch model input."""

    image_size: int = 224
    mean: tuple[float, ...] = CLIP_MEAN
    std: tuple[float, ...] = CLIP_STD
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"
    crop_pct: float = 1.0  # centre crop share of the short side (timm's eval transform; CLIP: 1)
    draft: bool = True  # JPEG DCT-domain downscaling (load_image's min_side); False = open_clip's exact pixels
    max_pixels: int = DEFAULT_MAX_PIXELS

    def __post_init__(self) -> None:
        if self.resize_mode not in ("shortest", "squash") or self.interpolation not in _RESAMPLE:
            raise ValueError(f"unsupported preprocessing: resize_mode={self.resize_mode!r}, "
                             f"interpolation={self.interpolation!r}")

    def load(self, path: str | os.PathLike) -> Tensor:
        """File -> (3, S, S) uint8; raises ImageLoadError."""
        short = self.image_size if self.resize_mode == "squash" else math.floor(self.image_size / self.crop_pct)
        return self(load_image(path, self.max_pixels, short if self.draft else None))

    def __call__(self, image: Image.Image) -> Tensor:
        """RGB PIL image -> (3, S, S) uint8, pixel for pixel torchvision's Resize + CenterCrop."""
        s, resample = self.image_size, _RESAMPLE[self.interpolation]
        w, h = image.size
        if self.resize_mode == "squash":
            size = (s, s)
        else:  # torchvision's Resize(int): short side -> n, long side -> int(n * long / short)
            n = math.floor(s / self.crop_pct)
            size = (n, int(n * h / w)) if w <= h else (int(n * w / h), n)
        if size != (w, h):
            image = image.resize(size, resample)
        left, top = int(round((size[0] - s) / 2.0)), int(round((size[1] - s) / 2.0))
        if size != (s, s):
            image = image.crop((left, top, left + s, top + s))
        return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)  # (3, S, S)

    def normalize(self, batch: Tensor) -> Tensor:
        """(B, 3, S, S) uint8 -> float32 (x / 255 - mean) / std, torchvision's ToTensor + Normalize."""
        mean = torch.tensor(self.mean, device=batch.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=batch.device).view(1, 3, 1, 1)
        return batch.float().div_(255).sub_(mean).div_(std)


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

    def __init__(self, root: str | os.PathLike, paths: Sequence[str], preprocess: Preprocess) -> None:
        self.root, self.paths, self.preprocess = Path(root), list(paths), preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, Tensor | str]:
        try:
            return index, self.preprocess.load(self.root / self.paths[index])
        except ImageLoadError as e:
            return index, e.reason
        except Exception as e:  # noqa: BLE001 - one hostile file must not end a run over a folder
            return index, f"decoder error ({type(e).__name__}: {e})"


def collate(items: list[tuple[int, Tensor | str]]) -> ImageBatch:
    ok = [(i, x) for i, x in items if isinstance(x, Tensor)]
    failed = [(i, x) for i, x in items if not isinstance(x, Tensor)]
    images = torch.stack([x for _, x in ok]) if ok else None
    return ImageBatch([i for i, _ in ok], images, failed)


def image_batches(root: str | os.PathLike, paths: Sequence[str], preprocess: Preprocess, batch_size: int = 64,
                  num_workers: int = 2, pin_memory: bool = False) -> Iterator[ImageBatch]:
    """Decoded batches in file order. The workers start (and decode ahead, `prefetch_factor`
    batches each) as soon as this is called, so callers start it before loading the model."""
    loader = DataLoader(ImageFiles(root, paths, preprocess), batch_size=batch_size, num_workers=num_workers,
                        collate_fn=collate, pin_memory=pin_memory, prefetch_factor=2 if num_workers else None)
    return iter(loader)


# ---- model ------------------------------------------------------------------------------------

def _clip_bpe(context_length: int) -> Tokenizer:
    """CLIP's BPE tokenizer. Loaded from open_clip's `tokenizer.py` alone when open_clip is not
    imported yet: the package import pulls in transformers, torchvision and torch._dynamo (~5 s of
    CPU), for a module that needs only ftfy and regex. Falls back to `CLIPTokenizer`."""
    if "open_clip" not in sys.modules:
        try:
            spec = importlib.util.find_spec("open_clip")
            source = Path(spec.origin).with_name("tokenizer.py")  # type: ignore[union-attr, arg-type]
            module_spec = importlib.util.spec_from_file_location("mmkit._open_clip_tokenizer", source)
            module = importlib.util.module_from_spec(module_spec)  # type: ignore[arg-type]
            module_spec.loader.exec_module(module)  # type: ignore[union-attr]
            bpe = module.SimpleTokenizer(context_length=context_length)
            return lambda texts: bpe(list(texts)).long()
        except Exception as e:  # noqa: BLE001 - any surprise: take the regular route
            log.debug("standalone open_clip tokenizer unavailable (%s); importing open_clip", e)
    from mmkit.data.text import CLIPTokenizer

    return CLIPTokenizer(context_length=context_length)


_INIT_FILLS = ("normal_", "trunc_normal_", "uniform_", "kaiming_uniform_", "kaiming_normal_", "xavier_uniform_",
               "xavier_normal_", "zeros_", "ones_", "constant_")


@contextlib.contextmanager
def _skip_init() -> Iterator[None]:
    """torch.nn.init's fills as no-ops while building a model that a strict load then overwrites
    entirely (transformers' `no_init_weights`): random init of ViT-B costs seconds, and the meta
    device, the other way round it, imports torch._dynamo for its decompositions (~2 s)."""
    saved = {name: getattr(nn.init, name) for name in _INIT_FILLS}
    try:
        for name in _INIT_FILLS:
            setattr(nn.init, name, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for name, fill in saved.items():
            setattr(nn.init, name, fill)


def _build_and_load(config: dict[str, Any], state: dict[str, Tensor], source: str) -> CLIP:
    """`CLIP.from_config(config)` with `state` loaded strictly, without a random init first: every
    tensor is overwritten by the load (CLIP has no non-persistent buffers)."""
    from mmkit.weights.native import load_state_dict_strict

    with _skip_init():
        model = CLIP.from_config(config)
    load_state_dict_strict(model, state, source)
    return model.eval()


def model_preprocess(model: str, pretrained: str | None = None, exact_decode: bool = False) -> Preprocess:
    """The preprocessing of `model` (a checkpoint directory or an open_clip architecture), read
    from configuration only, so image decoding can start before the weights are loaded."""
    fields: dict[str, Any] = {}
    if Path(model).expanduser().is_dir():
        doc = CLIP.read_config(model)
        fields["image_size"] = doc["config"]["visual"]["image_size"]
        meta = doc.get("metadata", {})
        fields.update({k: meta[k] for k in ("mean", "std", "interpolation", "resize_mode", "crop_pct") if k in meta})
    else:
        from mmkit.models.sizes import CLIP_CONFIGS

        if model in CLIP_CONFIGS and pretrained and Path(pretrained).expanduser().is_file():
            # open_clip's defaults for these architectures: OpenAI mean/std, bicubic, short side.
            fields["image_size"] = CLIP_CONFIGS[model]["visual"]["image_size"]
        else:
            fields.update(_open_clip_preprocess(model, pretrained))
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
    if isinstance(fields.get("image_size"), tuple):
        fields["image_size"] = fields["image_size"][0]
    return Preprocess(**fields, draft=not exact_decode)


def _open_clip_preprocess(arch: str, pretrained: str | None) -> dict[str, Any]:
    import open_clip

    config = open_clip.get_model_config(arch)
    if config is None:
        raise ValueError(f"{arch!r} is neither a checkpoint directory nor an open_clip architecture")
    cfg = {"image_size": config["vision_cfg"].get("image_size", 224), **config.get("preprocess_cfg", {})}
    if pretrained and not Path(pretrained).expanduser().is_file():
        cfg.update(open_clip.get_pretrained_cfg(arch, pretrained) or {})
    elif pretrained:  # a local file: what all the architecture's tags agree on (SigLIP: mean/std 0.5, squash)
        tags = [open_clip.get_pretrained_cfg(arch, t) for t in open_clip.list_pretrained_tags_by_model(arch)]
        cfg.update({k: tags[0][k] for k in ("mean", "std", "interpolation", "resize_mode")
                    if tags and all(k in t and t[k] == tags[0][k] for t in tags)})
    keys = {"image_size": "image_size", "size": "image_size", "mean": "mean", "std": "std",
            "interpolation": "interpolation", "resize_mode": "resize_mode"}
    return {keys[k]: v for k, v in cfg.items() if k in keys}


def load_model(model: str, pretrained: str | None = None) -> tuple[CLIP, Tokenizer]:
    """A CLIP in eval mode and its tokenizer from a native checkpoint directory, or from an
    open_clip architecture with `pretrained` (a local file or a pretrained tag). A directory's
    tokenizer is CLIP's BPE unless its metadata names an open_clip architecture whose tokenizer it
    uses (`"open_clip_tokenizer": "ViT-B-16-SigLIP"`).

    Architectures in `mmkit.models.sizes.CLIP_CONFIGS` with a local file are read without
    building an open_clip model (same key map and strict load as `CLIP.from_open_clip`).
    """
    from mmkit.weights.native import WEIGHTS_NAME, WeightsError, read_state_dict

    path = Path(model).expanduser()
    bpe = True  # CLIP's BPE tokenizer (vs. an architecture's own, e.g. SigLIP's)
    if path.is_dir():
        doc = CLIP.read_config(path)
        meta = doc.get("metadata", {})
        clip = _build_and_load(doc["config"], read_state_dict(path / WEIGHTS_NAME), str(path / WEIGHTS_NAME))
        context = meta.get("context_length") or clip.context_length
        if meta.get("open_clip_tokenizer"):  # another architecture's tokenizer, e.g. "ViT-B-16-SigLIP"
            from mmkit.data.text import CLIPTokenizer, open_clip_tokenizer

            tokenizer = open_clip_tokenizer(meta["open_clip_tokenizer"], context_length=context)
            bpe = isinstance(tokenizer, CLIPTokenizer)
        else:
            tokenizer = _clip_bpe(context)
    else:
        if not pretrained:
            raise WeightsError(f"--model {model} is an architecture: name its weights with --pretrained FILE_OR_TAG")
        from mmkit.models.sizes import CLIP_CONFIGS

        if model in CLIP_CONFIGS and Path(pretrained).expanduser().is_file():
            from mmkit.models.sizes import clip_config
            from mmkit.weights.from_open_clip import CLIP_KEYS, TRANSFORMS, read_open_clip_checkpoint
            from mmkit.weights.keymap import remap

            state = remap(read_open_clip_checkpoint(pretrained), CLIP_KEYS, str(pretrained), TRANSFORMS)
            clip = _build_and_load(clip_config(model), state, str(pretrained))
            tokenizer = _clip_bpe(clip.context_length)
        else:
            from mmkit.data.text import CLIPTokenizer, open_clip_tokenizer

            clip = CLIP.from_open_clip(model, pretrained).eval()
            tokenizer = open_clip_tokenizer(model, context_length=clip.context_length)
            bpe = isinstance(tokenizer, CLIPTokenizer)
    if bpe and clip.text.vocab_size != CLIP_VOCAB_SIZE:
        raise WeightsError(f"{model}: text tower has {clip.text.vocab_size} token ids; CLIP's BPE needs "
                           f"{CLIP_VOCAB_SIZE} (a checkpoint directory of another tokenizer names its open_clip "
                           "architecture in its metadata: save_pretrained(dir, metadata={'open_clip_tokenizer': "
                           "'ViT-B-16-SigLIP', 'mean': ..., 'std': ..., 'resize_mode': ...}))")
    if not bpe and clip.text.pool == "argmax":
        raise WeightsError(f"{model}: text tower pools at the largest token id, which is <end_of_text> in CLIP's "
                           "BPE only, not in this architecture's tokenizer")
    return clip, tokenizer


def cpu_has_bf16() -> bool:
    """Native bf16 matmul on this CPU (AVX512-BF16 or AMX); without it bf16 is emulated, slowly."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """"auto" -> bf16 where the hardware has it (CUDA with bf16, AVX512-BF16/AMX CPUs), fp16 on
    older GPUs, else fp32."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if device.type == "cuda":
        return ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if precision == "auto" else precision
    if precision == "fp16":
        raise ValueError("fp16 autocast is for GPUs; on a CPU use bf16 or fp32")
    if precision == "auto":
        return "bf16" if cpu_has_bf16() else "fp32"
    if precision == "bf16" and not cpu_has_bf16():
        log.warning("this CPU has no native bf16 (AVX512-BF16/AMX): bf16 is emulated and far slower than fp32")
    return precision


# ---- scoring ----------------------------------------------------------------------------------

@dataclass
class FileResult:
    """One image: per-label scores (in label order), or the reason it could not be read."""

    path: str
    scores: list[float] | None = None
    error: str | None = None


class ZeroShotLabeler:
    """Scores images against labels built from prompt ensembles and/or example images.

    Args:
        model: a CLIP.
        tokenizer: texts -> (B, T) ids for its text tower.
        preprocess: its image preprocessing.
        device: where to run ("cpu", "cuda", "cuda:1").
        precision: "auto", "fp32", "bf16" or "fp16" (autocast; see `resolve_precision`).
        multi_gpu: split image batches over all visible GPUs (nn.DataParallel on the image tower).
    """

    def __init__(self, model: CLIP, tokenizer: Tokenizer, preprocess: Preprocess, device: str = "cpu",
                 precision: str = "auto", multi_gpu: bool = False) -> None:
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        self.tokenizer, self.preprocess = tokenizer, preprocess
        self.precision = resolve_precision(precision, self.device)
        self.image_tower: nn.Module = model.visual
        if multi_gpu:
            if self.device.type != "cuda" or self.device.index not in (None, 0):
                raise ValueError("--multi-gpu needs --device cuda (it uses every visible GPU, from cuda:0)")
            self.image_tower = nn.DataParallel(model.visual)
        self.names: list[str] = []
        self.embeddings: Tensor | None = None  # (L, D) unit rows
        self.background: Tensor | None = None  # (D,) unit, for multi-label scoring of plain CLIP

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def encode_texts(self, prompts: Sequence[str]) -> Tensor:
        """Prompts -> (P, D) unit float32 embeddings."""
        return encode_prompts(self.model, self.tokenizer, prompts, self._autocast)

    @torch.inference_mode()
    def encode_images(self, pixels: Tensor) -> Tensor:
        """(B, 3, S, S) uint8 -> (B, D) unit float32 embeddings."""
        x = self.preprocess.normalize(pixels.to(self.device, non_blocking=True))
        with self._autocast():
            return F.normalize(self.image_tower(x).float(), dim=-1)

    @torch.inference_mode()
    def set_labels(self, prompts: dict[str, list[str]], examples: dict[str, Tensor] | None = None,
                   examples_weight: float = 0.5, multi_label: bool = False,
                   templates: Sequence[str] = DEFAULT_TEMPLATES) -> None:
        """Label embeddings: the renormalised mean of each label's unit prompt embeddings; with an
        image prototype p from examples, normalise((1 - w) * text + w * p), or p alone for a label
        with no prompts. Labels are those of `prompts`, then example-only ones in their order."""
        examples = examples or {}
        names = list(prompts) + [n for n in examples if n not in prompts]
        if not names:
            raise ValueError("no labels: give --labels, --labels-file or --examples")
        flat = [p for n in prompts for p in prompts[n]]
        text = self.encode_texts(flat) if flat else None
        rows, start = [], 0
        for name in names:
            proto = None
            if name in prompts:
                count = len(prompts[name])
                proto = F.normalize(text[start:start + count].mean(0), dim=-1)  # type: ignore[index]
                start += count
            if name in examples:
                image = examples[name].to(self.device)
                proto = image if proto is None else F.normalize((1 - examples_weight) * proto + examples_weight * image,
                                                                dim=-1)
            rows.append(proto)
        self.names, self.embeddings = names, torch.stack(rows)  # (L, D)
        self.background = None
        if multi_label and self.model.logit_bias is None:
            neutral = self.encode_texts(expand_prompts(BACKGROUND_WORDS, templates))
            self.background = F.normalize(neutral.mean(0), dim=-1)

    @torch.inference_mode()
    def scores(self, features: Tensor, multi_label: bool = False) -> Tensor:
        """(B, D) unit image embeddings -> (B, L) scores.

        Single-label: softmax(s * cos) over the labels (s = exp(logit_scale)). Multi-label, each
        label on its own: sigmoid(s * cos + logit_bias) for sigmoid-trained models (with a
        logit_bias, SigLIP-style); for softmax-trained CLIP, the two-way softmax of the label
        against the neutral BACKGROUND_WORDS prompts, sigmoid(s * (cos - cos_background)).
        """
        assert self.embeddings is not None, "call set_labels first"
        cos = features @ self.embeddings.T  # (B, L)
        scale = self.model.logit_scale.exp().float()
        if not multi_label:
            return (scale * cos).softmax(dim=-1)
        if self.model.logit_bias is not None:
            return torch.sigmoid(scale * cos + self.model.logit_bias.float())
        if self.background is None:
            raise ValueError("multi-label scoring needs set_labels(..., multi_label=True)")
        return torch.sigmoid(scale * (cos - (features @ self.background)[:, None]))

    def predict(self, batches: Iterable[ImageBatch], paths: Sequence[str],
                multi_label: bool = False) -> Iterator[list[FileResult]]:
        """A generator: per decoded batch, one FileResult per file (unreadable ones with `error`),
        computed when asked for and never kept."""
        for batch in batches:
            results = [FileResult(paths[i], error=reason) for i, reason in batch.failed]
            if batch.images is not None:
                probs = self.scores(self.encode_images(batch.images), multi_label).cpu()
                results += [FileResult(paths[i], scores=row) for i, row in zip(batch.indices, probs.tolist())]
            yield results

    def prototypes(self, root: str | os.PathLike, batch_size: int = 64, num_workers: int = 0) -> dict[str, Tensor]:
        """Few-shot prototypes from `root/<label>/<images>`: the renormalised mean unit embedding of
        each label's readable images (unreadable ones are skipped with a warning)."""
        root = Path(root).expanduser()
        folders = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
        files = [(name, p.relative_to(root).as_posix()) for name in folders for p in scan_images(root / name)]
        sums: dict[str, Tensor] = {}
        counts: Counter[str] = Counter()
        rel = [f for _, f in files]
        for results in self._embed_files(root, rel, batch_size, num_workers):
            for i, feature in results:
                if isinstance(feature, str):
                    log.warning("example %s skipped: %s", files[i][1], feature)
                    continue
                name = files[i][0]
                sums[name] = sums.get(name, 0) + feature
                counts[name] += 1
        empty = [n for n in folders if not counts[n]]
        if empty:
            raise ValueError(f"{root}: no readable example images for {', '.join(empty)}")
        return {n: F.normalize(sums[n] / counts[n], dim=-1) for n in folders}

    def _embed_files(self, root: Path, paths: Sequence[str], batch_size: int,
                     num_workers: int) -> Iterator[list[tuple[int, Tensor | str]]]:
        for batch in image_batches(root, paths, self.preprocess, batch_size, num_workers):
            out: list[tuple[int, Tensor | str]] = list(batch.failed)
            if batch.images is not None:
                out += list(zip(batch.indices, self.encode_images(batch.images).cpu()))
            yield out


@dataclass(frozen=True)
class Decision:
    """How scores become the `label` column: top-k, the threshold and the "other" bucket."""

    names: tuple[str, ...]
    top_k: int = 1
    threshold: float | None = None  # single-label: top score below it -> other; multi-label: cut-off
    multi_label: bool = False
    all_scores: bool = False
    other: str = OTHER

    def fields(self) -> list[str]:
        """Output columns."""
        top = [f"{kind}_{i}" for i in range(1, self.top_k + 1) for kind in ("label", "score")] if self.top_k > 1 else []
        return ["path", "label", "score", *top, *(f"score:{n}" for n in self.names if self.all_scores)]

    def row(self, path: str, scores: list[float]) -> dict[str, Any]:
        order = sorted(range(len(scores)), key=lambda j: -scores[j])
        best = order[0]
        if self.multi_label:
            cut = 0.5 if self.threshold is None else self.threshold
            chosen = [self.names[j] for j in order if scores[j] >= cut]
            label = "|".join(chosen) if chosen else self.other
        else:
            below = self.threshold is not None and scores[best] < self.threshold
            label = self.other if below else self.names[best]
        row: dict[str, Any] = {"path": path, "label": label, "score": round(scores[best], 6)}
        if self.top_k > 1:
            for rank, j in enumerate(order[: self.top_k], start=1):
                row[f"label_{rank}"], row[f"score_{rank}"] = self.names[j], round(scores[j], 6)
            for rank in range(len(order) + 1, self.top_k + 1):  # fewer labels than k
                row[f"label_{rank}"], row[f"score_{rank}"] = "", ""
        if self.all_scores:
            row.update({f"score:{n}": round(s, 6) for n, s in zip(self.names, scores)})
        return row

    def labels_of(self, row: dict[str, Any]) -> list[str]:
        return str(row["label"]).split("|") if self.multi_label else [str(row["label"])]


# ---- crash-safe output --------------------------------------------------------------------------

class ResumableWriter:
    """Rows of fixed `fields` to CSV (with a header) or JSONL, by `path`'s extension; crash-safe as
    the module docstring states: appends to `path`.partial with flush + fsync per `append`, and
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
def _exclusive(path: Path) -> Iterator[None]:
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


# ---- sorting into folders ---------------------------------------------------------------------

_UNSAFE = re.compile(r'[\x00-\x1f\x7f/\\:*?"<>|]')
_WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)), *(f"LPT{i}" for i in range(1, 10))}


def safe_folder_name(label: str, max_len: int = 100) -> str:
    """A label as one path component: separators, control and reserved characters become "_",
    leading/trailing dots and spaces go, "." and ".." cannot result (no path traversal)."""
    name = _UNSAFE.sub("_", unicodedata.normalize("NFC", label)).strip(" .")
    if name.split(".")[0].upper() in _WINDOWS_RESERVED:
        name = "_" + name
    return name[:max_len].rstrip(" .") or "_"


def folder_names(labels: Iterable[str]) -> dict[str, str]:
    """Label -> distinct safe folder name (a clash after sanitising gets a "~2", "~3" suffix)."""
    out: dict[str, str] = {}
    taken: set[str] = set()
    for label in labels:
        base = name = safe_folder_name(label)
        n = 1
        while name.lower() in taken:  # case-insensitive filesystems
            n += 1
            name = f"{base}~{n}"
        taken.add(name.lower())
        out[label] = name
    return out


def place_file(source: Path, target_root: Path, folder: str, relative: str, mode: str) -> Path:
    """Copy or link `source` to target_root/folder/relative (the folder tree below DIR is kept, so
    equal names in different folders do not collide). Written under a temporary name and renamed,
    so a target is never half-copied; links are hard links, or symbolic ones across filesystems."""
    target = (target_root / folder / relative)
    if not target.resolve().is_relative_to(target_root.resolve()):
        raise ValueError(f"refusing to write outside {target_root}: {target}")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.mmkit-tmp")
    tmp.unlink(missing_ok=True)
    if mode == "copy":
        shutil.copy2(source, tmp)
    else:
        try:
            os.link(source, tmp)
        except OSError:
            os.symlink(source.resolve(), tmp)
    os.replace(tmp, target)
    return target


# ---- the command ------------------------------------------------------------------------------

@dataclass
class Summary:
    labeled: int = 0  # rows written by this run
    failed: int = 0  # unreadable files found by this run
    resumed: int = 0  # images done by earlier runs (rows and errors)
    counts: Counter | None = None  # label -> images, over the whole output

    def lines(self, out: Path, errors: Path) -> list[str]:
        counts = self.counts or Counter()
        per_label = ", ".join(f"{k} {v}" for k, v in counts.most_common())
        return [f"labeled {self.labeled} images, {self.failed} unreadable (listed in {errors}), "
                f"{self.resumed} done by an earlier run; wrote {out}",
                f"per label: {per_label or 'none'}"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mmkit label", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Zero-shot (and few-shot) label every image under DIR with CLIP.",
        epilog="examples:\n"
               "  mmkit label photos/ --labels 'cat,dog' --model ViT-B-32 --pretrained vit_b32.safetensors "
               "--out labels.csv\n"
               "  mmkit label photos/ --labels-file labels.txt --model runs/clip/export --out labels.jsonl "
               "--top-k 3 --threshold 0.5 --resume --copy-to sorted/\n\n"
               "labels file: one 'label' or 'label: synonym | synonym | \"a literal prompt\"' per line.\n"
               "Rows are fsynced per batch to OUT.partial and renamed to OUT at the end; --resume after a\n"
               "crash or kill continues where it stopped, leaving exactly one row per image.")
    p.add_argument("dir", help="folder of images (scanned recursively)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--labels", help="comma-separated labels, each 'label' or 'label: synonym | synonym'")
    src.add_argument("--labels-file", help="one label entry per line (# comments)")
    p.add_argument("--examples", help="few-shot folder with one subfolder of example images per label")
    p.add_argument("--examples-weight", type=float, default=0.5,
                   help="weight w of the image prototype: normalise((1-w) text + w image) (default 0.5)")
    p.add_argument("--model", required=True, help="mmkit CLIP checkpoint directory, or an open_clip architecture")
    p.add_argument("--pretrained", help="with an architecture: checkpoint file or open_clip pretrained tag")
    p.add_argument("--out", default="labels.csv", help="labels.csv or labels.jsonl (default labels.csv)")
    p.add_argument("--errors", help="unreadable files (path, reason); default OUT's name + .errors")
    p.add_argument("--template", action="append", help="prompt template with {} (repeat; replaces the default set)")
    p.add_argument("--templates-file", help="one prompt template per line")
    p.add_argument("--top-k", type=int, default=1, help="also write the k best labels and scores (k > 1)")
    p.add_argument("--all-scores", action="store_true", help="one score:<label> column per label")
    p.add_argument("--threshold", type=float,
                   help="single-label: top score below it -> the --other label; multi-label: cut-off (default 0.5)")
    p.add_argument("--other-label", default=OTHER, help=f"label of unsure images (default {OTHER!r})")
    p.add_argument("--multi-label", action="store_true", help="score labels independently (sigmoid); label = a|b")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="skip images already in OUT / the errors file")
    mode.add_argument("--overwrite", action="store_true", help="start over, replacing OUT at the end")
    p.add_argument("--retry-errors", action="store_true", help="with --resume: try the listed unreadable files again")
    place = p.add_mutually_exclusive_group()
    place.add_argument("--copy-to", help="copy images into DIR_OUT/<label>/ (sanitised names)")
    place.add_argument("--link-to", help="hard-link (else symlink) images into DIR_OUT/<label>/")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--num-workers", type=int, default=None, help="decoding processes (default: cores - 1, 1..8)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="autocast precision; auto = bf16 where the hardware has it, else fp32")
    p.add_argument("--multi-gpu", action="store_true", help="split batches over all visible GPUs")
    p.add_argument("--exact-decode", action="store_true",
                   help="full-size JPEG decoding (open_clip's exact pixels) instead of DCT-domain downscaling")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


@dataclass
class _Outputs:
    rows: ResumableWriter
    errors: ResumableWriter
    decision: Decision


def _label_prompts(args: argparse.Namespace) -> tuple[dict[str, list[str]], list[str]]:
    templates = list(args.template or [])
    if args.templates_file:
        templates += Path(args.templates_file).expanduser().read_text(encoding="utf-8").splitlines()
    templates = check_templates(templates) if templates else list(DEFAULT_TEMPLATES)
    if args.labels_file:
        labels = read_labels_file(args.labels_file)
    else:
        labels = parse_labels((args.labels or "").split(","))
    if not labels and not args.examples:
        raise ValueError("give --labels, --labels-file or --examples")
    return {name: expand_prompts(alts, templates) for name, alts in labels.items()}, templates


def _example_names(folder: str | None) -> list[str]:
    if not folder:
        return []
    return sorted(e.name for e in os.scandir(Path(folder).expanduser()) if e.is_dir() and not e.name.startswith("."))


def _settings(args: argparse.Namespace, prompts: dict[str, list[str]]) -> dict[str, Any]:
    """What the rows depend on; a resumed run must match it (batch size, workers, device don't)."""
    def where(value: str | None) -> str | None:
        return str(Path(value).expanduser().resolve()) if value and Path(value).expanduser().exists() else value

    return {"model": where(args.model), "pretrained": where(args.pretrained), "prompts": prompts,
            "examples": where(args.examples), "examples_weight": args.examples_weight if args.examples else None,
            "multi_label": args.multi_label, "threshold": args.threshold, "other_label": args.other_label,
            "top_k": args.top_k, "all_scores": args.all_scores, "exact_decode": args.exact_decode}


def _check_settings(path: Path, settings: dict[str, Any], resume: bool) -> None:
    """Refuse to resume rows computed with other settings; record this run's (atomically)."""
    if resume and path.exists():
        try:
            before = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            before = None
        if isinstance(before, dict) and before != settings:
            changed = sorted(k for k in {*before, *settings} if before.get(k) != settings.get(k))
            raise OutputConflict(f"{path}: the rows so far were computed with other {', '.join(changed)}; "
                                 "use the same options, or --overwrite")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(settings, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _open_outputs(args: argparse.Namespace, names: list[str],
                  prompts: dict[str, list[str]]) -> tuple[_Outputs, set[str], Counter]:
    """The writers, opened (resumed or fresh), with the paths already done and their label counts."""
    decision = Decision(tuple(names), args.top_k, args.threshold, args.multi_label, args.all_scores, args.other_label)
    out = Path(args.out).expanduser()
    errors = Path(args.errors).expanduser() if args.errors else out.with_name(f"{out.stem}.errors{out.suffix}")
    outputs = _Outputs(ResumableWriter(out, decision.fields()), ResumableWriter(errors, ["path", "reason"]), decision)
    if not args.resume and not args.overwrite and (outputs.rows.exists() or outputs.errors.exists()):
        raise OutputConflict(f"{out} (or its .partial / errors file) exists: pass --resume to skip the images "
                             "already done, or --overwrite to start over")
    out.parent.mkdir(parents=True, exist_ok=True)
    _check_settings(out.with_name(out.name + ".run.json"), _settings(args, prompts), args.resume)
    done: set[str] = set()
    counts: Counter = Counter()

    def keep_row(row: dict[str, Any]) -> bool:
        done.add(row["path"])
        counts.update(decision.labels_of(row))
        return True

    def keep_error(row: dict[str, Any]) -> bool:
        if args.retry_errors:
            return False
        done.add(row["path"])
        return True

    outputs.rows.start(args.resume, keep_row)
    outputs.errors.start(args.resume, keep_error)
    return outputs, done, counts


def _todo(root: Path, done: set[str], exclude: Path | None) -> list[str]:
    excluded = exclude.resolve() if exclude else None
    todo = []
    for p in scan_images(root):
        if excluded is not None and p.resolve().is_relative_to(excluded):
            continue  # our own --copy-to/--link-to output inside DIR
        rel = p.relative_to(root).as_posix()
        if rel not in done:
            todo.append(rel)
    return todo


def _default_workers() -> int:
    return max(1, min(8, (os.cpu_count() or 2) - 1))


def run(args: argparse.Namespace) -> Summary:
    """The command behind `main`, on parsed arguments."""
    root = Path(args.dir).expanduser()
    if not root.is_dir():
        raise ValueError(f"{root} is not a folder")
    prompts, templates = _label_prompts(args)
    names = list(prompts) + [n for n in _example_names(args.examples) if n not in prompts]
    if any("|" in n for n in names):
        raise ValueError(f"label names may not contain '|' (it joins multi-label output): {names}")
    if args.other_label in names and (args.threshold is not None or args.multi_label):
        raise ValueError(f"{args.other_label!r} is a label and the unsure bucket: rename one (--other-label)")
    target = Path(args.copy_to or args.link_to).expanduser() if (args.copy_to or args.link_to) else None
    out = Path(args.out).expanduser()
    with _exclusive(out.with_name(f".{out.name}.lock")):
        outputs, done, counts = _open_outputs(args, names, prompts)
        summary = Summary(resumed=len(done), counts=counts)
        todo = _todo(root, done, target)
        if todo:
            _label(args, root, todo, prompts, templates, outputs, summary, target)
        outputs.errors.finish()
        outputs.rows.finish()
    return summary


def _label(args: argparse.Namespace, root: Path, todo: list[str], prompts: dict[str, list[str]],
           templates: list[str], outputs: _Outputs, summary: Summary, target: Path | None) -> None:
    workers = _default_workers() if args.num_workers is None else args.num_workers
    cuda = torch.device(args.device).type == "cuda"
    preprocess = model_preprocess(args.model, args.pretrained, args.exact_decode)
    # Decoding starts now, in the workers, while the weights load and the prompts are encoded.
    batches = image_batches(root, todo, preprocess, args.batch_size, workers, pin_memory=cuda)
    model, tokenizer = load_model(args.model, args.pretrained)
    labeler = ZeroShotLabeler(model, tokenizer, preprocess, args.device, args.precision, args.multi_gpu)
    examples = labeler.prototypes(args.examples, args.batch_size, 0) if args.examples else None
    labeler.set_labels(prompts, examples, args.examples_weight, args.multi_label, templates)
    log.info("labelling %d images with %d labels (%s, %s, %d decoding workers)", len(todo), len(labeler.names),
             args.device, labeler.precision, workers)
    folders = folder_names([*labeler.names, args.other_label]) if target else {}
    decision = outputs.decision
    with _progress(len(todo) + summary.resumed, summary.resumed, args.quiet) as advance:
        for results in labeler.predict(batches, todo, args.multi_label):
            rows = [decision.row(r.path, r.scores) for r in results if r.scores is not None]
            errors = [{"path": r.path, "reason": r.error} for r in results if r.error is not None]
            for row in rows:
                labels = decision.labels_of(row)
                summary.counts.update(labels)  # type: ignore[union-attr]
                for label in labels if target else ():
                    place_file(root / row["path"], target, folders[label], row["path"],  # type: ignore[arg-type]
                               "copy" if args.copy_to else "link")
            outputs.errors.append(errors)
            outputs.rows.append(rows)
            summary.labeled += len(rows)
            summary.failed += len(errors)
            advance(len(results))


@contextlib.contextmanager
def _progress(total: int, completed: int, quiet: bool) -> Iterator[Callable[[int], None]]:
    """A rich progress bar on stderr with images/s and the ETA."""
    if quiet:
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)
    from rich.text import Text

    class Rate(ProgressColumn):
        def render(self, task: Any) -> Text:
            return Text(f"{task.speed or 0:.1f} img/s")

    bar = Progress(TextColumn("labelling"), BarColumn(), MofNCompleteColumn(), Rate(), TimeElapsedColumn(),
                   TextColumn("ETA"), TimeRemainingColumn(), console=Console(stderr=True))
    task = bar.add_task("labelling", total=total, completed=completed)
    with bar:
        yield lambda n: bar.advance(task, n)


def main(argv: Sequence[str] | None = None) -> int:
    """`mmkit label DIR ...`; returns the exit code (0 done, 1 failed, 2 usage, 130 interrupted)."""
    args = _parser().parse_args(argv)
    if args.top_k < 1 or args.batch_size < 1:
        print("mmkit label: --top-k and --batch-size must be >= 1", file=sys.stderr)
        return 2
    if args.retry_errors and not args.resume:
        print("mmkit label: --retry-errors goes with --resume", file=sys.stderr)
        return 2
    start = time.perf_counter()
    try:
        summary = run(args)
    except KeyboardInterrupt:
        print(f"interrupted; rows so far are in {args.out}.partial: rerun with --resume", file=sys.stderr)
        return 130
    except (ValueError, OSError) as e:  # bad arguments, files, checkpoints (WeightsError is a ValueError)
        print(f"mmkit label: {e}", file=sys.stderr)
        return 1
    out = Path(args.out).expanduser()
    errors = Path(args.errors).expanduser() if args.errors else out.with_name(f"{out.stem}.errors{out.suffix}")
    for line in summary.lines(out, errors):
        print(line, file=sys.stderr)
    log.info("mmkit label finished in %.1f s", time.perf_counter() - start)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    raise SystemExit(main())
