"""`mmkit embed FOLDER`: every image under the folder to a vector, with a CLIP (`clip_embed`: its image tower's
unit vectors) or a ViT (`ViT.pre_logits`: the pooled features its head reads, as a timm model made with
num_classes=0 returns them, not normalised). The folder is walked as `mmkit label` walks it (recursive, sorted,
symlinks leading outside left out unless --follow-links) and decoded in worker processes as it decodes
(--exact-decode: full-size JPEG decoding). `--out vectors.npy`: row i is the i-th file of `vectors.paths.jsonl`
({"path"} a line, with "error" for an unreadable file, whose row is NaN); `--out vectors.jsonl`: {"path",
"embedding"} a readable image. Unreadable files are reported on stderr, one line each. Under a launcher the ranks
share the batches (one a rank a round) and the first writes what one process writes.
"""
from __future__ import annotations

import argparse
import io
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Protocol

import numpy as np
from torch import Tensor

from mmkit.cli.bert_text_files import RowCounts, checked_output, written
from mmkit.cli.progress import progress
from mmkit.cli.ranked import set_up_on_ranks
from mmkit.data.transforms import EvalTransform
from mmkit.errors import quoted
from mmkit.inference.image_batches import ImageBatch
from mmkit.inference.ranks import Ranks, Share, merged
from mmkit.inference.text_rows import atomic_path, write_atomically
from mmkit.inference.writers import path_text
from mmkit.inference.zero_shot import NonFiniteScores

PAIRED_SUFFIX = ".paths.jsonl"  # vectors.npy's list of files: vectors.paths.jsonl


class ImageEncoder(Protocol):
    """What embeds a decoded batch: `ZeroShotClassifier` (CLIP), `Classifier` (ViT)."""

    def encode_images(self, pixels: Tensor) -> Tensor: ...


def paths_file(out: str | Path) -> Path:
    """The list of files beside an image folder's `.npy` output: vectors.npy -> vectors.paths.jsonl."""
    out = Path(out).expanduser()
    return out.with_name(out.stem + PAIRED_SUFFIX)


def finite_vectors(vectors: np.ndarray, what: str) -> np.ndarray:
    """`vectors`, or a `NonFiniteScores` (a ValueError: one line, nothing written) naming `what` gave NaN."""
    if not np.isfinite(vectors).all():
        raise NonFiniteScores(f"non-finite embeddings (NaN or infinity) for {what}: the model's weights or "
                              "preprocessing (std 0?) are broken")
    return vectors


@dataclass
class ImageRow:
    """One image of the folder: its path (as the outputs write it) and why it could not be read, if so."""

    path: str
    error: str | None = None


def embed_folder(args: argparse.Namespace, ranks: Ranks, prog: str, out_suffixes: tuple[str, ...],
                 prepare: Callable[[str], tuple[EvalTransform, Callable[[], tuple[ImageEncoder, int]]]]) -> int:
    """`mmkit embed FOLDER`'s run with the model `prepare(device)` names: (its preprocessing, what loads it as
    (encoder, vector size)); decoding starts between the two, while the weights load. The tool's exit code."""
    from mmkit.data.images import scan_images
    from mmkit.inference.image_batches import default_workers, image_batches
    from mmkit.inference.text_rows import check_output

    root = Path(args.texts).expanduser()

    def check() -> tuple[list[str] | None]:
        checked_output(args, out_suffixes, ranks)
        if args.out.endswith(".npy"):
            check_output(paths_file(args.out))
        # the first rank lists the folder and hands the list out: every rank embeds the same files
        return ([p.relative_to(root).as_posix() for p in scan_images(root, follow_links=args.follow_links)]
                if ranks.first else None),

    checked = set_up_on_ranks(prog, ranks, check)
    if checked is None:  # on every rank when one failed
        return 2
    paths: list[str] = ranks.broadcast(checked[0])
    size = args.batch_size
    batches = [range(s, min(s + size, len(paths))) for s in range(0, len(paths), size)]
    mine = [b for k, b in enumerate(batches) if ranks.owns(k)]

    def set_up() -> tuple[ImageEncoder, int, Iterator[ImageBatch]]:
        device = ranks.device(args.device)
        transform, load = prepare(device)
        workers = min(default_workers() if args.num_workers is None else args.num_workers, len(mine))
        # decoding starts now, in the workers, while the weights load
        decoded = image_batches(root, [paths[i] for b in mine for i in b], transform, size, workers,
                                pin_memory=device.startswith("cuda"))
        return *load(), decoded

    opened = set_up_on_ranks(prog, ranks, set_up)
    if opened is None:
        return 2
    embedder, dim, decoded = opened
    counts = RowCounts()
    rounds = math.ceil(len(batches) / ranks.world_size)
    with progress("embedding", len(paths), "img", enabled=ranks.first and not args.quiet) as advance:

        def parts() -> Iterator[tuple[range, Share]]:
            """Per round (one batch a rank): the round's files, and this rank's results for its batch."""
            decoding_at = 0  # where this rank's next batch starts in the list its workers decode
            for r in range(rounds):
                round_batches = batches[r * ranks.world_size:(r + 1) * ranks.world_size]
                span = range(round_batches[0].start, round_batches[-1].stop)
                k = r * ranks.world_size + ranks.rank
                if k >= len(batches):  # the last round has fewer batches than ranks
                    yield span, Share(len(span), [], [])
                    continue
                files = batches[k]
                results = _embed_batch(embedder, next(decoded), decoding_at, files, paths)
                decoding_at += len(files)
                advance(len(files))
                yield span, Share(len(span), [i - span.start for i in files], results)

        def embedded(got: Iterator[tuple[range, list[Share]]]) -> Iterator[tuple[list, list, np.ndarray]]:
            for span, shares in got:
                results = merged(shares, [None] * len(span), advance)
                rows = [ImageRow(path_text(paths[i]), error) for i, (_, error) in zip(span, results)]
                for row in rows:  # (on the first rank, which writes)
                    if row.error is not None:  # a name with a line break quoted: one line a file
                        shown = row.path if row.path.isprintable() else quoted(row.path)
                        print(f"{prog}: {shown}: {row.error}; skipped", file=sys.stderr)
                good = [row for row in rows if row.error is None]
                counts.good += len(good)
                counts.bad += len(rows) - len(good)
                vectors = [v for v, _ in results if v is not None]
                yield rows, good, np.stack(vectors) if vectors else np.empty((0, dim), dtype=np.float32)

        code = ranks.to_first(parts(), lambda got: written(
            prog, lambda: _write_images(args.out, root, len(paths), dim, embedded(got))))
    if code or not ranks.first:
        return code
    also = f", their files listed in {paths_file(args.out)}" if args.out.endswith(".npy") else ""
    skipped = f" ({counts.bad} unreadable file{'s' if counts.bad > 1 else ''} skipped)" if counts.bad else ""
    print(f"{prog}: {counts.good} image embeddings of dim {dim} written to {args.out}{also}{skipped}",
          file=sys.stderr)
    return counts.exit_code()


