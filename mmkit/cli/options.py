"""Options shared by the tools' parsers (`mmkit transcribe`, `translate`, `generate-text`, `embed`, `bench`).
Imports no torch: `mmkit bench label`'s parent process stays light."""
from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import re
from typing import Any, Callable, Iterable, Sequence

from mmkit.limits import FLOAT32_MAX, MAX_SEED

# A negative number in decimal or scientific notation ("-1e-1", "-.5E3"), or -inf/-nan: argparse's own pattern
# takes only "-1" and "-0.5" for a value, so `--length-penalty -1e-1` failed with "expected one argument".
NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^-(inf|infinity|nan)$", re.IGNORECASE)


class Parser(argparse.ArgumentParser):
    """The tools' argument parser: argparse's, reading every negative number (`NEGATIVE_NUMBER`) as a value.
    -inf and -nan included, so that the option's type refuses them ("must be finite") rather than argparse as a
    missing value. No tool has an option spelled as a negative number, the case argparse's narrower rule guards,
    nor a short option -i or -n, which argparse would match to -inf or -nan first."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = NEGATIVE_NUMBER  # argparse's own attribute, read by its parse loop


def at_least(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """An argparse type for a count: an integer >= `minimum` (and <= `maximum` if given), else
    argparse's usage error (exit 2)."""
    def count(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"must be <= {maximum}, got {value}")
        return value
    return count


# Beam search keeps one decoder row, with its KV cache, per beam and per sentence of a batch: a GPT-2 (124M)
# holds 75 MB per row at its full 1,024 tokens, so 32 beams need 2.4 GB (100,000 beams were OOM-killed), and
# translate or transcribe at batch 16 decode 512 rows. Wider beams rarely help, and often hurt (Koehn &
# Knowles 2017; openai/whisper uses 5), so the bound costs nothing in practice.
MAX_BEAM_SIZE = 32


def beam_size() -> Callable[[str], int]:
    """An argparse type for --beam-size and the like: 1 .. `MAX_BEAM_SIZE`."""
    return at_least(1, MAX_BEAM_SIZE)


# The decoding flags of the tools that read a model's own settings (a transformers generation config: translate,
# generate-text): not given, each is None and the model's setting applies (`generation_config.defaults_for`), else
# the tool's default, said in each help text.
def add_beam_arguments(p: argparse.ArgumentParser) -> None:
    """--length-penalty and --early-stopping, the beam search's ranking and stopping rule, as transformers'
    `generate(length_penalty=..., early_stopping=...)`: "false" (its default) stops a sentence when no running
    beam can beat its worst finished one at the current length, "true" at beam-size finished ones, "never" when
    none can at the longest length. Not given, they are None (the model's own settings, else 1.0 and false), so
    that a run without beams can name those given (`beam_only_options`)."""
    p.add_argument("--length-penalty", type=finite(-10, 10), default=None, metavar="A",
                   help="beam score = sum log p / length ** A (the model's, else 1.0; -10 to 10)")
    p.add_argument("--early-stopping", default=None, type=_early_stopping, metavar="{false,true,never}",
                   help="beam search's stopping rule, as transformers' early_stopping (the model's, else false)")


def add_repetition_arguments(p: argparse.ArgumentParser, prompt_included: bool = False) -> None:
    """--repetition-penalty, --no-repeat-ngram-size and --min-new-tokens, as transformers' `generate` settings of
    the same names (not given: the model's own, else off: 1, 0 and 0). `prompt_included`: the n-gram rule reads the
    prompt too, said for generate-text (a translation's decoder prompt is its start token alone)."""
    p.add_argument("--repetition-penalty", type=finite(), metavar="R",
                   help="> 1 discourages tokens already in the text (CTRL's penalty; the model's, else 1 = off)")
    p.add_argument("--no-repeat-ngram-size", type=at_least(0), metavar="N",
                   help=f"never repeat an n-gram of N tokens{', prompt included' if prompt_included else ''} (the "
                        "model's, else 0 = off)")
    p.add_argument("--min-new-tokens", type=at_least(0), metavar="N",
                   help="no end of text before N new tokens (the model's, else 0)")


def add_sampling_arguments(p: argparse.ArgumentParser) -> None:
    """--temperature, --top-k, --top-p and --seed, as transformers' `generate(do_sample=True, temperature=...,
    top_k=..., top_p=...)`: top-k or top-p alone samples at temperature 1. Not given, the model's own settings apply
    (its generation config's do_sample, and what a sampling run takes: `generation_config.sampling_fallbacks`),
    else greedy."""
    p.add_argument("--temperature", type=finite(), metavar="T",
                   help="sample at temperature T > 0 (the model's, else 0: greedy)")
    p.add_argument("--top-k", type=at_least(0), metavar="K",
                   help="sample among the K likeliest tokens (0: all; not given: the model's generation config's "
                        "top_k, transformers' 50 for a transformers directory, else all)")
    p.add_argument("--top-p", type=float, metavar="P", help="nucleus sampling: smallest token set with mass >= P")
    p.add_argument("--seed", type=seed, metavar="S", help="seed of the sampler, 0 to 2**64 - 1 (reproducible samples)")


