"""DALL·E-style generation speed, two comparisons printed in one run, each on the same random-init
weights and the same codes (checked, printed; never asserted). Rounds alternate the order; figures
are medians.

1. Decoder-only `DALLE`: the shared decoding loop's KV cache against recomputing the whole sequence
   at every step (greedy).
2. Encoder-decoder (dalle-mini): mmkit's `DalleBart` against min-dalle's own sampler, i.e. its
   `DalleBartEncoder`/`DalleBartDecoder` modules driven by the loop of
   `MinDalle.generate_raw_image_stream` (super-conditioning, `sample_tokens`), at top-k 1 so both
   pick the same codes. Shapes are dalle-mini's (64 text tokens, 16×16 = 256 image tokens, 16,385
   logits, 64-wide heads, GLU at 8/3 of the width) with a narrower, shallower stack.

    mmkit bench generate                          # both comparisons (DalleBart: mmkit int8, and bf16 where native)
    mmkit bench generate --grid 8 --dim 128 --depth 2 --bart-dim 128 --bart-depth 2 --rounds 1
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import statistics
import sys
from typing import Any, Sequence

import torch
from torch import Tensor

from mmkit.cli.bench.common import (
    add_precision_option, add_run_options, bench_precisions, interleaved, reduced_path_lines, torch_threads, write_json,
)
from mmkit.cli.options import Parser, at_least, finite

MODES = ("cached", "recompute")
BART_MODES = ("mmkit", "min-dalle")
MIN_DALLE_BOS = 2**14 - 1  # min-dalle starts every image with code 16383 and samples among the first 2**14 logits
MIN_DALLE_IMAGE_LEN = 256  # fixed in min-dalle (IMAGE_TOKEN_COUNT)


def run_generate_bench(grid: int = 16, text_len: int = 16, dim: int = 256, depth: int = 4, num_heads: int = 8,
                       codebook_size: int = 1024, batch_size: int = 1, rounds: int = 3, warmup: int = 1,
                       threads: int | None = None) -> dict[str, Any]:
    """Image tokens/s of `DALLE` with and without the KV cache.

    Returns:
        `tokens_per_s` per mode, `ratio` (cached / recompute), `same_codes`, the raw `seconds`
        and the settings.
    """
    from mmkit.core import GenerationOptions
    from mmkit.inference.text_to_image import sample_codes
    from mmkit.models import DALLE

    torch.manual_seed(0)
    model = DALLE(text_vocab_size=64, text_len=text_len, codebook_size=codebook_size, image_grid=grid, dim=dim,
                  depth=depth, num_heads=num_heads).eval()
    text = torch.randint(1, 64, (batch_size, text_len), generator=torch.Generator().manual_seed(1))
    with torch_threads(threads):
        seconds, codes = interleaved({m: (lambda m=m: sample_codes(model, text, GenerationOptions(),
                                                                    use_cache=m == "cached")) for m in MODES},
                                     rounds, warmup)
        settings = {"grid": grid, "text_len": text_len, "dim": dim, "depth": depth, "num_heads": num_heads,
                    "codebook_size": codebook_size, "batch_size": batch_size, "threads": torch.get_num_threads()}
    rate = {m: batch_size * grid * grid / statistics.median(s) for m, s in seconds.items()}
    return {"tokens_per_s": rate, "ratio": rate["cached"] / rate["recompute"],
            "same_codes": bool(torch.equal(codes["cached"], codes["recompute"])), "seconds": seconds,
            "settings": settings}


def import_min_dalle(name: str) -> Any:
    """Import a min_dalle module without its process-wide side effects: its package `__init__`
    turns autograd off and sets torch's threads to every core; both are restored."""
    grad, threads = torch.is_grad_enabled(), torch.get_num_threads()
    try:
        return importlib.import_module(name)
    finally:
        torch.set_grad_enabled(grad)
        torch.set_num_threads(threads)


