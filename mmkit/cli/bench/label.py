"""`mmkit label` against the plain open_clip loop, as whole processes on the same files.

Both sides label the same images with the same checkpoint: a random-initialised open_clip ViT-B-32
saved once as safetensors (nothing is downloaded). The reference is the loop most scripts use:
`open_clip.create_model_and_transforms(pretrained=FILE)`, PIL decoding one image at a time,
batches of 32, `encode_image`, softmax against the encoded label prompts, fp32. Each side runs as
its own process (interpreter start, imports, weight loading, decoding, inference, output), in
alternating order every round so load drift hits both alike; medians are reported, with the
ratio reference / mmkit and the top-1 agreement of the two outputs. Both use the one prompt
"a photo of a {}." unless `--ensemble` gives mmkit its default template set (more text work).

    mmkit bench label --images 128 --rounds 3
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

ARCH = "ViT-B-32"
LABELS = ("cat", "dog", "car", "tree", "flower", "building", "person", "food", "mountain", "beach")
TEMPLATE = "a photo of a {}."
# Image sizes, cycled over the images: "mixed" = typical exports and web images (0.3 to 3
# megapixels), "photo" = 12-megapixel phone-camera JPEGs, "small" = 640x480 only.
SIZES = {"mixed": ((640, 480), (1024, 768), (1600, 1200), (2048, 1536)), "photo": ((4032, 3024),),
         "small": ((640, 480),)}

# The reference, verbatim the common open_clip recipe; it reports its own phases on stderr.
REFERENCE = r'''
import csv, json, sys, time
t0 = time.perf_counter()
import torch, open_clip
from pathlib import Path
from PIL import Image
root, ckpt, labels, out = Path(sys.argv[1]), sys.argv[2], sys.argv[3].split(","), sys.argv[4]
t1 = time.perf_counter()
model, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32", pretrained=ckpt)
model.eval()
tokenizer = open_clip.get_tokenizer("ViT-B-32")
paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
t2 = time.perf_counter()
rows = []
with torch.no_grad():
    text = model.encode_text(tokenizer([f"a photo of a {label}." for label in labels]))
    text = text / text.norm(dim=-1, keepdim=True)
    for i in range(0, len(paths), 32):
        batch = paths[i:i + 32]
        images = torch.stack([preprocess(Image.open(p).convert("RGB")) for p in batch])
        features = model.encode_image(images)
        features = features / features.norm(dim=-1, keepdim=True)
        probs = (model.logit_scale.exp() * features @ text.T).softmax(dim=-1)
        for p, row in zip(batch, probs.tolist()):
            best = max(range(len(labels)), key=row.__getitem__)
            rows.append([p.relative_to(root).as_posix(), labels[best], row[best]] + row)
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
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed ({done.returncode}):\n{done.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return elapsed, cpu, done.stderr


def _top1(path: Path) -> dict[str, tuple[str, list[float]]]:
    with open(path, newline="") as f:
        return {r["path"]: (r["label"], [float(r[f"score:{x}"]) for x in LABELS]) for r in csv.DictReader(f)}


def _agreement(ref: Path, ours: Path) -> dict[str, Any]:
    a, b = _top1(ref), _top1(ours)
    if sorted(a) != sorted(b):
        raise RuntimeError(f"the two sides labelled different files: {len(a)} vs {len(b)}")
    same = sum(a[p][0] == b[p][0] for p in a)
    diff = max(max(abs(x - y) for x, y in zip(a[p][1], b[p][1])) for p in a)
    return {"images": len(a), "top1_agreement": same / len(a), "max_abs_prob_diff": diff}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mmkit bench label", description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=128, help="number of images (default 128)")
    p.add_argument("--sizes", choices=sorted(SIZES), default="mixed", help="image sizes (default mixed)")
    p.add_argument("--rounds", type=int, default=2, help="runs of each side, alternating (default 2)")
    p.add_argument("--batch-size", type=int, default=64, help="mmkit's batch size (the reference uses 32)")
    p.add_argument("--num-workers", type=int, default=None, help="mmkit's decoding workers (default: its own)")
    p.add_argument("--precision", default="auto", help="mmkit's --precision (auto: bf16 where the CPU has it)")
    p.add_argument("--ensemble", action="store_true", help="mmkit with its default template ensemble")
    p.add_argument("--exact-decode", action="store_true", help="mmkit without JPEG DCT-domain downscaling")
    p.add_argument("--workdir", help="where images and the checkpoint are made (reused); default a temp folder")
    p.add_argument("--json", help="also write the results here")
    return p


def _commands(args: argparse.Namespace, images: Path, ckpt: Path, work: Path) -> dict[str, list[str]]:
    script = work / "reference_open_clip.py"
    script.write_text(REFERENCE)
    mmkit = [sys.executable, "-m", "mmkit.cli", "label", str(images), "--labels", ",".join(LABELS), "--model", ARCH,
             "--pretrained", str(ckpt), "--out", str(work / "mmkit.csv"), "--all-scores", "--overwrite", "--quiet",
             "--precision", args.precision, "--batch-size", str(args.batch_size)]
    mmkit += [] if args.ensemble else ["--template", TEMPLATE]
    mmkit += ["--num-workers", str(args.num_workers)] if args.num_workers is not None else []
    mmkit += ["--exact-decode"] if args.exact_decode else []
    return {"open_clip": [sys.executable, str(script), str(images), str(ckpt), ",".join(LABELS),
                          str(work / "reference.csv")], "mmkit": mmkit}


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    images = work / f"images_{args.sizes}_{args.images}"
    if not images.exists():
        log.info("writing %d %s images to %s", args.images, args.sizes, images)
        make_images(images, args.images, SIZES[args.sizes])
    ckpt = work / "open_clip_vit_b32_random.safetensors"
    if not ckpt.exists():
        log.info("saving a random-init open_clip %s to %s", ARCH, ckpt)
        make_checkpoint(ckpt)
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
    return _report(args, times, load, _agreement(work / "reference.csv", work / "mmkit.csv"))


def _in_process_seconds(side: str, stderr: str) -> float:
    """Seconds past interpreter start and imports: what each side measures of itself."""
    if side == "open_clip":
        phases = json.loads(stderr.strip().splitlines()[-1])
        return phases["load_s"] + phases["label_s"]
    found = re.search(r"mmkit label finished in ([\d.]+) s", stderr)
    return float(found[1]) if found else float("nan")


def _report(args: argparse.Namespace, times: dict[str, dict[str, list[float]]], load: list[float],
            agreement: dict[str, Any]) -> dict[str, Any]:
    from mmkit.inference.precision import cpu_has_bf16

    med = {side: {k: statistics.median(v) for k, v in t.items()} for side, t in times.items()}
    ratio = {k: round(med["open_clip"][k] / med["mmkit"][k], 2) for k in ("wall", "cpu", "inner")}
    return {
        "images": args.images, "sizes": args.sizes, "rounds": args.rounds, "batch_size": args.batch_size,
        "precision": args.precision, "ensemble": args.ensemble, "exact_decode": args.exact_decode,
        "cpu_count": os.cpu_count(), "cpu_native_bf16": cpu_has_bf16(), "load_average": [round(x, 2) for x in load],
        "runs": {side: {k: [round(x, 2) for x in v] for k, v in t.items()} for side, t in times.items()},
        "median_s": {side: {k: round(v, 2) for k, v in m.items()} for side, m in med.items()},
        "images_per_s": {side: round(args.images / m["wall"], 2) for side, m in med.items()},
        "speedup": ratio, **agreement,
    }


def _print(result: dict[str, Any]) -> None:
    lines = [f"{result['images']} images ({result['sizes']} sizes), {result['rounds']} rounds, "
             f"{result['cpu_count']} CPUs, native bf16: {result['cpu_native_bf16']}, "
             f"load average {result['load_average']}"]
    for side in ("open_clip", "mmkit"):
        m = result["median_s"][side]
        lines.append(f"  {side:9s} wall {m['wall']:7.2f} s  {result['images_per_s'][side]:6.2f} img/s  "
                     f"CPU {m['cpu']:7.2f} s  after imports {m['inner']:7.2f} s   "
                     f"(wall of each run {result['runs'][side]['wall']})")
    r = result["speedup"]
    lines.append(f"  open_clip / mmkit: {r['wall']}x wall, {r['cpu']}x CPU time, {r['inner']}x after imports")
    lines.append(f"  top-1 agreement {100 * result['top1_agreement']:.1f}%, "
                 f"max |prob difference| {result['max_abs_prob_diff']:.2e}")
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.images < 1 or args.rounds < 1:
        print("mmkit bench label: --images and --rounds must be >= 1", file=sys.stderr)
        return 2
    if args.workdir:
        work = Path(args.workdir).expanduser()
        work.mkdir(parents=True, exist_ok=True)
        result = run(args, work)
    else:
        with tempfile.TemporaryDirectory(prefix="mmkit-bench-label-") as tmp:
            result = run(args, Path(tmp))
    _print(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    raise SystemExit(main())
