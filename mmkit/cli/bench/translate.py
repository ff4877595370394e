"""Translation speed: mmkit's `Seq2Seq` (imported from MarianMT) on the shared decoding loop
with its KV cache against transformers' `MarianMTModel.generate` on the same random weights
(opus-mt-en-de's shape by default), the same source batch and the same tokens (checked), greedy
and beam 4, batch 1 and 16; mmkit's int8 path (`--quantize int8`) beside them, with its share
of tokens equal to transformers' fp32 ones, and CTranslate2 (`--ctranslate2 int8 float32`: the same weights
converted as `mmkit convert --to ctranslate2` converts them, the peer people pick for translation speed). All run
in one process in interleaved rounds whose order alternates; figures are medians. Never asserted on: a script
that prints ratios.
`--held-out EXPORT` instead scores a trained export (the translate_numbers recipe's) on the
recipe's held-out test phrases in fp32 and int8: BLEU, exact match and time, greedy and beam.

    mmkit bench translate                   # opus-mt-en-de's shape, 4 cells, fp32 and int8
    mmkit bench translate --layers 2 --source-tokens 16 --new-tokens 16 --rounds 2
    mmkit bench translate --ctranslate2 int8 float32   # CTranslate2's compute types beside them
    mmkit bench translate --held-out runs/translate_numbers/export
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import sys
import tempfile
import time
from types import SimpleNamespace
from typing import Any, Callable, Sequence

import torch

from mmkit.cli.bench.common import (
    add_ct2_option, add_precision_option, add_run_options, bench_precisions, check_ct2_compute_types,
    fastest_against_ct2, interleaved, placeholder_id, placeholder_pieces, torch_threads, write_json,
)
from mmkit.cli.options import Parser, at_least, beam_size, path_text

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


def _specials(vocab_size: int) -> dict[int, str]:
    """The reference's special ids as CTranslate2 pieces: EOS 0, <unk> 1, <pad> (the decoder start) last."""
    return {0: "</s>", 1: "<unk>", vocab_size - 1: "<pad>"}


def _ct2_translators(ref: Any, compute_types: Sequence[str]) -> dict[str, Any]:
    """`ctranslate2.Translator`s of `ref`'s weights, one a compute type, on torch's thread count: converted with
    the loader `mmkit convert --to ctranslate2` uses for a decoder that starts from its own token's embedding (this
    random model's <pad> row is not zero, so CTranslate2's opus-mt rules would compute another function), over a
    vocabulary of placeholder pieces ("</s>" 0, "<unk>" 1, "<pad>" last, as the reference's ids)."""
    import ctranslate2

    from mmkit.inference.ct2_dir import save_spec, start_token_loader

    pieces = placeholder_pieces(ref.config.vocab_size, _specials(ref.config.vocab_size))
    tokenizer = SimpleNamespace(get_vocab=lambda: {t: i for i, t in enumerate(pieces)}, eos_token="</s>",
                                unk_token="<unk>", convert_ids_to_tokens=lambda i: pieces[i])
    with tempfile.TemporaryDirectory() as folder:  # read whole at construction
        save_spec(start_token_loader(), copy.deepcopy(ref), tokenizer, folder)
        return {f"ctranslate2 {c}": ctranslate2.Translator(folder, device="cpu", compute_type=c,
                                                           intra_threads=torch.get_num_threads())
                for c in compute_types}


def _agreement(a: list[list[int]], b: list[list[int]]) -> float:
    """Share of token positions equal in two sets of equal-length sequences."""
    pairs = [(x, y) for sa, sb in zip(a, b) for x, y in zip(sa, sb)]
    return sum(x == y for x, y in pairs) / max(1, len(pairs))


