"""`mmkit embed` with a CLIP (an mmkit CLIP export, or an open_clip architecture with --pretrained): unit vectors
in the model's shared image-text space, open_clip's `encode_image` / `encode_text` normalised, so that an image's
row and a caption's row compare by their dot product (retrieval, deduplication, clustering).

- INPUT a folder: its images' vectors (`embed_images`: .npy rows with their .paths.jsonl list of files, or .jsonl).
- INPUT a texts file (.txt a line each, .jsonl, .csv: --text-key): the text tower's vectors, in the layout of a
  BERT's (`embed.py`: .npy row i = line i, NaN for a bad row; .jsonl {"line", "text", "embedding"}). Texts are cut
  to the model's context (CLIP's 77 tokens) as open_clip's tokenizer cuts them.

--quantize int8 makes the tower that runs int8 (the image tower for a folder, the text tower for a file). Under a
launcher the ranks share the batches and the first writes what one process writes, as for a BERT.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from mmkit.cli.bert_text_files import RowCounts, checked_output, row_chunks, written
from mmkit.cli.embed_images import embed_folder, finite_vectors
from mmkit.cli.progress import progress
from mmkit.cli.ranked import set_up_on_ranks
from mmkit.data.transforms import EvalTransform
from mmkit.errors import print_error
from mmkit.inference.ranks import BatchShares, Ranks, Share, merged
from mmkit.inference.zero_shot import ZeroShotClassifier


def run(args: argparse.Namespace, ranks: Ranks, prog: str, out_suffixes: tuple[str, ...]) -> int:
    """`mmkit embed` with a CLIP model: images for a folder, texts for a file; the tool's exit code."""
    if args.pretrained is not None and Path(args.model).expanduser().is_dir():
        if ranks.first:
            print_error(prog, f"--pretrained is for an open_clip architecture as --model; {args.model} is an mmkit "
                              "CLIP export, which holds its weights")
        return 2
    if Path(args.texts).expanduser().is_dir():
        return embed_folder(args, ranks, prog, out_suffixes, lambda device: _image_tower(args, device))
    return _texts(args, ranks, prog, out_suffixes)


def _image_tower(args: argparse.Namespace, device: str) -> tuple[EvalTransform, Callable[[], tuple[Any, int]]]:
    """`embed_folder`'s `prepare`: the preprocessing (from configuration alone), then the model."""
    from mmkit.inference.clip_loader import clip_eval_transform

    transform = clip_eval_transform(args.model, args.pretrained, args.exact_decode)

    def load() -> tuple[ZeroShotClassifier, int]:
        embedder = _load(args, device, "visual", transform)
        return embedder, embedder.model.embed_dim

    return transform, load


def _load(args: argparse.Namespace, device: str, tower: str, transform: Any = None) -> ZeroShotClassifier:
    from mmkit.inference.clip_loader import load_clip

    model, tokenizer = load_clip(args.model, args.pretrained)
    return ZeroShotClassifier(model, tokenizer, transform, device, args.precision, quantize=args.quantize,
                              quantize_tower=tower)


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
                    vectors[batch] = finite_vectors(embedder.encode_texts(texts).cpu().numpy(), f"{args.texts} line "
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