def min_dalle_reference(dim: int, depth: int, num_heads: int, glu_dim: int, text_vocab_size: int,
                        image_vocab_size: int = 2**14, seed: int = 0) -> tuple[torch.nn.Module, torch.nn.Module]:
    """min-dalle's `DalleBartEncoder` and `DalleBartDecoder` at these sizes, random weights with
    LayerNorms off their identity init (so a wrong norm mapping shows)."""
    encoder_cls = import_min_dalle("min_dalle.models.dalle_bart_encoder").DalleBartEncoder
    decoder_cls = import_min_dalle("min_dalle.models.dalle_bart_decoder").DalleBartDecoder
    torch.manual_seed(seed)
    sizes = dict(layer_count=depth, embed_count=dim, attention_head_count=num_heads, glu_embed_count=glu_dim)
    encoder = encoder_cls(text_vocab_count=text_vocab_size, text_token_count=64, device="cpu", **sizes).eval()
    decoder = decoder_cls(image_vocab_count=image_vocab_size, device="cpu", **sizes).eval()
    with torch.no_grad():
        for p in list(encoder.parameters()) + list(decoder.parameters()):
            p.normal_(std=dim**-0.5) if p.dim() > 1 else p.uniform_(0.5, 1.5)
    return encoder, decoder


@torch.no_grad()
def min_dalle_codes(encoder: torch.nn.Module, decoder: torch.nn.Module, text: Tensor, null_text: Tensor,
                    num_images: int = 1, guidance: float = 16.0, top_k: int = 1, temperature: float = 1.0) -> Tensor:
    """min-dalle's sampler (`MinDalle.generate_raw_image_stream`'s token loop, fp32, CPU):
    text/null_text (1, 64) ids of one prompt → (num_images, 256) codes."""
    tokens = torch.cat([null_text, text])
    memory = encoder(tokens)
    rows = [0] * num_images + [1] * num_images
    tokens, memory = tokens[rows], memory[rows]
    mask = tokens.not_equal(1)[:, None, None, :]
    state = torch.zeros(len(decoder.layers), num_images * 4, MIN_DALLE_IMAGE_LEN, memory.shape[-1])
    codes = torch.full((num_images, MIN_DALLE_IMAGE_LEN + 1), MIN_DALLE_BOS, dtype=torch.long)
    index = torch.arange(MIN_DALLE_IMAGE_LEN)
    settings = torch.tensor([temperature, top_k, guidance], dtype=torch.float32)
    for i in range(MIN_DALLE_IMAGE_LEN):
        codes[:, i + 1], state = decoder.sample_tokens(settings=settings, attention_mask=mask, encoder_state=memory,
                                                       attention_state=state, prev_tokens=codes[:, [i]],
                                                       token_index=index[[i]])
    return codes[:, 1:]


