"""`mmkit embed TEXTS_FILE --model DIR --out vectors.npy|.jsonl`: sentence embeddings with a BERT-family
encoder (an mmkit export or a transformers BERT/RoBERTa directory): mean pooling over the attention
mask then L2 normalisation (sentence-transformers' convention), length-sorted batches, a progress bar.
TEXTS_FILE is .txt (one text per line), .jsonl or .csv (--text-key, default "text"). Bad rows (empty,
not UTF-8) are reported and skipped: in .jsonl output they are absent, in .npy they are NaN rows so
row i is always line i.

Under torchrun (or any launcher setting torch.distributed's environment) the ranks share the work: each
reads every row and plans the same length-sorted batches as one process, embeds every world_size-th batch
and hands its vectors to rank 0, which writes the output a chunk at a time: bit for bit one process's.
"""
from __future__ import annotations

import argparse
import io
import json
import logging
import time
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from mmkit.cli import clip_embed, embed_images
from mmkit.cli.bert_text_files import RowCounts, open_texts_and_encoder, row_chunks, texts_file_parser, written
from mmkit.cli.options import add_precision_argument, at_least
from mmkit.errors import print_error
from mmkit.inference.embed import Embedder
from mmkit.inference.quantize import QUANTIZATIONS
from mmkit.cli.ranked import on_ranks
from mmkit.inference.ranks import BatchShares, InputsDiverged, Ranks, Share, merged
from mmkit.inference.text_rows import atomic_path, reserve, write_atomically

log = logging.getLogger(__name__)
PROG = "mmkit embed"
OUT_SUFFIXES = (".npy", ".jsonl")