def _cell(ref: Any, models: dict[str, tuple[Any, Callable[[], Any]]], src: torch.Tensor, beams: int, new_tokens: int,
          rounds: int, warmup: int, ct2: dict[str, Any] | None = None) -> dict[str, Any]:
    from mmkit.core import BeamSearch, Greedy, generate

    start_id = ref.config.decoder_start_token_id
    mask = torch.ones_like(src, dtype=torch.bool)
    strategy = BeamSearch(beams, early_stopping=False) if beams > 1 else Greedy()

    # both sides return the decoder start token first, always equal: each drops it, so that the agreement and
    # same_tokens count generated tokens only
    def mmkit_run(ours: Any, autocast: Callable[[], Any]) -> Callable[[], list[list[int]]]:
        def run() -> list[list[int]]:
            with autocast():
                out = generate(ours, torch.full((len(src), 1), start_id), new_tokens, strategy,
                               context=ours.encode(src, mask), context_mask=mask, eos_id=None, pad_id=start_id)
            return [s.tolist()[1:] for s in out.sequences]
        return run

    def reference_run() -> list[list[int]]:
        out = ref.generate(input_ids=src, attention_mask=mask.long(), num_beams=beams, do_sample=False,
                           max_new_tokens=new_tokens, early_stopping=False)
        return [s[1:] for s in out.tolist()]

    def ct2_run(translator: Any) -> Callable[[], list[list[int]]]:
        # exactly new_tokens a row, as the others (EOS held off: min_decoding_length), pieces back to the ids
        specials = _specials(ref.config.vocab_size)
        pieces = placeholder_pieces(ref.config.vocab_size, specials)
        sources = [[pieces[i] for i in row] for row in src.tolist()]

        def run() -> list[list[int]]:
            out = translator.translate_batch(sources, beam_size=beams, max_decoding_length=new_tokens,
                                             min_decoding_length=new_tokens, max_batch_size=len(sources))
            return [[placeholder_id(p, specials) for p in r.hypotheses[0]] for r in out]
        return run

    runs = {name: mmkit_run(model, autocast) for name, (model, autocast) in models.items()}
    runs.update({name: ct2_run(translator) for name, translator in (ct2 or {}).items()})
    runs["transformers"] = reference_run
    seconds, outputs = interleaved(runs, rounds, warmup)
    rate = {k: len(src) * new_tokens / statistics.median(v) for k, v in seconds.items()}
    paths = [k for k in runs if k != "transformers"]
    return dict(batch_size=len(src), beams=beams, tokens_per_s=rate, seconds=seconds,
                ratio={k: rate[k] / rate["transformers"] for k in paths},
                agreement={k: _agreement(outputs[k], outputs["transformers"]) for k in paths},
                same_tokens=outputs["mmkit"] == outputs["transformers"])


def run_translate_bench(dim: int = 512, layers: int = 6, heads: int = 8, ffn: int = 2048, vocab_size: int = 58101,
                        batch_sizes: Sequence[int] = (1, 16), beams: Sequence[int] = (1, 4), source_tokens: int = 24,
                        new_tokens: int = 32, rounds: int = 3, warmup: int = 1, threads: int | None = None,
                        int8: bool = True, bf16: bool = False, ctranslate2: Sequence[str] = ()) -> dict[str, Any]:
    """Generated tokens/s of both implementations (and mmkit int8, mmkit bf16, CTranslate2 per compute type in
    `ctranslate2`) in every (beams, batch size) cell.

    Returns:
        `cells`: one dict per cell with `tokens_per_s` per implementation, `ratio` and `agreement`
        (share of tokens equal to transformers') per path ("mmkit", "mmkit int8", "mmkit bf16", "ctranslate2
        int8", ...; ratio > 1: faster than transformers fp32), `same_tokens` (fp32) and the raw `seconds`; and the
        settings.
    """
    from mmkit.inference.packed import packed_copy
    from mmkit.inference.precision import autocast_for
    from mmkit.inference.quantize import apply_quantization
    from mmkit.models import Seq2Seq

    if min(rounds, source_tokens, new_tokens, *batch_sizes, *beams) < 1 or warmup < 0:
        raise ValueError("rounds, batch sizes, beams, source and new tokens must be >= 1 and warmup >= 0")
    check_ct2_compute_types(ctranslate2)
    with torch_threads(threads):
        ref = _reference(dim, layers, heads, ffn, vocab_size)
        ours = Seq2Seq.from_hf(ref).eval()
        packed = packed_copy(ours)  # fp32 and bf16 as `mmkit translate` runs them: on oneDNN's packed weights
        models = {"mmkit": (packed, contextlib.nullcontext)}
        if int8:
            models["mmkit int8"] = (apply_quantization(copy.deepcopy(ours), "int8"), contextlib.nullcontext)
        if bf16:  # the same weights under bf16 autocast, as `mmkit translate --precision bf16`
            models["mmkit bf16"] = (packed, autocast_for("bf16", "cpu"))
        ct2 = _ct2_translators(ref, ctranslate2) if ctranslate2 else {}
        g = torch.Generator().manual_seed(0)
        cells = []
        for beam in beams:
            for batch in batch_sizes:
                src = torch.randint(1, vocab_size - 1, (batch, source_tokens), generator=g)
                src[:, -1] = 0  # sources end in EOS, as the tokenizer writes them
                cells.append(_cell(ref, models, src, beam, new_tokens, rounds, warmup, ct2))
        return dict(model=f"random MarianMT dim {dim}, {layers}+{layers} layers, vocab {vocab_size}",
                    params=sum(p.numel() for p in ours.parameters()), source_tokens=source_tokens,
                    new_tokens=new_tokens, rounds=rounds, threads=torch.get_num_threads(), cells=cells)