def run_encoder_decoder_bench(dim: int = 256, depth: int = 4, num_heads: int = 4, num_images: int = 1,
                              guidance: float = 16.0, rounds: int = 3, warmup: int = 1,
                              threads: int | None = None, int8: bool = False, bf16: bool = False) -> dict[str, Any]:
    """Image tokens/s of mmkit's `DalleBart` and of min-dalle's sampler on the same weights; with `int8` and
    `bf16`, mmkit's `--quantize int8` and `--precision bf16` paths too (`TextToImage.set_arithmetic`'s).

    Returns:
        `tokens_per_s` per implementation, `ratio` (mmkit / min-dalle), `same_codes`, `distinct_codes`
        (how many different codes the images use), per reduced path `<kind>_ratio` (its rate / min-dalle's)
        and `<kind>_agreement` ("top1": the share of mmkit fp32's codes it ranks first fed fp32's codes before
        each, `_teacher_forced_top1`; "codes": the share of its own greedy codes equal to fp32's), the raw
        `seconds` and the settings.
    """
    import copy

    from mmkit.core import GenerationOptions
    from mmkit.inference.packed import packed_copy
    from mmkit.inference.quantize import prepare_arithmetic
    from mmkit.models.dalle_bart import DalleBart
    from mmkit.weights.from_min_dalle import dalle_bart_from_min_dalle
    from mmkit.weights.native import load_state_dict_strict

    glu_dim = round(dim * 2730 / 1024)  # dalle-mini's GLU width ratio
    encoder, decoder = min_dalle_reference(dim, depth, num_heads, glu_dim, text_vocab_size=1000)
    config, state = dalle_bart_from_min_dalle(encoder.state_dict(), decoder.state_dict(), "min-dalle (random init)")
    model = DalleBart(**{**config, "num_heads": num_heads})
    load_state_dict_strict(model, state, "min-dalle (random init)")
    model.eval()
    text = torch.ones(1, 64, dtype=torch.long)
    text[0, :8] = torch.tensor([0, 17, 42, 9, 311, 5, 77, 2])
    null_text = torch.ones(1, 64, dtype=torch.long)
    null_text[0, :2] = torch.tensor([0, 2])
    options = GenerationOptions(top_k=1)

    def sampler(m: DalleBart, autocast: Any) -> Any:
        def run() -> Tensor:
            with autocast():
                return m.generate_codes(text.expand(num_images, -1), options, guidance,
                                        null_text=null_text.expand(num_images, -1))
        return run

    packed = packed_copy(model)  # fp32 and bf16 as `mmkit generate` runs them: on oneDNN's packed weights
    runs = {"mmkit": sampler(packed, contextlib.nullcontext),
            "min-dalle": lambda: min_dalle_codes(encoder, decoder, text, null_text, num_images, guidance)}
    reduced_paths = {}
    for kind, on, (precision, quantize) in (("int8", int8, ("fp32", "int8")), ("bf16", bf16, ("bf16", "none"))):
        if on:  # the same weights, as `mmkit generate --quantize int8` / `--precision bf16` runs them
            reduced = copy.deepcopy(model) if quantize == "int8" else packed
            reduced_paths[kind] = (reduced, prepare_arithmetic(reduced, precision, quantize, "bench")[1])
            runs[f"mmkit {kind}"] = sampler(*reduced_paths[kind])
    with torch_threads(threads):
        seconds, codes = interleaved(runs, rounds, warmup)
        settings = {"dim": dim, "depth": depth, "num_heads": num_heads, "glu_dim": glu_dim, "num_images": num_images,
                    "guidance": guidance, "image_vocab": config["image_vocab_size"], "threads": torch.get_num_threads()}
    rate = {m: num_images * MIN_DALLE_IMAGE_LEN / statistics.median(s) for m, s in seconds.items()}
    result = {"tokens_per_s": rate, "ratio": rate["mmkit"] / rate["min-dalle"],
              "same_codes": bool(torch.equal(codes["mmkit"], codes["min-dalle"])),
              "distinct_codes": len(codes["mmkit"].unique()), "seconds": seconds, "settings": settings}
    for kind in ("int8", "bf16"):
        if f"mmkit {kind}" in rate:
            result[f"{kind}_ratio"] = rate[f"mmkit {kind}"] / rate["min-dalle"]
            result[f"{kind}_agreement"] = {
                "top1": _teacher_forced_top1(*reduced_paths[kind], codes["mmkit"], text, null_text, guidance),
                "codes": float((codes[f"mmkit {kind}"] == codes["mmkit"]).float().mean())}
    return result


@torch.no_grad()
def _teacher_forced_top1(model: Any, autocast: Any, codes: Tensor, text: Tensor, null_text: Tensor,
                         guidance: float) -> float:
    """The share of fp32's greedy `codes` (B, 256) that `model` under `autocast` also ranks first when fed
    fp32's codes before each one: its agreement step by step, where a sampled sequence follows its first
    different code (greedy codes of random weights, whose logits are flat, part at the first flip)."""
    n = len(codes)
    tokens = torch.cat([torch.full((n, 1), model.bos_id), codes[:, :-1]], 1)
    with autocast():
        memory, mask = model.encode_guided(text.expand(n, -1), null_text.expand(n, -1))
        logits = model.guided_logits(tokens, memory, mask, guidance)
    return float((logits[..., :model.codebook_size].argmax(-1) == codes).float().mean())