def with_model_settings(options: Any, in_force: Iterable[str], given: dict, beam_only: Sequence[str],
                        say: bool = True) -> Any:
    """`options` (a dataclass with a beam_size: `TranslationOptions`, `GenerationOptions`) made of the model's own
    settings `in_force` (a generation config's, `generation_config.defaults_for`) and those `given` (None: not
    given): the model's beam count capped at --beam-size's (said), and the model's settings taken said in one line
    with the flags that choose others (`say`: on the first rank only). A greedy run takes no beam setting."""
    log = logging.getLogger("mmkit")
    if options.beam_size > MAX_BEAM_SIZE:  # the model's own count; --beam-size is checked against the same cap
        if say:
            log.warning("the model's num_beams %d is above --beam-size's cap: decoding with %d beams (--beam-size K "
                        "to choose)", options.beam_size, MAX_BEAM_SIZE)
        options = dataclasses.replace(options, beam_size=MAX_BEAM_SIZE)
    taken = {k: getattr(options, k) for k in in_force if given.get(k) is None
             and (k not in beam_only or options.beam_size > 1)}
    if taken and say:
        log.info("decoding with the model's own settings: %s (%s)", ", ".join(f"{k} {v}" for k, v in taken.items()),
                 " ".join(f"--{k.replace('_', '-')} ..." for k in taken if k in given) + " to choose others")
    return options


def beam_only_options(args: argparse.Namespace) -> str:
    """The beam-search options given (`add_beam_arguments`'), as a warning names them with its verb:
    "--length-penalty 2 is", "--length-penalty 2 and --early-stopping true are"; "" if none."""
    given = [] if args.length_penalty is None else [f"--length-penalty {args.length_penalty:g}"]
    if args.early_stopping is not None:
        given.append(f"--early-stopping {str(args.early_stopping).lower()}")
    return " and ".join(given) + (" is" if len(given) == 1 else " are") if given else ""


def _early_stopping(text: str) -> bool | str:
    rule = {"false": False, "true": True, "never": "never"}.get(text.lower())
    if rule is None:
        raise argparse.ArgumentTypeError(f"choose from false, true, never, got {text!r}")
    return rule


def seed(text: str) -> int:
    """An argparse type for --seed: an integer in [0, 2**64 - 1], the seeds torch.Generator takes (a larger one
    failed deep inside sampling, with a traceback or every file "failed")."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be in [0, 2**64 - 1], got {value}")
    return value


def thread_count() -> Callable[[str], int]:
    """An argparse type for --threads: 1 .. the machine's logical CPUs (far more threads only slow a run
    down, and torch.set_num_threads(100000) crashes the process)."""
    return at_least(1, os.cpu_count() or 1)


def finite(minimum: float | None = None, maximum: float | None = None, *,
           above: float | None = None) -> Callable[[str], float]:
    """An argparse type for a real number: finite (no nan/inf) in float32, the type it meets the logits in (1e39
    became inf there), within [`minimum`, `maximum`] where given and greater than `above` where given, else
    argparse's usage error (exit 2)."""
    def number(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be finite, got {text}")
        if ((minimum is not None and value < minimum) or (maximum is not None and value > maximum)
                or (above is not None and value <= above)):
            bounds = (f">= {minimum}" if minimum is not None else "", f"> {above}" if above is not None else "",
                      f"<= {maximum}" if maximum is not None else "")
            raise argparse.ArgumentTypeError(f"must be {' and '.join(x for x in bounds if x)}, got {value}")
        if abs(value) > FLOAT32_MAX:
            raise argparse.ArgumentTypeError(f"must be finite in float32 (at most 3.4e38), got {text}")
        return value
    return number


def path_text(text: str) -> str:
    """An argparse type for a file or folder option: not empty (`--model ""`, a variable that was not set,
    silently ran the default instead)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("empty: give a path")
    return text


def utf8_text(text: str) -> str:
    """An argparse type for a text argument: command-line bytes that are not UTF-8 reach Python as lone
    surrogates, which tokenizers reject with a traceback; refuse them as a usage error instead."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raw = text.encode("utf-8", "surrogateescape")
        raise argparse.ArgumentTypeError(f"not UTF-8 text (byte {e.start} of {raw!r})") from None
    return text


def add_precision_argument(p: argparse.ArgumentParser) -> None:
    """--precision, fp32 by default (`mmkit.inference.precision.resolve_precision` reads it)."""
    from mmkit.inference.precision import PRECISIONS

    p.add_argument("--precision", default="fp32", choices=PRECISIONS,
                   help="autocast precision: fp32 (exact, default); auto = bf16 where the hardware has it "
                        "natively (AVX512-BF16/AMX CPUs, GPUs), else fp32")
