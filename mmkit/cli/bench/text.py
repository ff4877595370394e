"""GPT generation speed: mmkit's `GPT` on the shared decoding loop with its KV cache against
transformers' `GPT2LMHeadModel.generate` (KV cache, SDPA attention) on the same weights, the same
prompts and the same greedy tokens (checked); mmkit's int8 path (`generate-text --quantize int8`) beside
them, timed against the same fp32 reference, with its agreement: greedy tokens equal to transformers' (position
by position) and the top-1 agreement of its next-token predictions with fp32 along the reference's own tokens
(teacher-forced, so one early difference does not count for every later position); CTranslate2's Generator
(`--ctranslate2 int8 float32`: the same weights converted as `mmkit convert --to ctranslate2` converts them) with
its tokens' agreement. All run in one process in interleaved rounds whose order alternates; figures are medians.
Never asserted on: a script that prints ratios.

    mmkit bench text                       # the recipe's and GPT-2 small's shapes, random weights
    mmkit bench text --model DIR --batch-size 4 --new-tokens 128
    mmkit bench text --model runs/gpt_fortunes/export   # a trained export against its transformers twin
    mmkit bench text --sizes gpt2-small --ctranslate2 int8 float32   # CTranslate2's compute types beside them
"""
from __future__ import annotations

import contextlib
import copy
import json
import logging
import statistics
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Sequence

import torch

from mmkit.cli.bench.common import (
    add_ct2_option, add_precision_option, add_run_options, add_sizes_option, bench_precisions,
    check_ct2_compute_types, fastest_against_ct2, interleaved, placeholder_id, placeholder_pieces, reduced_path_lines,
    torch_threads, write_json,
)
from mmkit.cli.options import Parser, at_least, path_text
from mmkit.core import KVCache

log = logging.getLogger(__name__)


def _reference(model_dir: str | None, dim: int, depth: int, num_heads: int, vocab_size: int, max_len: int):
    from transformers import GPT2Config, GPT2LMHeadModel

    if model_dir:
        config = Path(model_dir, "config.json")
        try:
            saved = json.loads(config.read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"--model {model_dir}: no readable config.json ({e})") from None
        if not isinstance(saved, dict):  # [1], a string: an AttributeError on .get before
            raise ValueError(f"--model {model_dir}: config.json holds a {type(saved).__name__}, not an object")
        if saved.get("architecture") == "GPT":  # an mmkit export: its transformers twin, same weights
            return _twin(model_dir)
        # transformers reads any config.json it is given: anything else would silently become a random GPT-2
        if saved.get("model_type") != "gpt2":
            raise ValueError(f"--model {model_dir}: neither an mmkit GPT export nor a transformers GPT-2 directory "
                             f"(model_type {saved.get('model_type')!r})")
        ref = GPT2LMHeadModel.from_pretrained(model_dir, attn_implementation="sdpa")
    else:
        torch.manual_seed(0)
        ref = GPT2LMHeadModel(GPT2Config(vocab_size=vocab_size, n_positions=max_len, n_embd=dim, n_layer=depth,
                                         n_head=num_heads, bos_token_id=None, eos_token_id=None,
                                         attn_implementation="sdpa"))
    return _no_stop(ref)


def _no_stop(ref: Any) -> Any:
    """Every row generates exactly new_tokens on both sides: no end-of-text stop."""
    ref.generation_config.eos_token_id = None
    ref.generation_config.pad_token_id = 0
    return ref.eval()


