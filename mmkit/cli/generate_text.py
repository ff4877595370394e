"""`mmkit generate-text PROMPT --model DIR`: continue a prompt with a GPT model (an mmkit export or
a transformers GPT-2 checkpoint directory), streaming the tokens to the terminal as they come.
Greedy unless a sampling option (--temperature, --top-k, --top-p) is given; --beam-size B searches.
Several prompts are decoded --batch-size at a time (left-padded: each continuation is the one its prompt gets
alone) and printed when done, each after its prompt, a blank line between.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from typing import Sequence

from mmkit.cli.options import (
    MAX_BEAM_SIZE, Parser, add_beam_arguments, add_precision_argument, at_least, beam_only_options, beam_size, finite,
    seed, utf8_text,
)
from mmkit.cli.ranked import on_ranks
from mmkit.inference.quantize import QUANTIZATIONS
from mmkit.errors import print_error
from mmkit.limits import MAX_SAMPLES

log = logging.getLogger("mmkit")
DEFAULT_NEW_TOKENS = 64  # without --max-new-tokens; at most half the model's context (a prompt needs room)


def _parser() -> argparse.ArgumentParser:
    p = Parser(prog="mmkit generate-text", description=__doc__.split("\n\n")[0])
    p.add_argument("prompts", nargs="+", metavar="PROMPT", type=utf8_text, help="text to continue (one or more)")
    p.add_argument("--model", required=True, metavar="DIR",
                   help="mmkit export (mmkit fit ... export_dir) or transformers GPT-2 checkpoint directory")
    p.add_argument("--max-new-tokens", type=int, metavar="N",
                   help=f"tokens to generate at most ({DEFAULT_NEW_TOKENS}, at most half the model's context)")
    p.add_argument("--temperature", type=finite(), default=0.0, metavar="T",
                   help="sample at temperature T > 0 (default 0: greedy)")
    p.add_argument("--top-k", type=int, metavar="K", help="sample among the K likeliest tokens")
    p.add_argument("--top-p", type=float, metavar="P", help="nucleus sampling: smallest token set with mass >= P")
    p.add_argument("--beam-size", type=beam_size(), default=1, metavar="B",
                   help=f"beam search with B beams (deterministic; 1 to {MAX_BEAM_SIZE}), as transformers' "
                        "generate(num_beams=B)")
    add_beam_arguments(p)
    p.add_argument("--repetition-penalty", type=finite(), default=1.0, metavar="R",
                   help="> 1 discourages tokens already in the text (CTRL's penalty; 1 = off)")
    p.add_argument("--no-repeat-ngram-size", type=at_least(0), default=0, metavar="N",
                   help="never repeat an n-gram of N tokens, prompt included (0 = off)")
    p.add_argument("--min-new-tokens", type=at_least(0), default=0, metavar="N",
                   help="no end of text before N new tokens (0)")
    p.add_argument("--num-return-sequences", type=at_least(1, MAX_SAMPLES), default=1, metavar="N",
                   help="N sampled continuations, drawn in one batch and printed one after another, a blank line "
                        f"between (sampling only; 1 to {MAX_SAMPLES})")
    p.add_argument("--stop", action="append", default=[], metavar="TEXT", type=utf8_text,
                   help="end the continuation before TEXT (repeatable)")
    p.add_argument("--seed", type=seed, metavar="S", help="seed of the sampler, 0 to 2**64 - 1 (reproducible samples)")
    p.add_argument("--batch-size", type=at_least(1), default=8, metavar="B",
                   help="prompts decoded together, with several prompts (8)")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:N, mps)")
    p.add_argument("--quantize", default="none", choices=QUANTIZATIONS,
                   help="int8: int8 weights for every Linear and the output projection (CPU; faster, tokens may "
                        "differ from fp32: see mmkit bench text)")
    add_precision_argument(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Returns the exit code: 0 done, 2 a usage or input error (one line on stderr), 130 interrupted (Ctrl-C or
    SIGTERM: one line; the text so far stays printed)."""
    return on_ranks("mmkit generate-text", _parser, argv, lambda args, ranks: _run(args),
                    lambda args, ranks: "the text so far is printed above")


