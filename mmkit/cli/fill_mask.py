"""`mmkit fill-mask "The capital of France is [MASK]." --model DIR`: the likeliest tokens for each
[MASK] with their probabilities, from a BERT-family masked-LM (an mmkit export or a transformers
BertForMaskedLM / RobertaForMaskedLM directory), then the text with the best one filled in (with several
masks, each mask's own, the other masks left in). Probabilities are transformers' fill-mask pipeline's:
over the whole vocabulary, special tokens never listed. --precision and --quantize are the other text tools'
(`mmkit embed`, `classify-text`): fp32, the default, is exact; bf16 or int8 give probabilities close to fp32's.
"""
from __future__ import annotations

import argparse
import json
from typing import Sequence

from mmkit.cli.options import Parser, add_precision_argument, utf8_text
from mmkit.cli.ranked import on_ranks
from mmkit.errors import print_error


def _parser() -> argparse.ArgumentParser:
    from mmkit.inference.quantize import QUANTIZATIONS

    p = Parser(prog="mmkit fill-mask", epilog=__doc__,
               description="the likeliest tokens for each [MASK] from a BERT masked-LM",
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("text", type=utf8_text, help='text with [MASK] where a word is to be predicted')
    p.add_argument("--model", required=True, metavar="DIR", help="mmkit BERT export or transformers BERT directory")
    p.add_argument("--top-k", type=int, default=5, metavar="K", help="candidates per mask (5)")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:N, mps)")
    p.add_argument("--quantize", default="none", choices=QUANTIZATIONS,
                   help="int8: int8 weights for every Linear layer, the projection onto the vocabulary (the "
                        "tied embeddings) kept fp32 (CPU; faster, probabilities close to but not equal to fp32's)")
    add_precision_argument(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Returns 0 done, 2 a usage or input error (one line on stderr), 130 interrupted (Ctrl-C or SIGTERM: one
    line, from the imports on)."""
    return on_ranks("mmkit fill-mask", _parser, argv, lambda args, ranks: _run(args))


def _run(args: argparse.Namespace) -> int:
    from mmkit.inference.encoder import load_encoder
    from mmkit.inference.fill_mask import fill_mask
    from mmkit.inference.precision import check_device

    try:
        check_device(args.device)
        # the arithmetic is set up, logged once and a combination it cannot run (bf16 with int8) refused there
        encoder = load_encoder(args.model, args.device, precision=args.precision, quantize=args.quantize)
        if encoder.model.mlm_head is None:
            raise ValueError(f"{args.model}: the model has no masked-LM head (a BertModel or a classifier); "
                             "give a masked-LM checkpoint")
        predictions = fill_mask(encoder, args.text, args.top_k)
    except (ValueError, OSError) as e:
        print_error("mmkit fill-mask", e)
        return 2
    several = len(predictions) > 1
    for n, p in enumerate(predictions, 1):
        if several:
            print(f"mask {n}:")
        for token, prob in p.candidates:
            print(f"  {prob:7.2%}  {_shown(token)}")
        # with several masks, under each: its best candidate filled in, the other masks left as they were
        print(f"  -> {p.filled}" if several else p.filled)
    return 0


def _shown(token: str) -> str:
    """A candidate as printed: quoted, with escapes, where whitespace begins or ends it (byte-level BPE's
    word-initial " sees", a bare " ") or it holds a control character (a byte token "\\x04"): a terminal
    would show nothing of those."""
    plain = token and token.isprintable() and token == token.strip()
    return token if plain else json.dumps(token, ensure_ascii=False)
