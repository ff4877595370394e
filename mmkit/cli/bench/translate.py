"""Translation speed: mmkit's `Seq2Seq` (imported from MarianMT) on the shared decoding loop
with its KV cache against transformers' `MarianMTModel.generate` on the same random weights
(opus-mt-en-de's shape by default), the same source batch and the same tokens (checked), greedy
and beam 4, batch 1 and 16. Both run in one process in interleaved rounds whose order
alternates; figures are medians. Never asserted on: a script that prints ratios.

    mmkit bench translate                   # opus-mt-en-de's shape, 4 cells
    mmkit bench translate --layers 2 --source-tokens 16 --new-tokens 16 --rounds 2
"""
from __future__ import annotations

import argparse
import statistics
import sys
from typing import Any, Callable, Sequence

import torch

from mmkit.cli.bench.common import add_run_options, interleaved, torch_threads, write_json



def _reference(dim: int, layers: int, heads: int, ffn: int, vocab_size: int):
    from transformers import MarianConfig, MarianMTModel

    torch.manual_seed(0)
    cfg = MarianConfig(vocab_size=vocab_size, d_model=dim, encoder_layers=layers, decoder_layers=layers,
                       encoder_attention_heads=heads, decoder_attention_heads=heads, encoder_ffn_dim=ffn,
                       decoder_ffn_dim=ffn, max_position_embeddings=512, activation_function="swish",
                       scale_embedding=True, pad_token_id=vocab_size - 1, decoder_start_token_id=vocab_size - 1,
                       eos_token_id=0, forced_eos_token_id=None, attn_implementation="sdpa")
    ref = MarianMTModel(cfg).eval()
    # Every row generates exactly new_tokens on both sides: no end-of-sentence stop.
    ref.generation_config.eos_token_id = None
    ref.generation_config.forced_eos_token_id = None
    return ref


def _cell(ref: Any, ours: Any, src: torch.Tensor, beams: int, new_tokens: int, rounds: int,
          warmup: int) -> dict[str, Any]:
    from mmkit.core import BeamSearch, Greedy, generate

    start_id = ref.config.decoder_start_token_id
    mask = torch.ones_like(src, dtype=torch.bool)
    strategy = BeamSearch(beams, early_stopping=False) if beams > 1 else Greedy()

    def mmkit_run() -> list[list[int]]:
        out = generate(ours, torch.full((len(src), 1), start_id), new_tokens, strategy,
                       context=ours.encode(src, mask), context_mask=mask, eos_id=None, pad_id=start_id)
        return [s.tolist() for s in out.sequences]

    def reference_run() -> list[list[int]]:
        out = ref.generate(input_ids=src, attention_mask=mask.long(), num_beams=beams, do_sample=False,
                           max_new_tokens=new_tokens, early_stopping=False)
        return out.tolist()

    runs: dict[str, Callable[[], list[list[int]]]] = {"mmkit": mmkit_run, "transformers": reference_run}
    seconds, outputs = interleaved(runs, rounds, warmup)
    rate = {k: len(src) * new_tokens / statistics.median(v) for k, v in seconds.items()}
    return dict(batch_size=len(src), beams=beams, tokens_per_s=rate, ratio=rate["mmkit"] / rate["transformers"],
                seconds=seconds, same_tokens=outputs["mmkit"] == outputs["transformers"])


def run_translate_bench(dim: int = 512, layers: int = 6, heads: int = 8, ffn: int = 2048, vocab_size: int = 58101,
                        batch_sizes: Sequence[int] = (1, 16), beams: Sequence[int] = (1, 4), source_tokens: int = 24,
                        new_tokens: int = 32, rounds: int = 3, warmup: int = 1,
                        threads: int | None = None) -> dict[str, Any]:
    """Generated tokens/s of both implementations in every (beams, batch size) cell.

    Returns:
        `cells`: one dict per cell with `tokens_per_s` per implementation, `ratio` (mmkit /
        transformers, > 1: mmkit faster), `same_tokens` and the raw `seconds`; and the settings.
    """
    from mmkit.models import Seq2Seq

    if min(rounds, source_tokens, new_tokens, *batch_sizes, *beams) < 1 or warmup < 0:
        raise ValueError("rounds, batch sizes, beams, source and new tokens must be >= 1 and warmup >= 0")
    with torch_threads(threads):
        ref = _reference(dim, layers, heads, ffn, vocab_size)
        ours = Seq2Seq.from_hf(ref).eval()
        g = torch.Generator().manual_seed(0)
        cells = []
        for beam in beams:
            for batch in batch_sizes:
                src = torch.randint(1, vocab_size - 1, (batch, source_tokens), generator=g)
                src[:, -1] = 0  # sources end in EOS, as the tokenizer writes them
                cells.append(_cell(ref, ours, src, beam, new_tokens, rounds, warmup))
        return dict(model=f"random MarianMT dim {dim}, {layers}+{layers} layers, vocab {vocab_size}",
                    params=sum(p.numel() for p in ours.parameters()), source_tokens=source_tokens,
                    new_tokens=new_tokens, rounds=rounds, threads=torch.get_num_threads(), cells=cells)


def format_report(result: dict[str, Any]) -> str:
    r = result
    lines = [f"Translation: {r['model']} ({r['params'] / 1e6:.1f}M params), {r['source_tokens']} source + "
             f"{r['new_tokens']} new tokens, {r['threads']} threads, median of {r['rounds']}",
             "  strategy  batch   mmkit tok/s   transformers tok/s   mmkit/transformers   same tokens"]
    for c in r["cells"]:
        name = "greedy" if c["beams"] == 1 else f"beam {c['beams']}"
        lines.append(f"  {name:8s} {c['batch_size']:6d} {c['tokens_per_s']['mmkit']:13.1f} "
                     f"{c['tokens_per_s']['transformers']:20.1f} {c['ratio']:19.2f}x   "
                     f"{'yes' if c['same_tokens'] else 'NO'}")
    lines.append("  (goal >= 1.5x in every cell)")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="mmkit bench translate", description=__doc__.split("\n\n")[0])
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--layers", type=int, default=6, help="encoder and decoder layers each (6)")
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--ffn", type=int, default=2048)
    p.add_argument("--vocab-size", type=int, default=58101)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16])
    p.add_argument("--beams", type=int, nargs="+", default=[1, 4], help="beam widths (1 = greedy)")
    p.add_argument("--source-tokens", type=int, default=24)
    p.add_argument("--new-tokens", type=int, default=32)
    add_run_options(p)
    args = p.parse_args(argv)
    try:
        result = run_translate_bench(args.dim, args.layers, args.heads, args.ffn, args.vocab_size, args.batch_sizes,
                                     args.beams, args.source_tokens, args.new_tokens, args.rounds, args.warmup,
                                     args.threads)
    except (ValueError, OSError) as e:
        print(f"mmkit bench translate: {e}", file=sys.stderr)
        return 2
    print(format_report(result))
    write_json(args.json, result)
    return 0
