"""`mmkit embed` with a CLIP (an mmkit CLIP export, or an open_clip architecture with --pretrained): unit vectors
in the model's shared image-text space, open_clip's `encode_image` / `encode_text` normalised, so that an image's
row and a caption's row compare by their dot product (retrieval, deduplication, clustering).

- INPUT a folder: every image under it (`mmkit label`'s walk: recursive, sorted, symlinks leading outside left
  out unless --follow-links), decoded in worker processes as `mmkit label` decodes them (--exact-decode: full-size
  JPEG decoding). `--out vectors.npy`: row i is the i-th file of `vectors.paths.jsonl` ({"path"} a line, with
  "error" for an unreadable file, whose row is NaN); `--out vectors.jsonl`: {"path", "embedding"} a readable
  image. Unreadable files are reported on stderr, one line each.
- INPUT a texts file (.txt a line each, .jsonl, .csv: --text-key): the text tower's vectors, in the layout of a
  BERT's (`embed.py`: .npy row i = line i, NaN for a bad row; .jsonl {"line", "text", "embedding"}). Texts are cut
  to the model's context (CLIP's 77 tokens) as open_clip's tokenizer cuts them.

--quantize int8 makes the tower that runs int8 (the image tower for a folder, the text tower for a file). Under a
launcher the ranks share the batches and the first writes what one process writes, as for a BERT.
"""
from __future__ import annotations

import argparse
import io
import json
import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from mmkit.cli.bert_text_files import RowCounts, checked_output, row_chunks, written
from mmkit.cli.progress import progress
from mmkit.cli.ranked import set_up_on_ranks
from mmkit.errors import print_error, quoted
from mmkit.inference.image_batches import ImageBatch
from mmkit.inference.ranks import BatchShares, Ranks, Share, merged
from mmkit.inference.text_rows import atomic_path
from mmkit.inference.writers import path_text
from mmkit.inference.zero_shot import NonFiniteScores, ZeroShotClassifier

log = logging.getLogger(__name__)
PAIRED_SUFFIX = ".paths.jsonl"  # vectors.npy's list of files: vectors.paths.jsonl


def is_clip_model(model: str, pretrained: str | None) -> bool:
    """Whether `--model` names a CLIP: an mmkit CLIP export (its config.json says so), or, given `--pretrained`,
    an open_clip architecture. Anything else is left to the BERT loader, which reports what it is."""
    path = Path(model).expanduser()
    if not path.is_dir():
        return pretrained is not None
    try:
        doc = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and doc.get("architecture") == "CLIP"


def paths_file(out: str | Path) -> Path:
    """The list of files beside an image folder's `.npy` output: vectors.npy -> vectors.paths.jsonl."""
    out = Path(out).expanduser()
    return out.with_name(out.stem + PAIRED_SUFFIX)


def run(args: argparse.Namespace, ranks: Ranks, prog: str, out_suffixes: tuple[str, ...]) -> int:
    """`mmkit embed` with a CLIP model: images for a folder, texts for a file; the tool's exit code."""
    start = time.perf_counter()
    if args.pretrained is not None and Path(args.model).expanduser().is_dir():
        if ranks.first:
            print_error(prog, f"--pretrained is for an open_clip architecture as --model; {args.model} is an mmkit "
                              "CLIP export, which holds its weights")
        return 2
    embed = _images if Path(args.texts).expanduser().is_dir() else _texts
    code = embed(args, ranks, prog, out_suffixes)
    if code in (0, 1) and ranks.first:
        log.info("%s finished in %.3f s", prog, time.perf_counter() - start)  # `mmkit bench label --embed` reads it
    return code


def _load(args: argparse.Namespace, device: str, tower: str, transform: Any = None) -> ZeroShotClassifier:
    from mmkit.inference.clip_loader import load_clip

    model, tokenizer = load_clip(args.model, args.pretrained)
    return ZeroShotClassifier(model, tokenizer, transform, device, args.precision, quantize=args.quantize,
                              quantize_tower=tower)


def _finite(vectors: np.ndarray, what: str) -> np.ndarray:
    if not np.isfinite(vectors).all():
        raise NonFiniteScores(f"non-finite embeddings (NaN or infinity) for {what}: the model's weights or "
                              "preprocessing (std 0?) are broken")
    return vectors


# --- texts -------------------------------------------------------------------------------------------------------