def _run(args: argparse.Namespace) -> int:
    from mmkit.core import GenerationOptions
    from mmkit.inference.precision import check_device
    from mmkit.inference.text_generation import load_text_generator

    try:
        check_device(args.device)  # an unknown or absent device is one line, not a CUDA traceback
        options = GenerationOptions(max_new_tokens=DEFAULT_NEW_TOKENS if args.max_new_tokens is None
                                    else args.max_new_tokens,
                                    temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                                    beam_size=args.beam_size,
                                    length_penalty=1.0 if args.length_penalty is None else args.length_penalty,
                                    early_stopping=False if args.early_stopping is None else args.early_stopping,
                                    repetition_penalty=args.repetition_penalty, seed=args.seed,
                                    no_repeat_ngram_size=args.no_repeat_ngram_size,
                                    min_new_tokens=args.min_new_tokens)
        if args.num_return_sequences > 1 and len(args.prompts) > 1:
            raise ValueError(f"--num-return-sequences {args.num_return_sequences} takes one prompt, got "
                             f"{len(args.prompts)}")
        if args.num_return_sequences > 1 and not options.sampling:
            raise ValueError(f"--num-return-sequences {args.num_return_sequences} needs sampling (--temperature, "
                             "--top-k or --top-p): greedy and beam decoding give the same continuation each time")
        if args.seed is not None and not options.sampling:
            log.warning("--seed %d is unused: %s decoding is deterministic (sample with --temperature, --top-k or "
                        "--top-p)", args.seed, "beam-search" if options.beam_size > 1 else "greedy")
        unused = beam_only_options(args) if options.beam_size == 1 else ""
        if unused:  # transformers' GenerationConfig.validate also flags them outside beam search
            log.warning("%s unused: %s has no beams to rank or stop (search with --beam-size B > 1)",
                        unused, "sampling" if options.sampling else "greedy decoding")
        generator = load_text_generator(args.model, args.device, args.quantize, args.precision)
        if args.max_new_tokens is None:
            options = dataclasses.replace(options, max_new_tokens=min(DEFAULT_NEW_TOKENS,
                                                                      max(1, generator.model.max_len // 2)))
        prompts = []  # bad prompts fail before output
        for n, text in enumerate(args.prompts, 1):
            try:
                prompts.append(generator.prepare_prompt(text, options.max_new_tokens))
            except ValueError as e:
                raise ValueError(f"prompt {n}: {e}" if len(args.prompts) > 1 else e) from None
    except (ValueError, OSError) as e:  # bad options, prompts, directories (WeightsError is a ValueError)
        print_error("mmkit generate-text", e)
        return 2

    def show(piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    echoes = []
    for n, (text, prompt) in enumerate(zip(args.prompts, prompts), 1):
        if prompt.note:  # the model reads the prompt's end only: echo that, not text it never saw
            log.warning("%s%s", f"prompt {n}: " if len(prompts) > 1 else "", prompt.note)
        echoes.append("…" + generator.tokenizer.decode(prompt.ids) if prompt.note else text)
    if len(prompts) > 1:  # decoded together: printed when done, each after its prompt's echo
        texts = generator.generate_many(prompts, options, args.stop, args.batch_size)
        show("\n".join(f"{echo}{text}\n" for echo, text in zip(echoes, texts)))
        return 0
    prompt, echo = prompts[0], echoes[0]
    show(echo)
    if args.num_return_sequences > 1:  # decoded together: printed when done, each after the prompt's echo
        texts = generator.samples(prompt, options, args.num_return_sequences, args.stop)
        show(texts[0] + "\n" + "".join(f"\n{echo}{text}\n" for text in texts[1:]))
        return 0
    try:
        generator.generate(prompt, options, args.stop, on_text=show)
    finally:
        show("\n")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    raise SystemExit(main())