def _embed_batch(embedder: ImageEncoder, batch: ImageBatch, start: int, files: range, paths: list[str]
                 ) -> list[tuple[np.ndarray | None, str | None]]:
    """(vector, None) or (None, why unreadable) for each of `files`, a decoded `batch` whose positions in the
    list its workers decode begin at `start`."""
    results: list[tuple[np.ndarray | None, str | None]] = [(None, None)] * len(files)
    for i, reason in batch.failed:
        results[i - start] = (None, reason)
    if batch.images is not None:
        vectors = embedder.encode_images(batch.images).cpu().numpy()
        finite_vectors(vectors, f"{path_text(paths[files.start + batch.indices[0] - start])} and its batch")
        for i, v in zip(batch.indices, vectors):
            results[i - start] = (v, None)
    return results


def _write_images(out: str, root: Path, total: int, dim: int, chunks: Iterator[tuple[list, list, np.ndarray]]
                  ) -> None:
    """The output from `chunks`, whole or not at all: a .npy with its list of files, or a .jsonl."""
    from mmkit.cli.embed import write_vectors

    if not out.endswith(".npy"):
        write_atomically(out, lambda f: _write_jsonl(f, chunks))
        return
    with atomic_path(paths_file(out)) as tmp, open(tmp, "wb") as listing:
        def listed() -> Iterator[tuple[list, list, np.ndarray]]:
            for rows, good, vectors in chunks:
                for row in rows:
                    entry = {"path": row.path, **({"error": row.error} if row.error is not None else {})}
                    listing.write((json.dumps(entry, ensure_ascii=False) + "\n").encode("utf-8"))
                yield rows, good, vectors

        write_vectors(out, str(root), total, dim, listed())


def _write_jsonl(f: io.BufferedWriter, chunks: Iterator[tuple[list, list, np.ndarray]]) -> None:
    for _, good, vectors in chunks:
        for row, v in zip(good, vectors):
            f.write((json.dumps({"path": row.path, "embedding": [round(float(x), 7) for x in v]},
                                ensure_ascii=False) + "\n").encode("utf-8"))


def run_vit(args: argparse.Namespace, ranks: Ranks, prog: str, out_suffixes: tuple[str, ...]) -> int:
    """`mmkit embed FOLDER --model VIT_EXPORT`: the pooled features of a ViT (`Classifier.encode_images`), its
    images decoded exactly as `mmkit predict` decodes them (timm's pixels); the tool's exit code."""
    problem = None
    if args.pretrained is not None:
        problem = f"--pretrained is for an open_clip architecture as --model; {args.model} is an mmkit ViT export"
    elif not Path(args.texts).expanduser().is_dir():
        problem = f"{args.texts}: a ViT embeds images: give a folder of images"
    if problem:
        if ranks.first:
            from mmkit.errors import print_error

            print_error(prog, problem)
        return 2

    def prepare(device: str) -> tuple[EvalTransform, Callable[[], tuple[ImageEncoder, int]]]:
        from mmkit.inference.classifier import Classifier

        classifier = Classifier.from_pretrained(args.model, device, args.precision, args.quantize)
        return classifier.transform, lambda: (classifier, classifier.model.config["dim"])

    return embed_folder(args, ranks, prog, out_suffixes, prepare)
