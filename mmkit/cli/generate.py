"""`mmkit generate`: text to images with a DALL·E-style export or a min-dalle download (dalle-mini
or Mega; `mmkit.inference.text_to_image`). Guidance and top-k default to the model's own: the settings an
mmkit export was judged with (saved by the recipe; off for an export without them), min-dalle's 16 and 256
for dalle-mini.

Writes one PNG per image, a grid PNG per prompt and a JSON manifest (prompt, seed, settings, CLIP
score when reranked) into --out, each atomically (temporary file + rename). User mistakes are one
line on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Sequence

from PIL import Image

log = logging.getLogger(__name__)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mmkit generate", description="Generate images from text prompts.")
    p.add_argument("prompts", nargs="+", help="text prompts, e.g. \"a red circle on the left\"")
    p.add_argument("--model", required=True, help="a text-to-image export directory (runs/dalle_shapes/export), or "
                   "a min-dalle download (ROOT with dalle_bart_mini/ or dalle_bart_mega/ and vqgan/; Mega when both; "
                   "ROOT/dalle_bart_mini picks mini)")
    p.add_argument("--out", required=True, help="output folder (created)")
    p.add_argument("--num-images", type=int, default=4, help="images per prompt (default 4)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale (1 = off; "
                   "default: the export's own, the recipe's judged setting; 16 for dalle-mini, min-dalle's super-conditioning factor)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (> 0)")
    p.add_argument("--top-k", type=int, default=None, help="sample among the k likeliest codes (default: the "
                   "export's own; 256 for dalle-mini as min-dalle; 1 = greedy)")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling mass in (0, 1]")
    p.add_argument("--rerank", default=None, metavar="CLIP", help="rank each prompt's images with this CLIP "
                   "(an mmkit CLIP export directory, or an open_clip architecture with --rerank-pretrained)")
    p.add_argument("--rerank-pretrained", default=None, help="weights for an open_clip --rerank architecture")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _slug(prompt: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:60] or "prompt"


def _save_atomic(write, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def grid(images: Sequence[Image.Image], columns: int | None = None) -> Image.Image:
    """Images side by side, `columns` per row (default: all in one row up to 8)."""
    columns = columns or min(len(images), 8)
    w, h = images[0].size
    rows = (len(images) + columns - 1) // columns
    out = Image.new("RGB", (columns * w, rows * h))
    for i, im in enumerate(images):
        out.paste(im, ((i % columns) * w, (i // columns) * h))
    return out


def _check(args: argparse.Namespace) -> str | None:
    if args.num_images < 1:
        return f"--num-images must be >= 1, got {args.num_images}"
    if args.guidance is not None and not args.guidance >= 0:
        return f"--guidance must be >= 0, got {args.guidance}"
    if not args.temperature > 0:
        return f"--temperature must be > 0, got {args.temperature}"
    if args.top_k is not None and args.top_k < 1:
        return f"--top-k must be >= 1, got {args.top_k}"
    if args.top_p is not None and not 0 < args.top_p <= 1:
        return f"--top-p must be in (0, 1], got {args.top_p}"
    if any(not p.strip() for p in args.prompts):
        return "empty prompt"
    out = Path(args.out).expanduser()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        return f"--out {out}: cannot create ({e.strerror})"
    if not os.access(out, os.W_OK):
        return f"--out {out}: not writable"
    return None


def run(args: argparse.Namespace) -> int:
    from mmkit.cli.progress import progress
    from mmkit.inference.text_to_image import ClipReranker, TextToImage

    t2i = TextToImage.from_pretrained(args.model)
    for prompt in args.prompts:  # before any work: a bad prompt is found in a second, not after the others
        t2i.check_prompt(prompt)
    reranker = ClipReranker.load(args.rerank, args.rerank_pretrained) if args.rerank else None
    guidance = t2i.defaults["guidance"] if args.guidance is None else args.guidance
    top_k = t2i.defaults["top_k"] if args.top_k is None else args.top_k
    settings = {"num_images": args.num_images, "seed": args.seed, "guidance": guidance,
                "temperature": args.temperature, "top_k": top_k, "top_p": args.top_p, "rerank": args.rerank}
    out, manifest = Path(args.out).expanduser(), []
    with progress("generating", len(args.prompts), "prompt", enabled=not args.quiet) as advance:
        for n, prompt in enumerate(args.prompts):
            result = t2i.generate([prompt], args.num_images, args.seed, guidance, args.temperature, top_k, args.top_p,
                                  reranker)[0]
            stem = f"{n:03d}-{_slug(prompt)}"
            files = []
            for i, image in enumerate(result.images):
                path = out / f"{stem}-{i}.png"
                _save_atomic(lambda tmp, im=image: im.save(tmp, format="PNG"), path)
                files.append(path.name)
            _save_atomic(lambda tmp: grid(result.images).save(tmp, format="PNG"), out / f"{stem}-grid.png")
            manifest.append({"prompt": prompt, "images": files, "grid": f"{stem}-grid.png", **settings,
                             "clip_scores": result.scores})
            advance()
    _save_atomic(lambda tmp: Path(tmp).write_text(json.dumps(manifest, indent=1) + "\n"), out / "manifest.json")
    print(f"wrote {sum(len(m['images']) for m in manifest)} images and manifest.json to {out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`mmkit generate PROMPT... --model DIR --out DIR`; 0 done, 2 usage or input error."""
    args = _parser().parse_args(argv)
    problem = _check(args)
    if problem:
        print(f"mmkit generate: {problem}", file=sys.stderr)
        return 2
    try:
        return run(args)
    except (ValueError, OSError) as e:  # WeightsError is a ValueError: bad checkpoints, wrong family
        print(f"mmkit generate: {e}", file=sys.stderr)
        return 2