def _parser() -> argparse.ArgumentParser:
    p = texts_file_parser(PROG, "\n".join([__doc__, clip_embed.__doc__, embed_images.__doc__]),
                          "sentence embeddings (masked mean pooling + L2 norm) with a BERT encoder; image and text "
                          "embeddings with a CLIP; image features with a ViT",
                          "mmkit BERT export or transformers BERT directory; an mmkit CLIP export, or an "
                          "open_clip architecture with --pretrained; an mmkit ViT export",
                          "vectors.npy (N x dim float32) or vectors.jsonl", input_name="INPUT",
                          input_help=".txt (one text per line), .jsonl or .csv file; with a CLIP or ViT a folder "
                                     "of images", model_name="MODEL")
    p.add_argument("--quantize", default="none", choices=QUANTIZATIONS,
                   help="int8: int8 weights for every Linear layer (CPU; faster, vectors close to but not equal "
                        "to fp32's: see mmkit bench embed); a CLIP's: those of the tower that runs")
    add_precision_argument(p)
    clip = p.add_argument_group("with a CLIP or ViT")
    clip.add_argument("--pretrained", help="with an open_clip architecture as --model: its checkpoint file or "
                                           "open_clip pretrained tag")
    clip.add_argument("--num-workers", type=at_least(0), default=None,
                      help="image decoding processes (default: cores - 1, 1..8)")
    clip.add_argument("--follow-links", action="store_true",
                      help="also follow symlinks that lead outside the folder (by default they are left out)")
    clip.add_argument("--exact-decode", action="store_true",
                      help="full-size JPEG decoding (open_clip's exact pixels) instead of DCT-domain downscaling "
                           "(a ViT decodes exactly always, as mmkit predict)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Returns 0 done (bad rows reported on stderr), 2 a usage or input error (one line on stderr), 1 the
    output could not be written (one line; nothing was), or every row was bad (the output is written, all rows
    reported)."""
    return on_ranks(PROG, _parser, argv, _main)


def _main(args: argparse.Namespace, ranks: Ranks) -> int:
    from mmkit.cli.progress import progress

    kind = _image_model(args.model, args.pretrained)
    if kind is not None:
        start = time.perf_counter()
        code = (clip_embed.run if kind == "CLIP" else embed_images.run_vit)(args, ranks, PROG, OUT_SUFFIXES)
        if code in (0, 1) and ranks.first:  # `mmkit bench label --embed` reads it
            log.info("%s finished in %.3f s", PROG, time.perf_counter() - start)
        return code
    image_only = [flag for flag, given in (("--pretrained", args.pretrained is not None),
                                           ("--num-workers", args.num_workers is not None),
                                           ("--follow-links", args.follow_links),
                                           ("--exact-decode", args.exact_decode)) if given]
    if image_only:
        if ranks.first:
            print_error(PROG, f"{', '.join(image_only)}: for a CLIP or ViT --model; {args.model} is neither an "
                              "mmkit CLIP nor a ViT export")
        return 2
    opened = open_texts_and_encoder(args, PROG, OUT_SUFFIXES,
                                    lambda encoder: Embedder(encoder, args.batch_size, args.quantize, args.precision),
                                    ranks)
    if opened is None:
        return 2
    total, embedder = opened
    counts = RowCounts()
    with progress("embedding", total, "text", enabled=ranks.first and not args.quiet and total > 1) as advance:
        shares = BatchShares(ranks)

        def parts() -> Iterator[tuple[tuple[list, list], Share]]:
            """Per chunk of rows: (its rows and good rows, this rank's vectors of them); every rank reads every
            row, plans one process's batches and embeds its share of them (`BatchShares`)."""
            for rows, good, ids in row_chunks(args, PROG, embedder.encoder.tokenizer, counts, advance,
                                              report=ranks.first):
                ids, batches = embedder.plan([r.text for r in good], counts.add_truncated, ids)
                mine = shares.mine(batches)
                yield (rows, good), Share.of(len(good), mine, embedder.embed_batches(ids, mine, on_batch=advance))

        def embedded(rounds: Iterator[tuple[tuple[list, list], list[Share]]]
                     ) -> Iterator[tuple[list, list, np.ndarray]]:
            """(the first rank) Each chunk's rows with every rank's vectors in place: what one process embeds."""
            for (rows, good), got in rounds:
                yield rows, good, merged(got, np.empty((len(good), embedder.dim), dtype=np.float32), advance)

        code = ranks.to_first(parts(), lambda rounds: written(
            PROG, lambda: write_vectors(args.out, args.texts, total, embedder.dim, embedded(rounds))))
    if code or not ranks.first:
        return code
    counts.report(PROG, embedder.encoder.model.max_len, f"embeddings of dim {embedder.dim} written to {args.out}")
    return counts.exit_code()


def _image_model(model: str, pretrained: str | None) -> str | None:
    """"CLIP" or "ViT" where `--model` names one (an mmkit export of either, its config.json says so; an open_clip
    architecture given `--pretrained`), else None: a BERT, whose loader reports anything else."""
    from mmkit.weights.config_check import read_json_object
    from mmkit.weights.native import WeightsError

    path = Path(model).expanduser()
    if not path.is_dir():
        return "CLIP" if pretrained is not None else None
    try:
        kind = read_json_object(path / "config.json").get("architecture")
    except WeightsError:  # no config.json, or not a JSON object: the BERT loader says what is wrong
        return None
    return kind if kind in ("CLIP", "ViT") else None


def write_vectors(out: str, source: str, total: int, dim: int, chunks: Iterator[tuple[list, list, np.ndarray]]
                  ) -> None:
    """The output from `chunks` of the `total` rows of `source` (each chunk: its rows, those of them without an
    `error`, and their vectors), whole or not at all: a .npy (a bad row NaN) or a .jsonl of the good rows."""
    if out.endswith(".npy"):
        _write_npy(out, source, total, dim, chunks)
    else:
        write_atomically(out, lambda f: _write_jsonl(f, chunks))


class InputChanged(InputsDiverged):
    """The texts file has another number of rows than when it was counted (`written`: exit 2, one line)."""


def _write_npy(out: str, source: str, total: int, dim: int, chunks: Iterator[tuple[list, list, np.ndarray]]) -> None:
    """An (total, dim) float32 .npy filled a chunk at a time through a memory map; bad rows are NaN.
    Raises `InputChanged` (and writes nothing) when `source` no longer has `total` rows."""
    with atomic_path(out) as tmp:
        if total == 0:  # a zero-length map cannot be made
            with open(tmp, "wb") as f:  # a file, not a name: np.save would add ".npy" to the name
                np.save(f, np.zeros((0, dim), dtype=np.float32))
            return
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(total, dim))
        reserve(tmp)
        start = 0
        for rows, good, vectors in chunks:
            if start + len(rows) > total:
                raise InputChanged(f"{source} changed while it was read (more than its {total} rows); nothing written")
            block = np.full((len(rows), dim), np.nan, dtype=np.float32)
            block[[i for i, r in enumerate(rows) if r.error is None]] = vectors
            array[start:start + len(rows)] = block
            start += len(rows)
        if start != total:
            raise InputChanged(f"{source} changed while it was read ({start} of its {total} rows); nothing written")
        array.flush()
        del array


def _write_jsonl(f: io.BufferedWriter, chunks: Iterator[tuple[list, list, np.ndarray]]) -> None:
    for _, good, vectors in chunks:
        for r, v in zip(good, vectors):
            f.write((json.dumps({"line": r.line, "text": r.text, "embedding": [round(float(x), 7) for x in v]},
                                ensure_ascii=False) + "\n").encode("utf-8"))
