"""`mmkit label` against the plain open_clip loop, as whole processes on the same files.

Both sides label the same images with the same checkpoint: a random-initialised open_clip ViT-B-32
saved once as safetensors (nothing is downloaded). The reference is the loop most scripts use:
`open_clip.create_model_and_transforms(pretrained=FILE)`, PIL decoding one image at a time,
batches of 32, `encode_image`, softmax against the encoded label prompts, fp32. Each side runs as
its own process (interpreter start, imports, weight loading, decoding, inference, output), in
alternating order every round so load drift hits both alike; medians are reported, with the
ratio reference / mmkit and the top-1 agreement of the two outputs. Both use the one prompt
"a photo of a {}." unless `--ensemble` gives mmkit its default template set (more text work).
Each `--quantize` value is one mmkit path, named by what it runs ("mmkit" = fp32, "mmkit bf16" where
`--precision auto` resolves to bf16, "mmkit int8" = int8 Linear weights on fp32 activations, with an fp32
side added beside it); every path's labels are compared with open_clip's and with mmkit fp32's. `--model DIR`
runs a trained mmkit CLIP export instead (its labels and templates from its metadata; no open_clip
side), on `--image-dir DIR` or the generated images: agreement of int8 with fp32 where near-ties of
random weights do not blur it. `--device cuda` runs both sides on the GPU (the reference still in fp32;
mmkit's `--precision auto` is bf16 there, fp16 on older GPUs; int8 is a CPU path, so only fp32 weights).
`--embed` times `mmkit embed` on the folder (image vectors, .npy) against the same loop ending at the normalised
`encode_image` (the vectors saved, no labels): their agreement is the cosine of each image's two vectors and
whether each image's nearest other image is the same one.

    mmkit bench label --images 128 --rounds 3
    mmkit bench label --device cuda --images 256 --rounds 2
    mmkit bench label --model runs/clip_shapes/export --image-dir shapes/ --rounds 1
    mmkit bench label --embed --images 128 --rounds 2
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from mmkit.cli.bench import StepFailed
from mmkit.cli.bench.label_report import (
    FP32, OPEN_CLIP, agreement, agreements, embedding_agreement, print_report, report,
)
from mmkit.cli.options import Parser, at_least, path_text

log = logging.getLogger(__name__)

ARCH = "ViT-B-32"
LABELS = ("cat", "dog", "car", "tree", "flower", "building", "person", "food", "mountain", "beach")
TEMPLATE = "a photo of a {}."
# Image sizes, cycled over the images: "mixed" = typical exports and web images (0.3 to 3
# megapixels), "photo" = 12-megapixel phone-camera JPEGs, "small" = 640x480 only.
SIZES = {"mixed": ((640, 480), (1024, 768), (1600, 1200), (2048, 1536)), "photo": ((4032, 3024),),
         "small": ((640, 480),)}

# The reference, verbatim the common open_clip recipe (on the GPU too: .to(device), fp32, no autocast;
# .tolist() waits for the GPU); it reports its own phases on stderr.
REFERENCE = r'''
import csv, json, sys, time
t0 = time.perf_counter()
import torch, open_clip
from pathlib import Path
from PIL import Image
root, ckpt, labels, out, device = Path(sys.argv[1]), sys.argv[2], sys.argv[3].split(","), sys.argv[4], sys.argv[5]
embed = out.endswith(".npy")  # image vectors (normalised encode_image) instead of labels
t1 = time.perf_counter()
model, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32", pretrained=ckpt)
model.to(device).eval()
tokenizer = open_clip.get_tokenizer("ViT-B-32")
paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
t2 = time.perf_counter()
rows = []
with torch.no_grad():
    if not embed:
        text = model.encode_text(tokenizer([f"a photo of a {label}." for label in labels]).to(device))
        text = text / text.norm(dim=-1, keepdim=True)
    for i in range(0, len(paths), 32):
        batch = paths[i:i + 32]
        images = torch.stack([preprocess(Image.open(p).convert("RGB")) for p in batch]).to(device)
        features = model.encode_image(images)
        features = features / features.norm(dim=-1, keepdim=True)
        if embed:
            rows.append(features.cpu())
            continue
        probs = (model.logit_scale.exp() * features @ text.T).softmax(dim=-1)
        for p, row in zip(batch, probs.tolist()):
            best = max(range(len(labels)), key=row.__getitem__)
            rows.append([p.relative_to(root).as_posix(), labels[best], row[best]] + row)
if embed:
    import numpy
    numpy.save(out, torch.cat(rows).numpy())
    with open(out[:-4] + ".paths.jsonl", "w") as f:
        f.writelines(json.dumps({"path": p.relative_to(root).as_posix()}) + "\n" for p in paths)
else:
    with open(out, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "score"] + [f"score:{label}" for label in labels])
        writer.writerows(rows)
t3 = time.perf_counter()
print(json.dumps({"imports_s": t1 - t0, "load_s": t2 - t1, "label_s": t3 - t2}), file=sys.stderr)
'''


def make_images(folder: Path, count: int, sizes: tuple[tuple[int, int], ...], seed: int = 0) -> list[Path]:
    """`count` JPEGs: random crops of scikit-learn's two sample photos and synthetic scenes
    (gradients with shapes), resized to the cycled `sizes`, in two subfolders."""
    from PIL import Image, ImageDraw
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(seed)
    photos = [Image.fromarray(a) for a in load_sample_images().images]  # 640 x 427 each
    paths = []
    for i in range(count):
        w, h = sizes[i % len(sizes)]
        if i % 4 == 3:  # synthetic scene
            ramp = np.linspace(0, 1, w)[None, :, None] * rng.uniform(40, 255, 3) + rng.uniform(0, 60, 3)
            image = Image.fromarray(np.broadcast_to(ramp, (h, w, 3)).clip(0, 255).astype(np.uint8))
            draw = ImageDraw.Draw(image)
            for _ in range(6):
                x, y, r = rng.integers(0, w), rng.integers(0, h), rng.integers(h // 20, h // 4)
                draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
        else:  # a random crop of a real photo, at least half of each side
            src = photos[i % 2]
            cw, ch = int(src.width * rng.uniform(0.5, 1)), int(src.height * rng.uniform(0.5, 1))
            x, y = rng.integers(0, src.width - cw + 1), rng.integers(0, src.height - ch + 1)
            image = src.crop((x, y, x + cw, y + ch)).resize((w, h), Image.BICUBIC)
        path = folder / f"set{i % 2}" / f"img_{i:04d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path, quality=90)
        paths.append(path)
    return paths


def make_checkpoint(path: Path, seed: int = 0) -> Path:
    """A random-initialised open_clip ViT-B-32 state dict (safetensors), the same file for both sides."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model = open_clip.create_model(ARCH, pretrained=None)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def _timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """(wall seconds, CPU seconds of the process and the workers it reaped, stderr)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        log.debug("%s", done.stderr[-3000:])
        raise StepFailed(cmd, done.returncode, done.stderr)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return elapsed, cpu, done.stderr