def run_held_out(export: str, n: int = 1000, beams: Sequence[int] = (1, 4), max_new_tokens: int = 24,
                 batch_size: int = 64, threads: int | None = None) -> dict[str, Any]:
    """BLEU, exact match and seconds of `export` on the translate_numbers recipe's held-out test
    phrases (`make_pairs("test", n)`, as the recipe's test split) in fp32 and int8, and the share
    of sentences whose int8 tokens equal the fp32 ones. The seconds are one run per strategy and weights,
    after an untimed warm-up of each translator, fp32 and int8 in alternating order per beam."""
    from torchmetrics.text import SacreBLEUScore

    from mmkit.data.number_phrases import make_pairs
    from mmkit.inference.translator import TranslationOptions, load_translator

    rows = []
    with torch_threads(threads), torch.inference_mode():
        translators = {q: load_translator(export, quantize=q) for q in ("none", "int8")}  # a bad export: at once
        pairs = make_pairs("test", n)
        sources, refs = [en for en, _ in pairs], [de for _, de in pairs]
        for i, beam in enumerate(beams):
            options = TranslationOptions(beam_size=beam, max_new_tokens=max_new_tokens, batch_size=batch_size)
            if i == 0:  # untimed: the first call pays for lazy set-up (kernels, caches) that would land on fp32
                for translator in translators.values():
                    translator.translate(sources[:batch_size], options)
            out, seconds = {}, {}
            # one timed run each, the order alternating per beam so that drift does not always hit fp32 first
            for q in list(translators) if i % 2 == 0 else list(translators)[::-1]:
                start = time.perf_counter()
                out[q] = translators[q].translate(sources, options)
                seconds[q] = time.perf_counter() - start
            for q in translators:  # rows in a fixed order: fp32, then int8 with its share of fp32's tokens
                hyps = [r.text for r in out[q]]
                rows.append(dict(beams=beam, quantize=q, seconds=seconds[q],
                                 bleu=100 * float(SacreBLEUScore(tokenize="13a")(hyps, [[r] for r in refs])),
                                 exact=100 * sum(h == r for h, r in zip(hyps, refs)) / n))
            rows[-1]["same_as_fp32"] = 100 * sum(a.tokens == b.tokens for a, b in zip(out["none"], out["int8"])) / n
        return dict(export=export, sentences=n, threads=torch.get_num_threads(), rows=rows,
                    timing="one run each after an untimed warm-up, fp32/int8 order alternating per beam")


def format_held_out(result: dict[str, Any]) -> str:
    lines = [f"Held-out translate_numbers test phrases ({result['sentences']}), {result['export']}, "
             f"{result['threads']} threads; seconds: a single run each (after an untimed warm-up, fp32 and int8 "
             "in alternating order per beam), not a median",
             "  strategy  weights    BLEU   exact %   seconds   same tokens as fp32"]
    for r in result["rows"]:
        name = "greedy" if r["beams"] == 1 else f"beam {r['beams']}"
        same = f"{r['same_as_fp32']:.1f}%" if "same_as_fp32" in r else "-"
        weights = "fp32" if r["quantize"] == "none" else "int8"
        lines.append(f"  {name:8s}  {weights:7s} {r['bleu']:6.1f} {r['exact']:9.1f} {r['seconds']:9.1f}   {same}")
    return "\n".join(lines)


