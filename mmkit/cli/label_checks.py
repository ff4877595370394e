"""`mmkit label`'s checks before any image is read: the arguments on their own (ranges, devices,
where outputs go), and the settings file OUT.run.json that a `--resume` must match (the writer's
guarantees: `mmkit.inference.writers`).
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from mmkit.inference.precision import check_device, check_multi_gpu, resolve_precision
from mmkit.inference.ranks import Ranks
from mmkit.inference.writers import OutputConflict


def run_settings(args: argparse.Namespace, prompts: dict[str, list[str]]) -> dict[str, Any]:
    """What the rows depend on; a resumed run must match it (batch size, workers, device don't)."""
    def where(value: str | None) -> str | None:
        return str(Path(value).expanduser().resolve()) if value and Path(value).expanduser().exists() else value

    settings = {"model": where(args.model), "pretrained": where(args.pretrained), "prompts": prompts,
                "examples": where(args.examples), "examples_weight": args.examples_weight if args.examples else None,
                "multi_label": args.multi_label, "threshold": args.threshold, "other_label": args.other_label,
                "top_k": args.top_k, "all_scores": args.all_scores, "exact_decode": args.exact_decode}
    # int8 weights change the scores; recorded only when used, so fp32 runs' settings files stay valid.
    return {**settings, "quantize": args.quantize} if args.quantize != "none" else settings


def check_settings(path: Path, settings: dict[str, Any], resume: bool) -> bool:
    """Refuse to resume rows computed with other settings; False when a resumed run's settings
    are unknown (no readable OUT.run.json), so that its rows must be checked one by one."""
    if not resume:
        return True
    try:
        before = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        before = None
    if isinstance(before, dict) and before != settings:
        changed = sorted(k for k in {*before, *settings} if before.get(k) != settings.get(k))
        raise OutputConflict(f"{path}: the rows so far were computed with other {', '.join(changed)}; "
                             "use the same options, or --overwrite")
    return isinstance(before, dict)


def record_settings(path: Path, settings: dict[str, Any]) -> None:
    """This run's settings, for a later --resume to compare against (written atomically)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(settings, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def errors_path(args: argparse.Namespace) -> Path:
    out = Path(args.out).expanduser()
    return Path(args.errors).expanduser() if args.errors else out.with_name(f"{out.stem}.errors{out.suffix}")


def usage_error(args: argparse.Namespace, ranks: Ranks = Ranks()) -> str | None:
    """What is wrong with the arguments on their own (before any file is read or made), or None; under a
    launcher, also for this rank (its device)."""
    if ranks.multi and args.multi_gpu:  # before the device checks: the answer does not depend on them
        return ("--multi-gpu splits each batch over every GPU of one process; under a launcher each rank has "
                "its own (--device cuda is cuda:LOCAL_RANK): drop --multi-gpu")
    if args.top_k < 1 or args.batch_size < 1:
        return "--top-k and --batch-size must be >= 1"
    if args.retry_errors and not args.resume:
        return "--retry-errors goes with --resume"
    for flag, value in (("--threshold", args.threshold), ("--examples-weight", args.examples_weight)):
        if value is not None and not 0.0 <= value <= 1.0:  # also false for NaN
            return f"{flag} must be in [0, 1], got {value}"
    out, errors = Path(args.out).expanduser(), errors_path(args)
    if out.resolve() == errors.resolve():
        return f"--errors and --out are the same file ({out.resolve()}): the rows and the errors each need their own"
    for flag, path in (("--out", out), ("--errors", errors)):
        if path.is_dir():  # else found only at the final rename, after every image was labelled
            return f"{flag} {path} is a folder: give a file name ending in .csv or .jsonl"
    problem = _placement_error(args)
    if problem:
        return problem
    try:
        device = check_device(args.device)
        # The choices resolve_precision refuses (bf16 on a CPU without it only warns, when the model loads).
        if args.quantize != "none" or args.precision == "fp16":
            resolve_precision(args.precision, device, args.quantize)
        if args.multi_gpu:
            check_multi_gpu(device)
    except ValueError as e:
        return str(e)
    if ranks.device(args.device) != args.device:
        try:
            check_device(ranks.device(args.device))
        except ValueError as e:  # more ranks on this machine than GPUs
            return (f"rank {ranks.rank}: {e} (--device cuda is each rank's own GPU, cuda:LOCAL_RANK): start at "
                    "most one rank per GPU (torchrun --nproc_per_node)")
    return None


def _placement_error(args: argparse.Namespace) -> str | None:
    """What is wrong with --copy-to / --link-to DIR_OUT, or None: it must be a folder (or not yet
    exist) apart from DIR, neither holding it nor inside it."""
    placed = args.copy_to or args.link_to
    if not placed:
        return None
    flag = f"--{'copy' if args.copy_to else 'link'}-to {placed}"
    root, target = Path(args.dir).expanduser().resolve(), Path(placed).expanduser().resolve()
    if root.is_relative_to(target):
        return (f"{flag} is the input folder or above it: the sorted images would be mixed with (and rescanned "
                "as) the inputs; choose another folder")
    if target.is_relative_to(root):
        return (f"{flag} is inside the input folder {args.dir}: later runs would scan the sorted images as "
                "inputs; choose a folder outside it")
    if target.exists() and not target.is_dir():
        return f"{flag} is a file: give a folder (made if missing)"
    return None