def _parser() -> argparse.ArgumentParser:
    from mmkit.cli.bench.common import output_file
    from mmkit.inference.precision import PRECISIONS

    p = Parser(prog="mmkit bench label", description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=at_least(1), default=128, help="number of images (default 128)")
    p.add_argument("--sizes", choices=sorted(SIZES), default="mixed", help="image sizes (default mixed)")
    p.add_argument("--rounds", type=at_least(1), default=2, help="runs of each side, alternating (default 2)")
    p.add_argument("--batch-size", type=at_least(1), default=64, help="mmkit's batch size (the reference uses 32)")
    p.add_argument("--num-workers", type=at_least(0), default=None, help="mmkit's decoding workers (default: its own)")
    p.add_argument("--device", default="cpu", help="where both sides run: cpu (default), cuda, cuda:N")
    p.add_argument("--precision", default="auto", choices=PRECISIONS,  # `mmkit label --precision`'s
                   help="the unquantized mmkit side's --precision (auto: bf16 where the CPU or GPU has it, that "
                        "side then named 'mmkit bf16'; the reference stays fp32)")
    p.add_argument("--quantize", nargs="+", choices=("none", "int8"), default=None,
                   help="one mmkit path per value: none (at --precision) and/or int8 (int8 Linear weights, CPU "
                        "only, compared with an fp32 side that runs too); default: both on the CPU, none elsewhere")
    p.add_argument("--model", type=path_text,
                   help="an mmkit CLIP export to run instead of the random ViT-B-32 (labels and "
                        "templates from its metadata; no open_clip side)")
    p.add_argument("--image-dir", metavar="DIR", type=path_text,
                   help="label the images of DIR instead of generated ones")
    p.add_argument("--ensemble", action="store_true", help="mmkit with its default template ensemble")
    p.add_argument("--embed", action="store_true",
                   help="time `mmkit embed` (image vectors) instead of `mmkit label`, against the open_clip loop "
                        "that embeds (normalised encode_image); agreement: the cosine of each image's two vectors "
                        "and whether its nearest other image is the same")
    p.add_argument("--exact-decode", action="store_true", help="mmkit without JPEG DCT-domain downscaling")
    p.add_argument("--workdir", type=path_text,
                   help="where images and the checkpoint are made (reused); default a temp folder")
    p.add_argument("--json", type=output_file, help="also write the results here")
    p.set_defaults(resolved_precision="fp32")  # set from --precision and --device by `_usage_error`
    return p


