"""`mmkit generate`: text to images with a DALL·E-style export or a min-dalle download (dalle-mini
or Mega; `mmkit.inference.text_to_image`). Guidance and top-k default to the model's own: the settings an
mmkit export was judged with (saved by the recipe; off for an export without them), min-dalle's 16 and 256
for dalle-mini.

Samples --batch-size images at a time and writes each PNG as it is made, so memory does not grow with
--num-images; with a seed, image i of a prompt depends on the seed and i only, not on the batch size.
Per prompt also a grid PNG (the first, or best, 64 images) and in the end a JSON manifest (prompt, seed,
settings, images best first and their CLIP scores when reranked), each atomically (temporary file +
rename). User mistakes are one line on stderr and exit code 2; a failed run removes the --out folder it
created if it wrote nothing there. Interrupted (Ctrl-C, SIGTERM) it keeps the images written so far, says which
in one line and exits 130: no temp file, no manifest.

Under torchrun (or any launcher setting torch.distributed's environment) the ranks share the batches of
all prompts, a contiguous block each: the same batches, seeds and files as one process. Rank 0 gathers the
CLIP scores, ranks and writes the grids and the manifest as one process would, once each prompt is done.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Callable, Iterable, Sequence

from PIL import Image

from mmkit.cli.options import Parser, add_precision_argument, at_least, finite, seed, utf8_text
from mmkit.cli.ranked import agreed, on_ranks
from mmkit.errors import WriteFailed, print_error
from mmkit.inference.quantize import QUANTIZATIONS
from mmkit.inference.ranks import Ranks

if TYPE_CHECKING:
    from mmkit.inference.text_to_image import ClipReranker, TextToImage

log = logging.getLogger(__name__)

GRID_MAX = 64  # images in a prompt's grid PNG: the first (or best, reranked) ones


def _parser() -> argparse.ArgumentParser:
    p = Parser(prog="mmkit generate", description="Generate images from text prompts.")
    p.add_argument("prompts", nargs="+", type=utf8_text, help="text prompts, e.g. \"a red circle on the left\"")
    p.add_argument("--model", required=True, help="a text-to-image export directory (runs/dalle_shapes/export), or "
                   "a min-dalle download (ROOT with dalle_bart_mini/ or dalle_bart_mega/ and vqgan/; Mega when both; "
                   "ROOT/dalle_bart_mini picks mini)")
    p.add_argument("--out", required=True, help="output folder (created)")
    p.add_argument("--overwrite", action="store_true", help="remove the images, grids and manifest.json earlier runs "
                   "left in --out (every NNN-PROMPT-K.png and NNN-PROMPT-grid.png, not only those this run writes; "
                   "other files stay) before writing this run's; without it such files are refused: the runs would "
                   "mix")
    p.add_argument("--num-images", type=at_least(1), default=4, help="images per prompt (default 4)")
    p.add_argument("--batch-size", type=at_least(1), default=8, help=  # text_to_image.DEFAULT_BATCH_SIZE
                   "images sampled at once (default 8): "
                   "memory grows with it, not with --num-images; the images do not depend on it")
    p.add_argument("--seed", type=seed, default=0, help="sampling seed in [0, 2**64 - 1] (default 0)")
    p.add_argument("--guidance", type=finite(0), default=None, help="classifier-free guidance scale (1 = off; "
                   "default: the export's own, the recipe's judged setting; 16 for dalle-mini, min-dalle's "
                   "super-conditioning factor)")
    p.add_argument("--temperature", type=finite(above=0), default=1.0, help="sampling temperature (finite, > 0)")
    p.add_argument("--top-k", type=at_least(0), default=None, help="sample among the k likeliest codes (0 = off: the "
                   "whole codebook; default: the export's own; 256 for dalle-mini as min-dalle; 1 = greedy)")
    p.add_argument("--top-p", type=finite(maximum=1, above=0), default=None, help="nucleus sampling mass in (0, 1]")
    p.add_argument("--rerank", default=None, metavar="CLIP", help="rank each prompt's images with this CLIP "
                   "(an mmkit CLIP export directory, or an open_clip architecture with --rerank-pretrained)")
    p.add_argument("--rerank-pretrained", default=None, help="weights for an open_clip --rerank architecture")
    p.add_argument("--quantize", default="none", choices=QUANTIZATIONS,
                   help="int8: int8 weights for the generator's Linear layers (CPU; faster; the VQGAN decodes in "
                        "fp32). A large --guidance magnifies int8's rounding: dalle-mini's 16 samples codes far from "
                        "fp32's, bf16 stays close (see mmkit bench generate)")
    add_precision_argument(p)
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:N, mps; under torchrun, cuda is "
                   "each rank's own GPU: cuda:LOCAL_RANK); --precision fp16 needs a GPU")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


# The images' file names (`_stem` + "-K" or "-grid"): (prompt number, slug, K or "grid"); `_slug` keeps [a-z0-9-]
_IMAGE_FILE = re.compile(r"(\d{3,})-([a-z0-9-]+)-(grid|\d+)\.png")


def _slug(prompt: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:60] or "prompt"


def _save_atomic(write, path: Path) -> None:
    """`write(tmp)` to a temp file beside `path`, renamed over it when complete (`atomic_path`, which removes
    the temp file however the writing ends, an interruption included)."""
    from mmkit.inference.text_rows import atomic_path

    with atomic_path(path) as tmp:
        write(str(tmp))


def _looks_like_path(name: str) -> bool:
    """A --rerank that names a file or folder rather than an open_clip architecture ("ViT-B-32",
    "hf-hub:timm/...": a scheme prefix is not a path)."""
    return os.path.exists(os.path.expanduser(name)) or (
        ("/" in name or os.sep in name or name.startswith("~")) and not re.match(r"[a-z][a-z-]*:", name))


def _check(args: argparse.Namespace) -> str | None:
    if any(not p.strip() for p in args.prompts):
        return "empty prompt"
    if args.rerank is None and args.rerank_pretrained is not None:
        return "--rerank-pretrained names weights for a --rerank architecture: give --rerank too"
    if args.rerank is not None and _looks_like_path(args.rerank):
        folder = os.path.expanduser(args.rerank)
        if not os.path.isdir(folder):
            return f"--rerank {args.rerank}: " + ("not a CLIP export directory" if os.path.exists(folder) else
                                                   "no such directory")
        if args.rerank_pretrained is not None:
            return f"--rerank {args.rerank} is an export with its own weights: drop --rerank-pretrained"
    elif args.rerank is not None and args.rerank_pretrained is None:
        return f"--rerank {args.rerank} is an open_clip architecture: name its weights with --rerank-pretrained"
    out = Path(args.out).expanduser()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        return f"--out {out}: cannot create ({e.strerror})"
    if not os.access(out, os.W_OK):
        return f"--out {out}: not writable"
    if not args.overwrite:
        earlier = sorted(name for name in os.listdir(out) if _written_by(args, name))
        if earlier:
            more = f" and {len(earlier) - 1} more" if len(earlier) > 1 else ""
            return (f"--out {out} holds {earlier[0]}{more} from an earlier run: give another --out, or --overwrite "
                    "to replace them (the runs' images would mix, and the manifest would list only this one's)")
    return None


def _generated(name: str) -> bool:
    """Whether a file of this name in --out is one that a run of this tool writes, whatever its prompts and
    --num-images: manifest.json, `NNN-slug-K.png`, `NNN-slug-grid.png` (`_stem`; a slug cut at 60 characters may
    end in "-")."""
    return name == "manifest.json" or _IMAGE_FILE.fullmatch(name) is not None


def _remove_earlier(out: Path) -> None:
    """--overwrite: remove every file earlier runs left in `out` (`_generated`), not only those this run rewrites:
    4 images then 2 left the first run's images 2 and 3 beside the second's, which the manifest did not list.
    Folders and files named otherwise (the user's) stay."""
    with os.scandir(out) as entries:
        earlier = [e.path for e in entries if _generated(e.name) and not e.is_dir(follow_symlinks=False)]
    for path in earlier:
        os.unlink(path)


def _written_by(args: argparse.Namespace, name: str) -> bool:
    """Whether a run of `args` writes a file of this name in --out (checked against the folder's entries, so the
    cost follows what is there, not --num-images)."""
    if name == "manifest.json":
        return True
    found = _IMAGE_FILE.fullmatch(name)
    if found is None:
        return False
    n, slug, which = int(found[1]), found[2], found[3]
    return (n < len(args.prompts) and _stem(n, args.prompts[n]) == f"{found[1]}-{slug}"
            and (which == "grid" or int(which) < args.num_images))


def _stem(n: int, prompt: str) -> str:
    """Prompt `n`'s file name stem: its position (prompts may repeat) and a slug of its text."""
    return f"{n:03d}-{_slug(prompt)}"


def _write_entry(f: IO[str], entry: dict[str, Any], streamed: dict[str, Iterable[Any] | None]) -> None:
    """One manifest entry; `streamed` lists (a name or a score per image) are written item by item,
    never built as one list or string."""
    f.write(json.dumps(entry)[:-1])
    for key, items in streamed.items():
        f.write(f", {json.dumps(key)}: ")
        if items is None:
            f.write("null")
            continue
        f.write("[")
        for j, item in enumerate(items):
            f.write((", " if j else "") + json.dumps(item))
        f.write("]")
    f.write("}")


def _indices(order: Any) -> Iterable[int]:
    """The items of a range or of a 1-D index tensor, a chunk of the tensor at a time."""
    return order if isinstance(order, range) else (i for chunk in order.split(1 << 16) for i in chunk.tolist())


def _ranking(num_images: int, scores: array | None) -> tuple[Any, array | None]:
    """(the image order: a range, or best first by score, ties in image order; the scores)."""
    import torch

    if scores is None:
        return range(num_images), None
    return torch.frombuffer(scores, dtype=torch.float64).argsort(descending=True, stable=True), scores


def _image_shares(ranks: Ranks, prompts: int, num_images: int, batch_size: int) -> list[range]:
    """This rank's images of each prompt: its contiguous block of all prompts' batches (batch_size images
    each, the last of a prompt fewer, as one process samples them), as a range of image indices per prompt."""
    per = -(-num_images // batch_size)  # batches per prompt
    mine = ranks.block(prompts * per)
    shares = []
    for n in range(prompts):
        lo, hi = max(mine.start, n * per) - n * per, min(mine.stop, (n + 1) * per) - n * per
        shares.append(range(lo * batch_size, min(hi * batch_size, num_images)) if lo < hi else range(0))
    return shares


@dataclass
class Written:
    """The images this process has written so far (how many, the first and the last name; never a list that
    grows with --num-images): what an interrupted run says it leaves. Under a launcher, this rank's only."""

    count: int = 0
    first: str = ""
    last: str = ""
    pending: Path | None = None  # the image being saved: an interruption may come after its rename, before `add`

    def add(self, name: str) -> None:
        self.count, self.first, self.last, self.pending = self.count + 1, self.first or name, name, None

    def left(self, args: argparse.Namespace | None, ranks: Ranks) -> str:
        """What an interrupted run leaves in --out: each image (and prompt's grid) was renamed into place
        whole, the manifest is written only at the end, so the images written so far and no manifest (the one
        being saved counted if it was renamed into place: it said 12 images where 13 were)."""
        if self.pending is not None and self.pending.is_file():
            self.add(self.pending.name)
        if args is None or not (self.count or ranks.multi):
            return "nothing was written"
        out = Path(args.out).expanduser()
        if ranks.multi:
            return f"the images the ranks wrote so far are in {out}; no manifest.json was written"
        names = self.first if self.count == 1 else f"{self.first} to {self.last}"
        return (f"{self.count} of {len(args.prompts) * args.num_images} images are in {out} ({names}); "
                "no manifest.json was written")


def _generate_share(t2i: TextToImage, reranker: ClipReranker | None, args: argparse.Namespace, prompt: str,
                    stem: str, sampling: dict[str, Any], advance: Callable[[int], None], ranks: Ranks,
                    images: range, written: Written) -> tuple[Any, array | None]:
    """This rank's `images` of a prompt (one process: all), each PNG written as it comes, then every rank's
    scores to all: on every rank the image order (a range, or best first when reranked: only the scores are
    kept, never the images) and the scores one process gets (`_ranking`), or a ValueError naming the first
    rank's failure (all ranks stop; one process raises its own error as it is)."""
    out = Path(args.out).expanduser()
    scores, problem = array("d") if reranker is not None else None, None
    try:
        start = images.start
        for _, batch in t2i.stream(prompt, len(images), args.seed, batch_size=args.batch_size, first=start,
                                   **sampling) if images else ():
            for i, image in enumerate(batch, start):
                written.pending = out / f"{stem}-{i}.png"
                _save_atomic(lambda tmp, im=image: im.save(tmp, format="PNG"), written.pending)
                written.add(f"{stem}-{i}.png")
            if scores is not None:
                scores.extend(reranker.scores(prompt, batch))
            start += len(batch)
            advance(len(batch))
    except (ValueError, OSError) as e:  # this rank's; every rank stops after this prompt
        if not ranks.multi:
            raise
        problem = str(e)
    shared = ranks.all_gather((problem, scores))
    problem = next((p for p, _ in shared if p is not None), None)
    if problem is not None:
        raise ValueError(problem)
    return _ranking(args.num_images, None if scores is None else array("d", b"".join(s.tobytes() for _, s in shared)))


def _setup(args: argparse.Namespace, ranks: Ranks) -> tuple[TextToImage, ClipReranker | None, dict[str, Any]]:
    """The pipeline on this rank's device, the reranker and the sampling settings, each checked before any work;
    then, with --overwrite, the earlier runs' files removed (by the first rank, before `agreed` lets any rank
    write)."""
    from mmkit.inference.precision import check_device
    from mmkit.inference.text_to_image import ClipReranker, TextToImage

    device = check_device(ranks.device(args.device))  # an absent GPU is one line, before the model loads
    t2i = TextToImage.from_pretrained(args.model).to(device)
    t2i.set_arithmetic(args.precision, args.quantize)  # a choice the device cannot run: one line, before any work
    for prompt in args.prompts:  # before any work: a bad prompt is found in a second, not after the others
        t2i.check_prompt(prompt)
    reranker = ClipReranker.load(args.rerank, args.rerank_pretrained) if args.rerank else None
    guidance, top_k = t2i.resolve_sampling(args.guidance, args.top_k)
    sampling = {"guidance": guidance, "temperature": args.temperature, "top_k": top_k, "top_p": args.top_p}
    t2i.check_settings(args.num_images, args.seed, batch_size=args.batch_size, **sampling)  # also before any work
    if args.overwrite and ranks.first:
        _remove_earlier(Path(args.out).expanduser())
    return t2i, reranker, sampling


def run(args: argparse.Namespace, ranks: Ranks = Ranks(), written: Written | None = None) -> int:
    """The images, grids and manifest of `args` (this rank's share of the images); `written` counts the images
    as they are written. 0, or a ValueError or OSError of one line."""
    from mmkit.cli.progress import progress
    from mmkit.inference.text_to_image import grid

    t2i, reranker, sampling = agreed(ranks, lambda: _setup(args, ranks))
    settings = {"num_images": args.num_images, "seed": args.seed, **sampling, "rerank": args.rerank,
                "precision": t2i.precision, "quantize": t2i.quantize}
    out = Path(args.out).expanduser()
    shares = _image_shares(ranks, len(args.prompts), args.num_images, args.batch_size)
    written = Written() if written is None else written

    def images_of(n: int, prompt: str, stem: str, advance: Callable[[int], None]) -> tuple[Any, array | None]:
        return _generate_share(t2i, reranker, args, prompt, stem, sampling, advance, ranks, shares[n], written)

    if not ranks.first:  # its images only: the first rank writes the grids and the manifest
        for n, prompt in enumerate(args.prompts):
            images_of(n, prompt, f"{n:03d}-{_slug(prompt)}", lambda k=1: None)
        return 0

    def write_all(manifest_tmp: str) -> None:
        with open(manifest_tmp, "w") as f, progress("generating", sum(map(len, shares)), "img",
                                                     enabled=not args.quiet) as advance:
            f.write("[\n")
            for n, prompt in enumerate(args.prompts):
                stem = _stem(n, prompt)
                order, scores = images_of(n, prompt, stem, advance)
                best = [out / f"{stem}-{i}.png" for i in _indices(order[:GRID_MAX])]
                _save_atomic(lambda tmp: grid([Image.open(p).convert("RGB") for p in best]).save(tmp, format="PNG"),
                             out / f"{stem}-grid.png")
                f.write(",\n" if n else "")
                _write_entry(f, {"prompt": prompt, "grid": f"{stem}-grid.png", **settings}, {
                    "images": (f"{stem}-{i}.png" for i in _indices(order)),
                    "clip_scores": None if scores is None else (scores[i] for i in _indices(order))})
            f.write("\n]\n")

    _save_atomic(write_all, out / "manifest.json")
    print(f"wrote {len(args.prompts) * args.num_images} images and manifest.json to {out}")
    return 0


def _created_by(out: Path) -> Path | None:
    """The topmost folder of `out` that does not exist yet (mkdir will create it), or None."""
    top = None
    for folder in [out, *out.parents]:
        if folder.exists():
            return top
        top = folder
    return top


def _remove_if_empty(out: Path, top: Path) -> None:
    """Remove `out` and its parents up to `top` (the folders this run created) while they are empty."""
    for folder in [out, *out.parents]:
        try:
            folder.rmdir()
        except OSError:  # not empty (the run wrote something), or gone
            return
        if folder == top:
            return


def main(argv: Sequence[str] | None = None) -> int:
    """`mmkit generate PROMPT... --model DIR --out DIR`; 0 done, 2 usage or input error, 1 an output that could not
    be written (a full disk), 130 interrupted (Ctrl-C, SIGTERM); one line, after images were written saying which;
    no temp file and no manifest is left."""
    written = Written()
    return on_ranks("mmkit generate", _parser, argv, lambda args, ranks: _main(args, ranks, written), written.left)


def _main(args: argparse.Namespace, ranks: Ranks, written: Written | None = None) -> int:
    out = Path(args.out).expanduser().absolute()
    created, code = _created_by(out), 2
    try:
        problem = _check(args)
        if ranks.multi:  # the same on every rank, but for a folder another rank made meanwhile
            problem = ranks.first_problem(problem)
        if problem:
            if ranks.first:
                print_error("mmkit generate", problem)
            return 2
        code = run(args, ranks, written)
        return code
    except (ValueError, OSError) as e:  # WeightsError is a ValueError: bad checkpoints, wrong family
        if ranks.first:  # under a launcher every rank stops with the first rank's problem
            problem = str(e)
            if written is not None and written.count:  # mid-run (a full disk): the images it leaves, as Ctrl-C
                problem = f"{getattr(e, 'headline', problem)}; {written.left(args, ranks)}"
            print_error("mmkit generate", problem)
        return 1 if isinstance(e, WriteFailed) else 2
    finally:
        if created is not None and code != 0:
            _remove_if_empty(out, created)