def format_report(result: dict[str, Any]) -> str:
    s = result["settings"]
    lines = [f"DALLE {s['dim']}d x {s['depth']} layers, {s['grid']}x{s['grid']} grid ({s['grid'] ** 2} image tokens) "
             f"after {s['text_len']} text tokens, batch {s['batch_size']}, {s['threads']} threads",
             *(f"{m:10s} {result['tokens_per_s'][m]:10.1f} image tokens/s" for m in MODES),
             f"KV cache speed-up  {result['ratio']:.2f}x",
             f"same codes         {'yes' if result['same_codes'] else 'NO'}"]
    return "\n".join(lines)


def format_bart_report(result: dict[str, Any]) -> str:
    s = result["settings"]
    lines = [f"DalleBart {s['dim']}d x {s['depth']} layers ({s['num_heads']} heads, GLU {s['glu_dim']}), 64 text "
             f"tokens, 256 image tokens over {s['image_vocab']} logits, {s['num_images']} image(s), "
             f"guidance {s['guidance']:g}, top-k 1, {s['threads']} threads",
             *(f"{m:10s} {result['tokens_per_s'][m]:10.1f} image tokens/s" for m in BART_MODES),
             f"mmkit / min-dalle  {result['ratio']:.2f}x",
             f"same codes         {'yes' if result['same_codes'] else 'NO'} ({result['distinct_codes']} distinct)"]
    lines += reduced_path_lines(result, "tokens_per_s", "image tokens/s", lambda kind, option: f"mmkit {option:17s}",
                                lambda a: f"top-1 {a['top1']:.1%} teacher-forced ({a['codes']:.1%} of codes equal)")
    return "\n".join(lines).replace("/ transformers fp32", "/ min-dalle fp32")


def _min_dalle_installed() -> bool:
    return importlib.util.find_spec("min_dalle") is not None


def main(argv: Sequence[str] | None = None) -> int:
    p = Parser(prog="mmkit bench generate", description=__doc__.split("\n\n")[0])
    p.add_argument("--grid", type=at_least(1), default=16)
    p.add_argument("--text-len", type=at_least(1), default=16)
    p.add_argument("--dim", type=at_least(1), default=256)
    p.add_argument("--depth", type=at_least(1), default=4)
    p.add_argument("--num-heads", type=at_least(1), default=8)
    p.add_argument("--codebook-size", type=at_least(1), default=1024)
    p.add_argument("--batch-size", type=at_least(1), default=1)
    p.add_argument("--bart-dim", type=at_least(1), default=256,
                   help="DalleBart width (64-wide heads; dalle-mini: 1024)")
    p.add_argument("--bart-depth", type=at_least(1), default=4, help="DalleBart layers per stack (dalle-mini: 12)")
    p.add_argument("--num-images", type=at_least(1), default=1, help="DalleBart images sampled together")
    p.add_argument("--guidance", type=finite(0), default=16.0,  # as `mmkit generate --guidance`
                   help="super-conditioning scale (min-dalle's default 16)")
    p.add_argument("--no-int8", action="store_true", help="no mmkit --quantize int8 row for DalleBart")
    add_precision_option(p)
    add_run_options(p)
    args = p.parse_args(argv)
    if args.dim % args.num_heads or args.bart_dim < 64 or args.bart_dim % 64:  # counts are checked by argparse
        print("mmkit bench generate: error: --dim must be divisible by --num-heads and --bart-dim a multiple of 64",
              file=sys.stderr)
        return 2
    result = run_generate_bench(args.grid, args.text_len, args.dim, args.depth, args.num_heads, args.codebook_size,
                                args.batch_size, args.rounds, args.warmup, args.threads)
    print(format_report(result))
    results = {"kv_cache": result}
    if _min_dalle_installed():
        bart = run_encoder_decoder_bench(args.bart_dim, args.bart_depth, args.bart_dim // 64, args.num_images,
                                         args.guidance, args.rounds, args.warmup, args.threads,
                                         int8=not args.no_int8, bf16="bf16" in bench_precisions(args.precision))
        print(format_bart_report(bart))
        results["min_dalle"] = bart
    else:
        print("min-dalle is not installed (pip install min-dalle==0.4.11): encoder-decoder comparison skipped")
    write_json(args.json, results)
    return 0
