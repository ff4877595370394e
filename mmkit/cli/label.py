"""`mmkit label`: zero-shot (and few-shot) labelling of image folders with CLIP, the command line
over `mmkit.inference` (the zero-shot scorer, the CLIP loader, the crash-safe writer whose output
guarantees `mmkit.inference.writers` states, and the folder placement).

Zero-shot classification as in Radford et al. (2021), section 3.1.4; see `mmkit.inference.zero_shot`.

Under torchrun (or any launcher setting torch.distributed's environment) the ranks share the images: the
first rank alone touches the outputs (locks, rows, errors, placing, resume) and hands the others the images
left; batch k of one process's batches is scored by rank k % world_size, and the first rank writes each
round of batches in rank order: one process's output, byte for byte.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, TypeVar

import torch

from mmkit.cli.label_checks import check_settings, errors_path, record_settings, run_settings, usage_error
from mmkit.cli.options import Parser, at_least
from mmkit.cli.progress import progress
from mmkit.data.images import scan_images
from mmkit.errors import WriteFailed, print_error
from mmkit.inference.clip_loader import clip_eval_transform, load_clip
from mmkit.inference.image_batches import default_workers, image_batches
from mmkit.inference.label_names import check_label_names
from mmkit.inference.label_outputs import OTHER, Decision, folder_names, place_file
from mmkit.inference.precision import PRECISIONS
from mmkit.inference.quantize import QUANTIZATIONS, describe
from mmkit.inference.prompts import (
    DEFAULT_TEMPLATES, check_templates, expand_prompts, parse_labels, read_labels_file, read_prompt_file,
)
from mmkit.cli.ranked import on_ranks
from mmkit.inference.ranks import RankFailed, Ranks
from mmkit.inference.writers import OutputConflict, ResumableWriter, exclusive, path_from_text, path_text
from mmkit.inference.zero_shot import FileResult, ZeroShotClassifier

log = logging.getLogger(__name__)
T = TypeVar("T")


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
    p = Parser(
        prog="mmkit label", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Zero-shot (and few-shot) label every image under DIR with CLIP.",
        epilog="examples:\n"
               "  mmkit label photos/ --labels 'cat,dog' --model ViT-B-32 --pretrained vit_b32.safetensors "
               "--out labels.csv\n"
               "  mmkit label photos/ --labels-file labels.txt --model runs/clip/export --out labels.jsonl "
               "--top-k 3 --threshold 0.5 --resume --copy-to sorted/\n\n"
               "labels file: one 'label' or 'label: synonym | synonym | \"a literal prompt\"' per line.\n"
               "Rows are fsynced per batch to OUT.partial and renamed to OUT at the end; --resume after a\n"
               "crash or kill continues where it stopped, leaving exactly one row per image.\n"
               "CSV cells starting with = + - @ (or tab, CR, ') get a leading ' so spreadsheets do not run\n"
               "them as formulas (OWASP); JSONL holds the values as they are.")
    p.add_argument("dir", help="folder of images (scanned recursively)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--labels", help="comma-separated labels, each 'label' or 'label: synonym | synonym'; "
                     "at least two (one label always scores 1.0: refused unless --multi-label), each once")
    src.add_argument("--labels-file", help="one label entry per line (# comments)")
    p.add_argument("--examples", help="few-shot folder with one subfolder of example images per label")
    p.add_argument("--examples-weight", type=float, default=0.5,
                   help="weight w in [0, 1] of the image prototype: normalise((1-w) text + w image) (default 0.5)")
    p.add_argument("--model", required=True, help="mmkit CLIP checkpoint directory, or an open_clip architecture")
    p.add_argument("--pretrained", help="with an architecture: checkpoint file or open_clip pretrained tag")
    p.add_argument("--out", default="labels.csv", help="labels.csv or labels.jsonl (default labels.csv)")
    p.add_argument("--errors", help="unreadable files (path, reason); default OUT's name + .errors")
    p.add_argument("--template", action="append", help="prompt template with {} (repeat; replaces the default set)")
    p.add_argument("--templates-file", help="one prompt template per line")
    p.add_argument("--top-k", type=int, default=1, help="also write the k best labels and scores (1 < k <= labels)")
    p.add_argument("--all-scores", action="store_true", help="one score:<label> column per label")
    p.add_argument("--threshold", type=float,
                   help="in [0, 1]; single-label: top score below it -> the --other label; multi-label: cut-off "
                        "(default 0.5)")
    p.add_argument("--other-label", default=OTHER, help=f"label of unsure images (default {OTHER!r})")
    p.add_argument("--multi-label", action="store_true", help="score labels independently (sigmoid); label = a|b")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="skip images already in OUT / the errors file")
    mode.add_argument("--overwrite", action="store_true", help="start over, replacing OUT at the end")
    p.add_argument("--retry-errors", action="store_true", help="with --resume: try the listed unreadable files again")
    place = p.add_mutually_exclusive_group()
    place.add_argument("--copy-to", help="copy images into DIR_OUT/<label>/ (sanitised names; a folder outside DIR)")
    place.add_argument("--link-to", help="hard-link (else symlink) images into DIR_OUT/<label>/")
    p.add_argument("--follow-links", action="store_true",
                   help="also follow symlinks that lead outside DIR (by default they are left out)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--num-workers", type=at_least(0), default=None,
                   help="decoding processes (default: cores - 1, 1..8; never more than the batches to decode)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="autocast precision; auto = bf16 where the hardware has it, else fp32")
    p.add_argument("--quantize", default="none", choices=QUANTIZATIONS,
                   help="int8: int8 weights for the Linear layers of the image tower (CPU only; the text "
                        "tower, run once over the prompts, stays fp32)")
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


def _utf8(flag: str, path: str, read: Callable[[str], T]) -> T:
    """`read(path)`, a file read as UTF-8; one that is not is a ValueError naming it, the line and the byte, and
    one that cannot be read a ValueError naming the option and why."""
    try:
        return read(path)
    except UnicodeDecodeError as e:
        line = e.object[:e.start].count(b"\n") + 1
        raise ValueError(f"{flag} {path}: not UTF-8 text (byte {e.start}, 0x{e.object[e.start]:02x}, on line {line}); "
                         "save it as UTF-8") from None
    except OSError as e:  # missing, a folder, unreadable: named with its option, not a bare "[Errno 2] ..."
        raise ValueError(f"{flag} {path}: cannot read it ({e.strerror or e})") from None


def _label_prompts(args: argparse.Namespace) -> tuple[dict[str, list[str]], list[str]]:
    templates = list(args.template or [])
    if args.templates_file:
        templates += _utf8("--templates-file", args.templates_file, read_prompt_file).splitlines()
    templates = check_templates(templates) if templates else list(DEFAULT_TEMPLATES)
    if args.labels_file:
        labels = _utf8("--labels-file", args.labels_file, read_labels_file)
    else:
        labels = parse_labels((args.labels or "").split(","))
    if not labels and not args.examples:
        raise ValueError("give --labels, --labels-file or --examples")
    return {name: expand_prompts(alts, templates) for name, alts in labels.items()}, templates


def _example_names(folder: str | None, prompts: dict[str, list[str]]) -> list[str]:
    """The label subfolders of `--examples`. None is refused in one line (the examples would be silently
    unused); labels they add beside given `prompts` (`cats/` for --labels cat) are warned about, as each is
    then one more label, scored by its images alone."""
    if not folder:
        return []
    if not Path(folder).expanduser().is_dir():
        raise ValueError(f"--examples {folder}: not a folder")
    names = sorted(e.name for e in os.scandir(Path(folder).expanduser()) if e.is_dir() and not e.name.startswith("."))
    if not names:
        raise ValueError(f"--examples {folder}: no label subfolders (give one folder per label, holding that "
                         "label's example images)")
    added = [n for n in names if n not in prompts]
    if prompts and added:
        log.warning("--examples %s adds label(s) that --labels does not name: %s (each scored by its example images "
                    "alone); name the subfolders as the labels to add examples to them", folder, ", ".join(added))
    return names


def _outputs(args: argparse.Namespace, names: list[str]) -> _Outputs:
    """The writers, not yet opened: making them refuses an output other than .csv/.jsonl."""
    decision = Decision(tuple(names), args.top_k, args.threshold, args.multi_label, args.all_scores, args.other_label)
    return _Outputs(ResumableWriter(Path(args.out).expanduser(), decision.fields()),
                    ResumableWriter(errors_path(args), ["path", "reason"]), decision)


def _settings_file(out: Path) -> Path:
    return out.with_name(out.name + ".run.json")


def _lock_file(out: Path) -> Path:
    return out.with_name(f".{out.name}.lock")


def _open_outputs(args: argparse.Namespace, outputs: _Outputs, names: list[str], prompts: dict[str, list[str]],
                  earlier: list[tuple[str, list[str]]]) -> tuple[set[str], Counter]:
    """Open the writers (resumed or fresh); returns the paths already done and their label counts;
    with --copy-to/--link-to, `earlier` receives the (path, labels) of the rows carried over."""
    out, decision = outputs.rows.path, outputs.decision
    target = args.copy_to or args.link_to
    if not args.resume and not args.overwrite and (outputs.rows.exists() or outputs.errors.exists()):
        raise OutputConflict(f"{out} (or its .partial / errors file) exists: pass --resume to skip the images "
                             "already done, or --overwrite to start over")
    out.parent.mkdir(parents=True, exist_ok=True)
    settings, settings_file = run_settings(args, prompts), _settings_file(out)
    known = check_settings(settings_file, settings, args.resume)
    allowed = {*names, args.other_label}
    done: set[str] = set()
    counts: Counter = Counter()

    def keep_row(row: dict[str, Any]) -> bool:
        labels = decision.labels_of(row)
        if not known and not set(labels) <= allowed:  # no record of the earlier settings: check each row
            raise OutputConflict(f"{out}: rows so far hold labels this run does not have "
                                 f"({', '.join(sorted(set(labels) - allowed))}) and {settings_file.name} is missing; "
                                 "use the same labels, or --overwrite")
        done.add(row["path"])
        counts.update(labels)
        if target is not None:
            earlier.append((row["path"], labels))
        return True

    def keep_error(row: dict[str, Any]) -> bool:
        if args.retry_errors:
            return False
        done.add(row["path"])
        return True

    outputs.rows.start(args.resume, keep_row)
    outputs.errors.start(args.resume, keep_error)
    record_settings(settings_file, settings)
    return done, counts


def _missing(paths: list[Path]) -> list[Path]:
    return [p for p in paths if not p.exists()]


@contextlib.contextmanager
def _undone_if_refused(outputs: _Outputs, made: list[Path], summary: Summary) -> Iterator[None]:
    """A run refused before it wrote a row (an output that exists, other settings, a bad checkpoint)
    removes what it made, lock files included (`made`: those and the folders, missing before the
    locks were taken): the corrected command finds the output folder as it was. A run that wrote
    rows keeps them, for --resume. Entered holding both locks: the outputs missing now are ours."""
    made = _missing([outputs.rows.partial, outputs.errors.partial, _settings_file(outputs.rows.path)]) + made
    try:
        yield
    except (ValueError, OSError):
        if not summary.labeled and not summary.failed:
            for path in made:
                with contextlib.suppress(OSError):  # a folder that now holds other files stays
                    if path.is_dir():
                        path.rmdir()
                    else:
                        path.unlink(missing_ok=True)
        raise


def _todo(root: Path, done: set[str], exclude: Path | None, follow_links: bool) -> list[str]:
    """The images under `root` (paths relative to it, as the OS gives them) whose rows are not in `done`
    (the paths as the outputs hold them: a name that is not UTF-8 in `path_text`'s escaped form)."""
    excluded = exclude.resolve() if exclude else None
    todo = []
    for p in scan_images(root, follow_links=follow_links):
        if excluded is not None and _resolves_under(p, excluded):
            continue  # our own --copy-to/--link-to output, reached through a link (--follow-links)
        rel = p.relative_to(root).as_posix()
        if path_text(rel) not in done:
            todo.append(rel)
    return todo


def _resolves_under(path: Path, folder: Path) -> bool:
    try:
        return path.resolve().is_relative_to(folder)
    except (OSError, RuntimeError):  # a symlink loop: not ours; loading it reports it as unreadable
        return False


def _place_earlier(args: argparse.Namespace, root: Path, target: Path, folders: dict[str, str],
                   earlier: list[tuple[str, list[str]]]) -> None:
    """On --resume with --copy-to/--link-to: place the images earlier runs labelled but did not
    place (run without it, or killed between writing a row and placing its file)."""
    mode = "copy" if args.copy_to else "link"
    for written, labels in earlier:
        # the row's path as written (`path_text`); a name that is not UTF-8 is the file of its unescaped form
        path = written if (root / written).is_file() else path_from_text(written)
        for label in labels:
            if label in folders and not (target / folders[label] / path).exists() and (root / path).is_file():
                place_file(root / path, target, folders[label], path, mode)


def _check_names(args: argparse.Namespace, names: list[str]) -> None:
    """Refuse label names (with --other-label and --top-k) that would make ambiguous or empty columns."""
    if any("|" in n for n in names):
        raise ValueError(f"label names may not contain '|' (it joins multi-label output): {names}")
    if not args.other_label.strip():
        raise ValueError("--other-label is empty: unsure images need a label name")
    in_use = args.threshold is not None or args.multi_label  # only then can an image land in the bucket
    if in_use and args.other_label.strip().casefold() in {n.casefold() for n in names}:
        raise ValueError(f"{args.other_label!r} is a label and the unsure bucket: rename one (--other-label)")
    check_label_names(names, args.multi_label, "--multi-label")  # the Python API's check too
    if args.top_k > len(names):
        raise ValueError(f"--top-k {args.top_k} is more than the {len(names)} labels: give at most {len(names)}")


def run(args: argparse.Namespace, ranks: Ranks = Ranks()) -> Summary:
    """The command behind `main`, on parsed arguments. Under a launcher, the first rank's part: it alone
    reads and writes the outputs, and hands the others (`_follow`) the images left, or None if it stopped."""
    handed = False
    try:
        root = Path(args.dir).expanduser()
        if not root.is_dir():
            raise ValueError(f"{root} is not a folder")
        prompts, templates = _label_prompts(args)
        names = list(prompts) + [n for n in _example_names(args.examples, prompts) if n not in prompts]
        _check_names(args, names)
        target = Path(args.copy_to or args.link_to).expanduser() if (args.copy_to or args.link_to) else None
        outputs, summary = _outputs(args, names), Summary()
        locks = [_lock_file(w.path) for w in (outputs.rows, outputs.errors)]
        folders = sorted({d for w in (outputs.rows, outputs.errors) for d in w.path.parents},
                         key=lambda d: -len(d.parts))
        made = _missing([*locks, *folders])  # what taking the locks makes: files first, folders deepest first
        earlier: list[tuple[str, list[str]]] = []
        with exclusive(locks[0]), exclusive(locks[1]), _undone_if_refused(outputs, made, summary):
            done, summary.counts = _open_outputs(args, outputs, names, prompts, earlier)
            summary.resumed = len(done)
            if target is not None and earlier:
                _place_earlier(args, root, target, folder_names([*names, args.other_label]), earlier)
            del earlier
            todo = _todo(root, done, target, args.follow_links)
            ranks.broadcast((todo, prompts, templates))
            handed = True
            if todo:
                _label(args, root, todo, prompts, templates, outputs, summary, target, ranks)
            outputs.errors.finish()
            outputs.rows.finish()
    except (ValueError, OSError):
        if not handed:
            ranks.broadcast(None)  # the others stop; this rank reports the problem (`main`)
        raise
    return summary


def _follow(args: argparse.Namespace, ranks: Ranks) -> int:
    """(ranks other than the first) Score this rank's batches of the images the first rank hands out and
    hand it the results; returns the first rank's exit code."""
    plan = ranks.broadcast(None)
    if plan is not None and plan[0]:
        try:
            scored = _scored(args, Path(args.dir).expanduser(), *plan, ranks)[0]
        except ValueError:  # a problem loading, here or on another rank: the first rank reports it
            scored = None
        if scored is not None:
            ranks.lockstep(scored).follow()
    return ranks.broadcast(None)


def _together(ranks: Ranks, step: Callable[[], T]) -> T:
    """`step()` on every rank; a ValueError or OSError on any one stops them all, raised on each as a
    ValueError with the message of the first rank that met one (named when not the first). One rank:
    `step()` as it is."""
    if not ranks.multi:
        return step()
    result, problem = None, None
    try:
        result = step()
    except (ValueError, OSError) as e:
        problem = str(e)
    for rank, found in enumerate(ranks.all_gather(problem)):
        if found is not None:
            raise ValueError(found if rank == 0 else f"rank {rank}: {found}")
    return result  # type: ignore[return-value]


def _scored(args: argparse.Namespace, root: Path, todo: list[str], prompts: dict[str, list[str]],
            templates: list[str], ranks: Ranks) -> tuple[Iterator[list[FileResult] | None], ZeroShotClassifier, str]:
    """This rank's share of `todo` scored a batch at a time (the model, prompts and decoding workers started
    on every rank), with the labeler and a note on its workers. Batch k of one process's batches is rank
    k % world_size's; each rank's stream is padded with None to ceil(batches / world_size) rounds, so that
    the ranks end together (`Lockstep` reads an uneven end as a changed input)."""
    starts = range(0, len(todo), args.batch_size)
    mine = [path for k, s in enumerate(starts) if ranks.owns(k) for path in todo[s:s + args.batch_size]]
    chosen = default_workers() if args.num_workers is None else args.num_workers
    workers = min(chosen, math.ceil(len(mine) / args.batch_size))  # a worker decodes whole batches: more would idle
    note = f", not {chosen}: one per batch" if args.num_workers is not None and workers < chosen else ""
    device = ranks.device(args.device)

    def start() -> tuple[ZeroShotClassifier, Iterator]:
        transform = clip_eval_transform(args.model, args.pretrained, args.exact_decode)
        # Decoding starts now, in the workers, while the weights load and the prompts are encoded.
        batches = image_batches(root, mine, transform, args.batch_size, workers,
                                pin_memory=torch.device(device).type == "cuda")
        model, tokenizer = load_clip(args.model, args.pretrained)
        labeler = ZeroShotClassifier(model, tokenizer, transform, device, args.precision, args.multi_gpu,
                                     quantize=args.quantize)  # int8: the image tower
        examples = labeler.prototypes(args.examples, args.batch_size, 0) if args.examples else None
        labeler.set_labels(prompts, examples, args.examples_weight, args.multi_label, templates)
        return labeler, batches

    labeler, batches = _together(ranks, start)
    rounds = math.ceil(len(starts) / ranks.world_size)
    scored = _padded(labeler.predict(batches, mine, args.multi_label), rounds)
    return scored, labeler, f"{workers} decoding workers{note}"


def _padded(items: Iterator[T], rounds: int) -> Iterator[T | None]:
    n = 0
    for n, item in enumerate(items, 1):
        yield item
    yield from [None] * (rounds - n)


def _label(args: argparse.Namespace, root: Path, todo: list[str], prompts: dict[str, list[str]],
           templates: list[str], outputs: _Outputs, summary: Summary, target: Path | None, ranks: Ranks) -> None:
    """(the first rank) Label `todo`: each round of batches, its own and the other ranks', written in rank
    order, that is in one process's batch order."""
    scored, labeler, workers = _scored(args, root, todo, prompts, templates, ranks)
    on = f"{ranks.device(args.device)} on {ranks.world_size} ranks" if ranks.multi else args.device
    log.info("labelling %d images with %d labels (%s, %s, %s)", len(todo), len(labeler.names), on,
             describe(labeler.precision, args.quantize, args.device), workers)
    folders = folder_names([*labeler.names, args.other_label]) if target else {}
    decision = outputs.decision
    with progress("labelling", len(todo) + summary.resumed, "img", summary.resumed, not args.quiet) as advance, \
            ranks.lockstep(scored) as steps:
        for results in (batch for parts in steps for batch in parts if batch is not None):
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


def main(argv: Sequence[str] | None = None) -> int:
    """`mmkit label DIR ...`; returns the exit code: 0 done (unreadable images are listed in the errors file),
    2 a user's mistake (arguments, folders, checkpoints, an output that exists), 1 another rank failed or
    writing failed mid-run (a full disk), 130 interrupted. Under a launcher every rank returns the first rank's
    code; only the first prints."""
    return on_ranks("mmkit label", _parser, argv, _checked)


def _checked(args: argparse.Namespace, ranks: Ranks) -> int:
    problem = ranks.first_problem(usage_error(args, ranks))
    if problem:
        if ranks.first:
            print_error("mmkit label", problem)
        return 2
    return _lead(args, ranks) if ranks.first else _follow(args, ranks)


def _lead(args: argparse.Namespace, ranks: Ranks) -> int:
    """(the first rank) The run, its one-line problem or its summary; the exit code, also sent to the others."""
    start = time.perf_counter()
    kept = f"rows so far are in {args.out}.partial: rerun with --resume"
    try:
        summary, code = run(args, ranks), 0
    except KeyboardInterrupt:  # the others are stopped too (SIGINT, or the launcher's SIGTERM)
        print(f"mmkit label: interrupted; {kept}", file=sys.stderr)
        return 130
    except WriteFailed as e:  # mid-run: a full disk, a quota, an I/O error
        partial = Path(f"{Path(args.out).expanduser()}.partial")  # removed when no row was written
        print_error("mmkit label", f"{e}; {kept if partial.exists() else 'no rows were written'}")
        code = 1
    except (ValueError, OSError) as e:  # bad arguments, files, checkpoints (WeightsError is a ValueError)
        print_error("mmkit label", e)
        code = 2
    except RankFailed as e:  # another rank failed while scoring (its traceback is on its stderr)
        print_error("mmkit label", f"{e}; {kept}")
        code = 1
    ranks.broadcast(code)
    if code:
        return code
    for line in summary.lines(Path(args.out).expanduser(), errors_path(args)):
        print(line, file=sys.stderr)
    log.info("mmkit label finished in %.3f s", time.perf_counter() - start)  # the bench reads it: ms, not 0.1 s
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    raise SystemExit(main())