def mmkit_sides(quantize: list[str], precision: str) -> dict[str, tuple[str, str]]:
    """Side name -> (`mmkit label --precision`, `--quantize`): one side per `quantize` value, the unquantized one
    at `precision` (resolved: "auto" ran bf16 on a CPU with it, under the name "mmkit" that reads as fp32) and
    named by it ("mmkit" for fp32, else "mmkit bf16"); int8 layers take fp32 activations, so int8 runs fp32 and
    is compared with an fp32 side ("mmkit"), added where the unquantized side is not fp32 already."""
    sides = {}
    for q in dict.fromkeys(quantize):
        if q == "none":
            sides[FP32 if precision == "fp32" else f"{FP32} {precision}"] = (precision, "none")
        else:
            sides[f"{FP32} {q}"] = ("fp32", q)
    if "int8" in quantize and FP32 not in sides:
        sides[FP32] = ("fp32", "none")
    return sides


def _commands(args: argparse.Namespace, images: Path, ckpt: Path, work: Path) -> dict[str, list[str]]:
    """Side name -> command line: the open_clip loop (not with --model DIR) and one mmkit path per
    --quantize value, each writing `work/<side>.csv`."""
    commands = {}
    if not args.model:
        script = work / "reference_open_clip.py"
        script.write_text(REFERENCE)
        commands[OPEN_CLIP] = [sys.executable, str(script), str(images), str(ckpt), ",".join(LABELS),
                               str(output_of(work, OPEN_CLIP, args.embed)), args.device]
    labels, templates = _labels(args)
    for side, (precision, quantize) in mmkit_sides(args.quantize, args.resolved_precision).items():
        out = str(output_of(work, side, args.embed))
        task = ["embed", str(images), "--out", out] if args.embed else \
            ["label", str(images), "--labels", ",".join(labels), "--out", out, "--all-scores", "--overwrite"]
        cmd = [sys.executable, "-m", "mmkit.cli", *task, "--model", args.model or ARCH, "--quiet",
               "--device", args.device, "--precision", precision, "--quantize", quantize,
               "--batch-size", str(args.batch_size)]
        cmd += [] if args.model else ["--pretrained", str(ckpt)]
        if not args.embed:
            cmd += [] if args.ensemble and not args.model else [a for t in templates for a in ("--template", t)]
        cmd += ["--num-workers", str(args.num_workers)] if args.num_workers is not None else []
        cmd += ["--exact-decode"] if args.exact_decode else []
        commands[side] = cmd
    return commands


def output_of(work: Path, side: str, embed: bool) -> Path:
    """Where a side writes: its labels (.csv), or with --embed its vectors (.npy, the files beside it)."""
    return work / f"{side.replace(' ', '_')}.{'npy' if embed else 'csv'}"


