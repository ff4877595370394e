"""The numbers `mmkit bench label` reports: per side the median wall, CPU and after-imports seconds,
the speed-up of each mmkit path over the open_clip loop, and the top-1 agreement of every mmkit
path's labels with open_clip's and with mmkit fp32's (the accuracy guard of the int8 path, issue 13); with
`--embed`, the cosine and nearest-image agreement of the image vectors instead.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
from pathlib import Path
from typing import Any, Callable

import numpy as np

# the side names that other paths are compared with: FP32 is mmkit at --precision fp32 --quantize none, never
# bf16 (a resolved "auto" side is "mmkit bf16")
OPEN_CLIP, FP32 = "open_clip", "mmkit"


def read_top1(path: Path) -> dict[str, tuple[str, list[float]]]:
    """path -> (top label, scores in column order) of a CSV with path, label and score:<label> columns."""
    with open(path, newline="") as f:
        rows = csv.DictReader(f)
        columns = [c for c in rows.fieldnames or [] if c.startswith("score:")]
        return {r["path"]: (r["label"], [float(r[c]) for c in columns]) for r in rows}


def agreement(ref: Path, ours: Path) -> dict[str, Any]:
    """Top-1 agreement and the largest probability difference of two outputs on the same files."""
    a, b = read_top1(ref), read_top1(ours)
    if sorted(a) != sorted(b):
        raise RuntimeError(f"the two sides labelled different files: {len(a)} vs {len(b)}")
    same = sum(a[p][0] == b[p][0] for p in a)
    diff = max(max(abs(x - y) for x, y in zip(a[p][1], b[p][1])) for p in a)
    return {"images": len(a), "top1_agreement": same / len(a), "max_abs_prob_diff": diff}


def read_vectors(path: Path) -> dict[str, np.ndarray]:
    """path -> unit vector of an image-vectors output: `path` (.npy) with its list of files beside it
    (`embed_images.paths_file`); unreadable files (an "error") left out."""
    from mmkit.cli.embed_images import paths_file

    vectors = np.load(path)
    files = [json.loads(line) for line in paths_file(path).read_text().splitlines()]
    return {f["path"]: v for f, v in zip(files, vectors) if "error" not in f}


def embedding_agreement(ref: Path, ours: Path) -> dict[str, Any]:
    """How two image-vector outputs of the same files agree: the smallest and mean cosine of each image's two
    vectors, and the share of images whose nearest other image (largest cosine) is the same in both."""
    a, b = read_vectors(ref), read_vectors(ours)
    if sorted(a) != sorted(b):
        raise RuntimeError(f"the two sides embedded different files: {len(a)} vs {len(b)}")
    names = sorted(a)
    x, y = np.stack([a[n] for n in names]), np.stack([b[n] for n in names])
    cosine = (x * y).sum(axis=1)
    nearest = [np.where(np.eye(len(names), dtype=bool), -np.inf, m @ m.T).argmax(axis=1) for m in (x, y)]
    return {"images": len(names), "min_cosine": float(cosine.min()), "mean_cosine": float(cosine.mean()),
            "same_nearest": float((nearest[0] == nearest[1]).mean()) if len(names) > 1 else 1.0}


def agreements(outputs: dict[str, Path], compare: Callable[[Path, Path], dict[str, Any]] = agreement
               ) -> dict[str, dict[str, dict[str, Any]]]:
    """Per mmkit path: its agreement (`compare`: of labels, or `embedding_agreement` of vectors) with open_clip
    and with mmkit fp32 (where those ran)."""
    found: dict[str, dict[str, dict[str, Any]]] = {}
    for side, out in outputs.items():
        if side == OPEN_CLIP:
            continue
        found[side] = {base: compare(outputs[base], out) for base in (OPEN_CLIP, FP32)
                       if base in outputs and base != side}
    return found


def report(args: argparse.Namespace, times: dict[str, dict[str, list[float]]], load: list[float],
           agree: dict[str, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """The JSON-able result: settings, per-run and median seconds, speed-ups, agreements."""
    import torch

    from mmkit.inference.precision import cpu_has_bf16

    med = {side: {k: statistics.median(v) for k, v in t.items()} for side, t in times.items()}
    speedup = {side: {k: round(med[OPEN_CLIP][k] / m[k], 2) for k in ("wall", "cpu", "inner")}
               for side, m in med.items() if side != OPEN_CLIP and OPEN_CLIP in med}
    result = {
        "images": args.images, "sizes": args.sizes, "rounds": args.rounds, "batch_size": args.batch_size,
        "precision": args.precision, "resolved_precision": args.resolved_precision, "quantize": args.quantize,
        "ensemble": args.ensemble, "embed": args.embed,
        "exact_decode": args.exact_decode, "model": args.model or "random ViT-B-32", "device": args.device,
        "gpu": torch.cuda.get_device_name(args.device) if torch.device(args.device).type == "cuda" else None,
        "cpu_count": os.cpu_count(), "cpu_native_bf16": cpu_has_bf16(), "load_average": [round(x, 2) for x in load],
        "runs": {side: {k: [round(x, 2) for x in v] for k, v in t.items()} for side, t in times.items()},
        "median_s": {side: {k: round(v, 2) for k, v in m.items()} for side, m in med.items()},
        "images_per_s": {side: round(args.images / m["wall"], 2) for side, m in med.items()},
        "speedup_over_open_clip": speedup, "agreement": agree,
    }
    # the fp32 side's figures at the top level, as before the int8 path existed (never a bf16 side's: that one is
    # "mmkit bf16" and has its figures under speedup_over_open_clip only)
    if FP32 in speedup:
        result["speedup"] = speedup[FP32]
        result.update(agree[FP32].get(OPEN_CLIP, {}))
    return result


def print_report(result: dict[str, Any]) -> None:
    gpu = f" ({result['gpu']})" if result.get("gpu") else ""
    tool = "mmkit embed" if result.get("embed") else "mmkit label"
    lines = [f"{tool}: {result['images']} images ({result['sizes']} sizes) on {result.get('device', 'cpu')}{gpu}, "
             f"{result['rounds']} rounds, --precision {result['precision']} = {result['resolved_precision']}, "
             f"{result['cpu_count']} CPUs, CPU native bf16: {result['cpu_native_bf16']}, model {result['model']}, "
             f"load average {result['load_average']}"]
    for side, m in result["median_s"].items():
        lines.append(f"  {side:11s} wall {m['wall']:7.2f} s  CPU {m['cpu']:7.2f} s  after imports {m['inner']:7.2f} s"
                     f"   (wall of each run {result['runs'][side]['wall']})")
    for side, r in result["speedup_over_open_clip"].items():
        lines.append(f"  open_clip / {side}: {r['wall']}x wall, {r['cpu']}x CPU time, {r['inner']}x after imports")
    for side, bases in result["agreement"].items():
        for base, a in bases.items():
            if "min_cosine" in a:  # --embed
                lines.append(f"  {side} vs {base}: cosine min {a['min_cosine']:.6f} mean {a['mean_cosine']:.6f} "
                             f"of {a['images']}, same nearest image {100 * a['same_nearest']:.1f}%")
            else:
                lines.append(f"  {side} vs {base}: top-1 agreement {100 * a['top1_agreement']:.1f}% of "
                             f"{a['images']}, max |prob difference| {a['max_abs_prob_diff']:.2e}")
    print("\n".join(lines))