def _texts(args: argparse.Namespace, ranks: Ranks, prog: str, out_suffixes: tuple[str, ...]) -> int:
    from mmkit.cli.embed import write_vectors
    from mmkit.inference.text_rows import count_text_rows

    def set_up() -> tuple[int, ZeroShotClassifier]:
        device = checked_output(args, out_suffixes, ranks)
        total = count_text_rows(args.texts, args.text_key)
        return total, _load(args, device, "text")

    opened = set_up_on_ranks(prog, ranks, set_up)
    if opened is None:
        return 2
    total, embedder = opened
    dim, counts = embedder.model.embed_dim, RowCounts()
    with progress("embedding", total, "text", enabled=ranks.first and not args.quiet and total > 1) as advance:
        shares = BatchShares(ranks)

        def parts() -> Iterator[tuple[tuple[list, list], Share]]:
            for rows, good, _ in row_chunks(args, prog, None, counts, advance, report=ranks.first):
                # batches of texts of similar length (in characters: every rank plans the same ones), so a
                # batch is cut after its longest text (`encode_prompts`)
                order = sorted(range(len(good)), key=lambda i: len(good[i].text))
                batches = [order[s:s + args.batch_size] for s in range(0, len(order), args.batch_size)]
                mine = shares.mine(batches)
                vectors = np.zeros((len(good), dim), dtype=np.float32)
                for batch in mine:
                    texts = [good[i].text for i in batch]
                    vectors[batch] = _finite(embedder.encode_texts(texts).cpu().numpy(), f"{args.texts} line "
                                             f"{good[batch[0]].line} and its batch")
                    advance(len(batch))
                yield (rows, good), Share.of(len(good), mine, vectors)

        def embedded(rounds: Iterator[tuple[tuple[list, list], list[Share]]]) -> Iterator[tuple[list, list, Any]]:
            for (rows, good), got in rounds:
                yield rows, good, merged(got, np.empty((len(good), dim), dtype=np.float32), advance)

        code = ranks.to_first(parts(), lambda rounds: written(
            prog, lambda: write_vectors(args.out, args.texts, total, dim, embedded(rounds))))
    if code or not ranks.first:
        return code
    counts.report(prog, embedder.model.context_length, f"text embeddings of dim {dim} written to {args.out}")
    return counts.exit_code()


# --- images ------------------------------------------------------------------------------------------------------

@dataclass
class ImageRow:
    """One image of the folder: its path (as the outputs write it) and why it could not be read, if so."""

    path: str
    error: str | None = None


def _images(args: argparse.Namespace, ranks: Ranks, prog: str, out_suffixes: tuple[str, ...]) -> int:
    from mmkit.data.images import scan_images
    from mmkit.inference.clip_loader import clip_eval_transform
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

    def set_up() -> tuple[ZeroShotClassifier, Iterator]:
        device = ranks.device(args.device)
        transform = clip_eval_transform(args.model, args.pretrained, args.exact_decode)
        workers = min(default_workers() if args.num_workers is None else args.num_workers, len(mine))
        # decoding starts now, in the workers, while the weights load
        decoded = image_batches(root, [paths[i] for b in mine for i in b], transform, size, workers,
                                pin_memory=device.startswith("cuda"))
        return _load(args, device, "visual", transform), decoded

    opened = set_up_on_ranks(prog, ranks, set_up)
    if opened is None:
        return 2
    embedder, decoded = opened
    dim, counts = embedder.model.embed_dim, RowCounts()
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


def _embed_batch(embedder: ZeroShotClassifier, batch: ImageBatch, start: int, files: range, paths: list[str]
                 ) -> list[tuple[np.ndarray | None, str | None]]:
    """(vector, None) or (None, why unreadable) for each of `files`, a decoded `batch` whose positions in the
    list its workers decode begin at `start`."""
    results: list[tuple[np.ndarray | None, str | None]] = [(None, None)] * len(files)
    for i, reason in batch.failed:
        results[i - start] = (None, reason)
    if batch.images is not None:
        vectors = embedder.encode_images(batch.images).cpu().numpy()
        _finite(vectors, f"{path_text(paths[files.start + batch.indices[0] - start])} and its batch")
        for i, v in zip(batch.indices, vectors):
            results[i - start] = (v, None)
    return results


def _write_images(out: str, root: Path, total: int, dim: int, chunks: Iterator[tuple[list, list, np.ndarray]]
                  ) -> None:
    """The output from `chunks`, whole or not at all: a .npy with its list of files, or a .jsonl."""
    from mmkit.cli.embed import write_vectors
    from mmkit.inference.text_rows import write_atomically

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