def _labels(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """The labels and templates: the checkpoint's own with --model DIR, else LABELS and TEMPLATE (with --embed,
    unused)."""
    if not args.model or args.embed:
        return list(LABELS), [TEMPLATE]
    from mmkit.models.clip import CLIP

    meta = CLIP.read_config(args.model).get("metadata", {})
    if not meta.get("zeroshot_labels"):
        raise ValueError(f"{args.model}: no zeroshot_labels in its metadata")
    return list(meta["zeroshot_labels"]), list(meta.get("zeroshot_templates") or [TEMPLATE])


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    if args.image_dir:
        images = Path(args.image_dir).expanduser()
        from mmkit.data.images import scan_images

        args.images = sum(1 for _ in scan_images(images))
    else:
        images = work / f"images_{args.sizes}_{args.images}"
        if not images.exists():  # made beside it and renamed: an interrupted run leaves no half-made folder
            log.info("writing %d %s images to %s", args.images, args.sizes, images)
            partial = Path(tempfile.mkdtemp(prefix=f".{images.name}.", dir=work))
            try:
                make_images(partial, args.images, SIZES[args.sizes])
                os.replace(partial, images)
            finally:
                shutil.rmtree(partial, ignore_errors=True)
    ckpt = work / "open_clip_vit_b32_random.safetensors"
    if not args.model and not ckpt.exists():
        log.info("saving a random-init open_clip %s to %s", ARCH, ckpt)
        from mmkit.inference.text_rows import atomic_path

        with atomic_path(ckpt) as tmp:
            make_checkpoint(tmp)
    commands = _commands(args, images, ckpt, work)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    times: dict[str, dict[str, list[float]]] = {k: {"wall": [], "cpu": [], "inner": []} for k in commands}
    load = [os.getloadavg()[0]]
    for r in range(args.rounds):
        for side in (list(commands) if r % 2 == 0 else list(commands)[::-1]):
            wall, cpu, stderr = _timed(commands[side], env)
            for key, value in (("wall", wall), ("cpu", cpu), ("inner", _in_process_seconds(side, stderr))):
                times[side][key].append(value)
            log.info("round %d %s: %.1f s wall, %.1f s CPU", r + 1, side, wall, cpu)
        load.append(os.getloadavg()[0])
    outputs = {side: output_of(work, side, args.embed) for side in commands}
    return report(args, times, load, agreements(outputs, embedding_agreement if args.embed else agreement))


def _in_process_seconds(side: str, stderr: str) -> float:
    """Seconds past interpreter start and imports: what each side measures of itself."""
    if side == OPEN_CLIP:
        phases = json.loads(stderr.strip().splitlines()[-1])
        return phases["load_s"] + phases["label_s"]
    found = re.search(r"mmkit (?:label|embed) finished in (\d+\.\d+) s", stderr)  # logged to the ms
    return float(found[1]) if found else float("nan")


def _image_dir_problem(root: Path, reference: bool) -> str | None:
    """Why `root` cannot be timed: not a folder, no image, or (`reference`: the open_clip loop runs too) files
    the two sides would not both read (the loop reads .jpg/.jpeg/.png, dot-files included; `mmkit label` every
    image format, dot-files skipped): their outputs' agreement failed after every timing."""
    from mmkit.data.images import scan_images

    if not root.is_dir():
        return "not a folder"
    ours = {p.relative_to(root).as_posix() for p in scan_images(root)}
    if not ours:
        return "no images"
    if reference:
        theirs = {p.relative_to(root).as_posix() for p in root.rglob("*")
                  if p.is_file() and p.suffix.lower() in (".jpg", ".jpeg", ".png")}
        if ours != theirs:
            return (f"{sorted(ours ^ theirs)[0]} would be read by one side only (the open_clip loop reads .jpg, "
                    ".jpeg and .png files, dot-files included; mmkit label skips dot-files): give a folder both "
                    "read alike")
    return None


def _usage_error(args: argparse.Namespace) -> str | None:
    """What would make a `mmkit label` side refuse its arguments, found before any image or checkpoint is
    made (each side would exit 2 only after them); sets `args.quantize` to the paths to run."""
    from mmkit.cli.bench.common import bench_quantize
    from mmkit.inference.precision import check_device, resolve_precision
    from mmkit.inference.text_rows import check_output_dir

    if args.model and not Path(args.model).expanduser().is_dir():
        return f"--model {args.model}: not an mmkit CLIP export directory"
    if args.embed and args.ensemble:
        return "--ensemble is for labelling (prompt templates): --embed times image vectors only"
    if args.image_dir:
        problem = _image_dir_problem(Path(args.image_dir).expanduser(), reference=not args.model)
        if problem:
            return f"--image-dir {args.image_dir}: {problem}"
    try:
        device = check_device(args.device)
        args.quantize = bench_quantize(args.quantize, args.device)
        for quantize in args.quantize:  # int8 with bf16/fp16, fp16 on a CPU: as `mmkit label` refuses them
            resolve_precision(args.precision, device, quantize)
        # what the unquantized side will run, as `mmkit label` resolves it: names that side and goes in the report
        args.resolved_precision = resolve_precision(args.precision, device)
        _labels(args)  # --model DIR: its config and zero-shot labels
        if args.workdir:
            check_output_dir(args.workdir)
    except (ValueError, OSError) as e:  # WeightsError is a ValueError
        return str(e)
    return None


def main(argv: list[str] | None = None) -> int:
    from mmkit.cli.bench.common import write_json

    args = _parser().parse_args(argv)
    problem = _usage_error(args)
    if problem:
        print(f"mmkit bench label: error: {problem}", file=sys.stderr)
        return 2
    if args.workdir:
        work = Path(args.workdir).expanduser()
        work.mkdir(parents=True, exist_ok=True)
        result = run(args, work)
    else:
        with tempfile.TemporaryDirectory(prefix="mmkit-bench-label-") as tmp:
            result = run(args, Path(tmp))
    print_report(result)
    write_json(args.json, result)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    raise SystemExit(main())