def format_report(result: dict[str, Any]) -> str:
    r = result
    paths = list(r["cells"][0]["ratio"])
    lines = [f"Translation: {r['model']} ({r['params'] / 1e6:.1f}M params), {r['source_tokens']} source + "
             f"{r['new_tokens']} new tokens, {r['threads']} threads, median of {r['rounds']}",
             "  strategy  batch   transformers tok/s" + "".join(f"   {k + ' tok/s':>16s}   vs transf." for k in paths)
             + "   fp32 same tokens" + "".join(f"   {k.removeprefix('mmkit ')} same tokens" for k in paths[1:])]
    for c in r["cells"]:
        name = "greedy" if c["beams"] == 1 else f"beam {c['beams']}"
        line = f"  {name:8s} {c['batch_size']:6d} {c['tokens_per_s']['transformers']:20.1f}"
        for k in paths:
            line += f"   {c['tokens_per_s'][k]:16.1f}   {c['ratio'][k]:9.2f}x"
        line += f"   {'yes' if c['same_tokens'] else 'NO':>17s}"
        for k in paths[1:]:
            line += f"   {100 * c['agreement'][k]:17.1f}%"
        lines.append(line)
    lines.append("  (goal >= 1.5x in every cell; int8/bf16 tokens vs transformers fp32, position by position)")
    if any(k.startswith("ctranslate2") for k in paths):
        lines.append("  mmkit's fastest path vs CTranslate2's fastest: " + "; ".join(
            f"{'greedy' if c['beams'] == 1 else 'beam ' + str(c['beams'])} b{c['batch_size']} "
            + fastest_against_ct2(c["tokens_per_s"]) for c in r["cells"]))
    return "\n".join(lines)


HELD_OUT_TAKES = {"held_out", "sentences", "beams", "threads", "json", "help"}  # the rest time a random model


def _unused_options(p: argparse.ArgumentParser, args: argparse.Namespace) -> list[str]:
    """The options given (a value other than the default) that the chosen mode ignores: the timing and model-size
    options with --held-out, --sentences without it (each was silently ignored)."""
    def given(dest: str) -> bool:
        return any(a.dest == dest and getattr(args, dest) != a.default for a in p._actions)

    if args.held_out:
        dests = [a.dest for a in p._actions if a.dest not in HELD_OUT_TAKES and given(a.dest)]
    else:
        dests = ["sentences"] if given("sentences") else []
    return [next(a.option_strings[0] for a in p._actions if a.dest == dest) for dest in dests]


def main(argv: Sequence[str] | None = None) -> int:
    p = Parser(prog="mmkit bench translate", description=__doc__.split("\n\n")[0])
    p.add_argument("--dim", type=at_least(1), default=512)
    p.add_argument("--layers", type=at_least(1), default=6, help="encoder and decoder layers each (6)")
    p.add_argument("--heads", type=at_least(1), default=8)
    p.add_argument("--ffn", type=at_least(1), default=2048)
    p.add_argument("--vocab-size", type=at_least(3), default=58101, help="tokens (58101; at least 3: the pad and "
                   "end-of-sentence tokens and one word)")
    p.add_argument("--batch-sizes", type=at_least(1), nargs="+", default=[1, 16])
    # at most `mmkit translate --beam-size`'s 32: each beam is another decoder row with its own KV cache
    p.add_argument("--beams", type=beam_size(), nargs="+", default=[1, 4], help="beam widths (1 = greedy)")
    p.add_argument("--source-tokens", type=at_least(1), default=24)
    p.add_argument("--new-tokens", type=at_least(1), default=32)
    p.add_argument("--no-int8", action="store_true", help="no mmkit --quantize int8 column")
    add_ct2_option(p)
    add_precision_option(p)
    p.add_argument("--held-out", type=path_text, metavar="EXPORT",
                   help="instead: BLEU/exact match of this translate_numbers export, fp32 vs int8, greedy and beam")
    p.add_argument("--sentences", type=at_least(1, 100_000), default=1000,
                   help="held-out phrases to score (1000, the recipe's; at most 100,000)")
    add_run_options(p)
    args = p.parse_args(argv)
    unused = _unused_options(p, args)
    if unused:
        p.error(f"{' and '.join(unused)}: not taken {'with' if args.held_out else 'without'} --held-out, which "
                f"scores an export's accuracy once (fp32 and int8) instead of timing a random model")
    try:
        if args.held_out:
            result = run_held_out(args.held_out, args.sentences, [b for b in args.beams], threads=args.threads)
            report = format_held_out(result)
        else:
            result = run_translate_bench(args.dim, args.layers, args.heads, args.ffn, args.vocab_size,
                                         args.batch_sizes, args.beams, args.source_tokens, args.new_tokens,
                                         args.rounds, args.warmup, args.threads, not args.no_int8,
                                         "bf16" in bench_precisions(args.precision), args.ctranslate2)
            report = format_report(result)
    except (ValueError, OSError) as e:  # TranslatorError and WeightsError are ValueErrors
        print(f"mmkit bench translate: error: {e}", file=sys.stderr)
        return 2
    print(report)
    write_json(args.json, result)
    return 0