def _twin(export_dir: str) -> Any:
    """transformers' GPT-2 holding the weights of an mmkit GPT export (`weights.from_hf.gpt2_from_mmkit`)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from mmkit.models import GPT
    from mmkit.weights.from_hf import gpt2_from_mmkit

    ours = GPT.from_pretrained(export_dir)
    config, state = gpt2_from_mmkit(ours.config, ours.state_dict())
    config.pop("model_type")
    ref = GPT2LMHeadModel(GPT2Config(**config, attn_implementation="sdpa"))  # no stop either way: `_no_stop`
    ref.load_state_dict(state, strict=True)
    return _no_stop(ref)


def _ct2_runs(ref: Any, compute_types: Sequence[str], prompt: torch.Tensor, padding: torch.Tensor,
              new_tokens: int) -> dict[str, Callable[[], torch.Tensor]]:
    """Greedy runs of `ctranslate2.Generator`s of `ref`'s weights, one a compute type, on torch's thread count
    (CTranslate2's own GPT-2 conversion, over placeholder pieces): each row's prompt without its left padding,
    exactly `new_tokens` more (no end token), returned as the reference returns them (prompt and new tokens)."""
    import ctranslate2
    from ctranslate2.converters.transformers import GPT2Loader

    from mmkit.inference.ct2_dir import save_spec

    specials = {0: "<|endoftext|>"}
    pieces = placeholder_pieces(ref.config.vocab_size, specials)
    tokenizer = SimpleNamespace(get_vocab=lambda: {t: i for i, t in enumerate(pieces)}, bos_token=pieces[0],
                                eos_token=pieces[0], unk_token=pieces[0])
    with tempfile.TemporaryDirectory() as folder:  # read whole at construction
        save_spec(GPT2Loader(), copy.deepcopy(ref), tokenizer, folder)
        generators = {c: ctranslate2.Generator(folder, device="cpu", compute_type=c,
                                               intra_threads=torch.get_num_threads()) for c in compute_types}
    starts = [[pieces[i] for i in row[int(pad):]] for row, pad in zip(prompt.tolist(), padding.tolist())]

    def run(generator: Any) -> Callable[[], torch.Tensor]:
        def go() -> torch.Tensor:
            out = generator.generate_batch(starts, max_length=new_tokens, sampling_topk=1, end_token=[],
                                           include_prompt_in_result=False, max_batch_size=len(starts))
            new = torch.tensor([[placeholder_id(p, specials) for p in r.sequences[0]] for r in out])
            return torch.cat([prompt, new], dim=1)
        return go

    return {f"ctranslate2 {c}": run(g) for c, g in generators.items()}


def run_text_bench(model_dir: str | None = None, dim: int = 768, depth: int = 12, num_heads: int = 12,
                   vocab_size: int = 50257, batch_size: int = 1, prompt_tokens: int = 16, new_tokens: int = 64,
                   rounds: int = 3, warmup: int = 1, threads: int | None = None, int8: bool = True,
                   bf16: bool = False, ragged: bool = False, ctranslate2: Sequence[str] = ()) -> dict[str, Any]:
    """Greedy generation tokens/s of both implementations (and of mmkit int8, mmkit bf16).

    Args:
        model_dir: a transformers GPT-2 checkpoint directory, or an mmkit GPT export (timed against
            its transformers twin, the same weights; None: random weights of the given shape, by
            default GPT-2 small's).
        batch_size, prompt_tokens, new_tokens: B random prompts of that many tokens, each extended
            by exactly `new_tokens`.
        rounds, warmup: timed and untimed rounds (each runs both implementations once).
        threads: torch intra-op threads (None: leave as is).
        int8: also time mmkit with int8 weights (`apply_quantization(model, "int8")`).
        bf16: also time mmkit under bf16 autocast (`generate-text --precision bf16`; emulated, slowly,
            where the CPU lacks bf16).
        ragged: prompts of different lengths (from a quarter of `prompt_tokens` to all of it), left-padded on
            both sides: mmkit's `KVCache.padding` (`generate-text` with several prompts, `generate_many`)
            against transformers' attention_mask, which numbers positions from each row's first real token too.
        ctranslate2: CTranslate2 compute types to time ("int8", "float32", ...), the same weights.

    Returns:
        `tokens_per_s` per implementation, `ratio` (mmkit / transformers, > 1: mmkit faster) and per
        reduced path `int8_ratio` / `bf16_ratio` and `int8_agreement` / `bf16_agreement` (`token`: share
        of generated tokens equal to transformers', `top1`: teacher-forced top-1 agreement with fp32),
        `same_tokens`, the raw `seconds`, the settings; with `ctranslate2`, `ct2_ratio` and `ct2_agreement`
        (share of generated tokens equal to transformers') per "ctranslate2 <type>".
    """
    from mmkit.core import Greedy, generate
    from mmkit.inference.packed import packed_copy
    from mmkit.inference.precision import autocast_for
    from mmkit.inference.quantize import apply_quantization
    from mmkit.models import GPT

    if min(rounds, batch_size, prompt_tokens, new_tokens) < 1 or warmup < 0:
        raise ValueError("rounds, batch size, prompt and new tokens must be >= 1 and warmup >= 0")
    check_ct2_compute_types(ctranslate2)
    with torch_threads(threads):
        ref = _reference(model_dir, dim, depth, num_heads, vocab_size, prompt_tokens + new_tokens)
        ours = GPT.from_hf(ref).eval()
        if prompt_tokens + new_tokens > ours.max_len:
            raise ValueError(f"prompt + new tokens exceed the model's context of {ours.max_len}")
        packed = packed_copy(ours)  # fp32 and bf16 as `mmkit generate-text` runs them: on oneDNN's packed weights
        prompt = torch.randint(0, ours.vocab_size, (batch_size, prompt_tokens),
                               generator=torch.Generator().manual_seed(0))
        padding = torch.zeros(batch_size, dtype=torch.long)
        if ragged:  # row b keeps its last tokens only, from a quarter of the prompt (row 0) to all of it
            low = max(1, prompt_tokens // 4)
            padding = prompt_tokens - torch.linspace(low, prompt_tokens, batch_size).round().long()
            prompt.masked_fill_(torch.arange(prompt_tokens)[None, :] < padding[:, None], 0)
        mask = (torch.arange(prompt_tokens)[None, :] >= padding[:, None]).long()

        def cache() -> KVCache:
            c = KVCache()
            c.padding = padding if bool(padding.any()) else None
            return c

        runs: dict[str, Callable[[], torch.Tensor]] = {
            "mmkit": lambda: generate(packed, prompt, new_tokens, Greedy(), cache=cache()).tokens,
            "transformers": lambda: ref.generate(prompt, attention_mask=mask, do_sample=False,
                                                 max_new_tokens=new_tokens),
        }
        reduced: dict[str, tuple[torch.nn.Module, Callable[[], Any]]] = {}  # kind -> (model, autocast)
        if int8:
            reduced["int8"] = (apply_quantization(copy.deepcopy(ours), "int8"), contextlib.nullcontext)
        if bf16:
            reduced["bf16"] = (packed, autocast_for("bf16", "cpu"))

        def run_reduced(model: torch.nn.Module, autocast: Callable[[], Any]) -> Callable[[], torch.Tensor]:
            def run() -> torch.Tensor:
                with autocast():
                    return generate(model, prompt, new_tokens, Greedy(), cache=cache()).tokens
            return run

        runs.update({f"mmkit {kind}": run_reduced(*path) for kind, path in reduced.items()})
        ct2 = _ct2_runs(ref, ctranslate2, prompt, padding, new_tokens) if ctranslate2 else {}
        runs.update(ct2)
        seconds, outputs = interleaved(runs, rounds, warmup)
        rate = {k: batch_size * new_tokens / statistics.median(v) for k, v in seconds.items()}
        extra: dict[str, Any] = {}
        for kind, (model, autocast) in reduced.items():
            extra[f"{kind}_ratio"] = rate[f"mmkit {kind}"] / rate["transformers"]
            extra[f"{kind}_agreement"] = _agreement(ours, model, autocast, outputs[f"mmkit {kind}"],
                                                    outputs["transformers"], prompt_tokens, cache)
        if ct2:
            extra["ct2_ratio"] = {k: rate[k] / rate["transformers"] for k in ct2}
            extra["ct2_agreement"] = {k: _token_agreement(outputs[k], outputs["transformers"], prompt_tokens)
                                      for k in ct2}
        return dict(**extra, model=model_dir or f"random GPT-2 dim {dim} depth {depth} vocab {vocab_size}",
                    params=sum(p.numel() for p in ours.parameters()), batch_size=batch_size, ragged=ragged,
                    prompt_tokens=prompt_tokens, new_tokens=new_tokens, rounds=rounds, threads=torch.get_num_threads(),
                    tokens_per_s=rate, ratio=rate["mmkit"] / rate["transformers"], seconds=seconds,
                    same_tokens=torch.equal(outputs["mmkit"], outputs["transformers"]))


def _agreement(ours: torch.nn.Module, reduced: torch.nn.Module, autocast: Callable[[], Any], tokens: torch.Tensor,
               reference: torch.Tensor, prompt_tokens: int,
               cache: Callable[[], KVCache] = KVCache) -> dict[str, float]:
    """`token`: share of a reduced path's generated `tokens` equal to transformers' fp32 `reference`,
    position by position; `top1`: share of the positions of the reference sequence where the reduced
    path's next-token argmax (`reduced` under `autocast`) equals fp32's. `cache`: a new cache holding the
    prompts' left padding, if any."""
    token = _token_agreement(tokens, reference, prompt_tokens)
    with torch.inference_mode():
        context = reference[:, :-1]  # predictions of the tokens after the prompt, along the fp32 sequence
        exact = ours(context, cache=cache())[:, prompt_tokens - 1 :].argmax(-1)
        with autocast():
            low = reduced(context, cache=cache())[:, prompt_tokens - 1 :].argmax(-1)
    return dict(token=token, top1=float((exact == low).float().mean()))


def _token_agreement(tokens: torch.Tensor, reference: torch.Tensor, prompt_tokens: int) -> float:
    """Share of the generated tokens (after the prompt) equal to the reference's, position by position."""
    return float((tokens[:, prompt_tokens:] == reference[:, prompt_tokens:]).float().mean())


def format_report(result: dict[str, Any]) -> str:
    r = result
    reduced = reduced_path_lines(
        r, "tokens_per_s", "tokens/s", lambda kind, option: f"{f'mmkit {kind} ({option})':<31}",
        lambda a: f"{100 * a['token']:.1f}% same tokens, {100 * a['top1']:.1f}% same top-1 (teacher-forced)")
    prompts = (f"{max(1, r['prompt_tokens'] // 4)} to {r['prompt_tokens']} prompt tokens (left-padded)"
               if r.get("ragged") else f"{r['prompt_tokens']} prompt")
    return "\n".join([
        f"GPT greedy generation: {r['model']} ({r['params'] / 1e6:.1f}M params), batch {r['batch_size']}, "
        f"{prompts} + {r['new_tokens']} new tokens, {r['threads']} threads, median of {r['rounds']}",
        f"  mmkit (shared loop, KV cache)   {r['tokens_per_s']['mmkit']:8.1f} tokens/s",
        f"  transformers generate           {r['tokens_per_s']['transformers']:8.1f} tokens/s",
        f"  mmkit / transformers            {r['ratio']:8.2f}x   (goal >= 1.5x)",
        f"  same tokens                     {'yes' if r['same_tokens'] else 'NO'}",
    ] + reduced + [
        f"  {k:<31} {r['tokens_per_s'][k]:8.1f} tokens/s   {ratio:5.2f}x transformers fp32, "
        f"{100 * r['ct2_agreement'][k]:.1f}% same tokens" for k, ratio in r.get("ct2_ratio", {}).items()
    ] + ([f"  mmkit's fastest vs CTranslate2's fastest: {fastest_against_ct2(r['tokens_per_s'])}"]
         if r.get("ct2_ratio") else []))


# Named shapes (dim, depth, num_heads, vocab_size): the recipe's model and GPT-2 small.
SIZES = {"fortunes": (192, 4, 4, 4096), "gpt2-small": (768, 12, 12, 50257)}


def main(argv: Sequence[str] | None = None) -> int:
    p = Parser(prog="mmkit bench text", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", metavar="DIR", type=path_text,
                   help="transformers GPT-2 checkpoint directory, or an mmkit GPT export "
                        "(timed against its transformers twin), instead of --sizes")
    add_sizes_option(p, SIZES)
    p.set_defaults(sizes=None)  # None: not given (all of them), so that --sizes beside --model can be refused
    p.add_argument("--batch-size", type=at_least(1), default=1)
    p.add_argument("--prompt-tokens", type=at_least(1), default=16)
    p.add_argument("--new-tokens", type=at_least(1), default=64)
    p.add_argument("--no-int8", action="store_true", help="no mmkit --quantize int8 row")
    p.add_argument("--ragged", action="store_true",
                   help="prompts of different lengths (a quarter of --prompt-tokens to all of them), left-padded on "
                        "both sides (mmkit's KVCache.padding, transformers' attention_mask)")
    add_precision_option(p)
    add_ct2_option(p)
    add_run_options(p)
    args = p.parse_args(argv)
    if args.model and args.sizes is not None:  # was silently ignored
        p.error("--sizes: not taken with --model, which times that checkpoint instead of random-weight shapes")
    results = []
    try:
        for size in [None] if args.model else args.sizes or list(SIZES):
            dim, depth, heads, vocab = SIZES[size] if size else SIZES["gpt2-small"]
            results.append(run_text_bench(args.model, dim, depth, heads, vocab, args.batch_size, args.prompt_tokens,
                                          args.new_tokens, args.rounds, args.warmup, args.threads, not args.no_int8,
                                          "bf16" in bench_precisions(args.precision), args.ragged, args.ctranslate2))
            print(format_report(results[-1]), flush=True)
    except (ValueError, OSError) as e:
        print(f"mmkit bench text: error: {e}", file=sys.stderr)
        return 2
    write_json(args.json, results)
    return 0
