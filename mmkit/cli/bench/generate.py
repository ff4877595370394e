"""DALL·E-style generation speed: sampling a full image grid with the shared decoding loop's KV cache
against recomputing the whole sequence at every step, on the same random-init `DALLE` and the same
greedy codes (checked). Rounds alternate the order; figures are medians. Never asserted on: a script
that prints ratios. (The encoder-decoder comparison with min-dalle's sampler needs `DalleBart`,
which mmkit does not have yet.)

    mmkit bench generate                          # a 16×16 grid (256 image tokens)
    mmkit bench generate --grid 8 --dim 128 --depth 2 --rounds 1
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any, Sequence

import torch

MODES = ("cached", "recompute")


def run_generate_bench(grid: int = 16, text_len: int = 16, dim: int = 256, depth: int = 4, num_heads: int = 8,
                       codebook_size: int = 1024, batch_size: int = 1, rounds: int = 3, warmup: int = 1,
                       threads: int | None = None) -> dict[str, Any]:
    """Image tokens/s with and without the KV cache.

    Returns:
        `tokens_per_s` per mode, `ratio` (cached / recompute), `same_codes`, the raw `seconds`
        and the settings.
    """
    from mmkit.core import GenerationOptions
    from mmkit.inference.text_to_image import sample_codes
    from mmkit.models import DALLE

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = DALLE(text_vocab_size=64, text_len=text_len, codebook_size=codebook_size, image_grid=grid, dim=dim,
                  depth=depth, num_heads=num_heads).eval()
    text = torch.randint(1, 64, (batch_size, text_len), generator=torch.Generator().manual_seed(1))
    seconds: dict[str, list[float]] = {m: [] for m in MODES}
    codes: dict[str, torch.Tensor] = {}
    for r in range(warmup + rounds):
        for mode in (MODES if r % 2 == 0 else MODES[::-1]):
            start = time.perf_counter()
            codes[mode] = sample_codes(model, text, GenerationOptions(), use_cache=mode == "cached")
            if r >= warmup:
                seconds[mode].append(time.perf_counter() - start)
    n = batch_size * grid * grid
    rate = {m: n / statistics.median(s) for m, s in seconds.items()}
    return {"tokens_per_s": rate, "ratio": rate["cached"] / rate["recompute"],
            "same_codes": bool(torch.equal(codes["cached"], codes["recompute"])), "seconds": seconds,
            "settings": {"grid": grid, "text_len": text_len, "dim": dim, "depth": depth, "num_heads": num_heads,
                         "codebook_size": codebook_size, "batch_size": batch_size, "threads": torch.get_num_threads()}}


def format_report(result: dict[str, Any]) -> str:
    s = result["settings"]
    lines = [f"DALLE {s['dim']}d x {s['depth']} layers, {s['grid']}x{s['grid']} grid ({s['grid'] ** 2} image tokens) "
             f"after {s['text_len']} text tokens, batch {s['batch_size']}, {s['threads']} threads",
             *(f"{m:10s} {result['tokens_per_s'][m]:10.1f} image tokens/s" for m in MODES),
             f"KV cache speed-up  {result['ratio']:.2f}x",
             f"same codes         {'yes' if result['same_codes'] else 'NO'}"]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="mmkit bench generate", description=__doc__.split("\n\n")[0])
    p.add_argument("--grid", type=int, default=16)
    p.add_argument("--text-len", type=int, default=16)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--num-heads", type=int, default=8)
    p.add_argument("--codebook-size", type=int, default=1024)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    sizes = [args.grid, args.text_len, args.dim, args.depth, args.num_heads, args.codebook_size, args.batch_size,
             args.rounds]
    if min(sizes) < 1 or args.dim % args.num_heads:
        print("mmkit bench generate: sizes must be >= 1 and --dim divisible by --num-heads", file=sys.stderr)
        return 2
    result = run_generate_bench(args.grid, args.text_len, args.dim, args.depth, args.num_heads, args.codebook_size,
                                args.batch_size, args.rounds, threads=args.threads)
    print(format_report(result))
    return 0
