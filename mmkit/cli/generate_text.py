"""`mmkit generate-text PROMPT... --model DIR` or `mmkit generate-text FILE --model DIR --output OUT`: continue
prompts with a GPT model (an mmkit export or a transformers GPT-2 checkpoint directory). Greedy unless a sampling
option (--temperature, --top-k, --top-p) is given or a GPT-2 directory's generation_config.json says otherwise (as
transformers' generate reads it); --beam-size B searches. One prompt streams its tokens to the
terminal as they come; several are decoded --batch-size at a time (left-padded: each continuation is the one its
prompt gets alone, seeded samples included) and printed when done, each after its prompt, a blank line between.
FILE holds one prompt a line (.txt) or JSON objects with a "text" field (.jsonl), read as `mmkit translate` reads
its files (an argument naming an existing file is a path; one file at a time): line N of the output continues line
N of the input, empty lines stay empty, unreadable lines (not UTF-8, NUL bytes, nothing visible) are reported and
left empty. --output writes .txt (one continuation a line: its backslashes and line breaks written as Python
string escapes, \\\\, \\n, \\r, ...) or .jsonl ({"prompt", "text"}, and "error" where a line failed), whole or
not at all; without it the continuations are printed as several prompts' are. --num-return-sequences N gives N
continuations of each prompt (N samples, or a beam search's N best): printed one after another, in a .jsonl
output as a "texts" list beside the first ("text"); a .txt output holds one a line: refused.

Under torchrun the ranks share a file (or several prompts) as in `mmkit translate`: each reads every line,
plans one process's length-sorted batches, decodes every world_size-th batch and hands its continuations to rank
0, which writes the output (or prints them): byte for byte one process's. A single prompt is continued by rank 0
alone.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

from mmkit.cli.options import (
    MAX_BEAM_SIZE, Parser, add_beam_arguments, add_precision_argument, add_repetition_arguments,
    add_sampling_arguments, at_least, beam_only_options, beam_size, utf8_text, with_model_settings,
)
from mmkit.cli.ranked import check_export_option, exported, nothing_written, on_ranks, set_up_on_ranks
from mmkit.inference.quantize import QUANTIZATIONS
from mmkit.inference.ranks import BatchShares, Ranks, Share, merged
from mmkit.errors import print_error
from mmkit.limits import MAX_SAMPLES

if TYPE_CHECKING:
    from mmkit.core import GenerationOptions
    from mmkit.inference.text_generation import PromptTokens, TextGenerator

log = logging.getLogger("mmkit")
PROG = "mmkit generate-text"
DEFAULT_NEW_TOKENS = 64  # without --max-new-tokens; at most half the model's context (a prompt needs room)


def _parser() -> argparse.ArgumentParser:
    p = Parser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("prompts", nargs="*", metavar="PROMPT|FILE", type=utf8_text,
                   help="text to continue (one or more), or one .txt/.jsonl file of prompts (an argument naming an "
                        "existing file or folder is read as a path); none with --export alone")
    p.add_argument("--output", metavar="FILE",
                   help="write the continuations here (.txt: one a line, newlines escaped; .jsonl: with the "
                        "prompts and errors)")
    p.add_argument("--model", required=True, metavar="DIR",
                   help="mmkit export (mmkit fit ... export_dir) or transformers GPT-2 checkpoint directory")
    p.add_argument("--max-new-tokens", type=int, metavar="N",
                   help=f"tokens to generate at most ({DEFAULT_NEW_TOKENS}, at most half the model's context)")
    add_sampling_arguments(p)
    p.add_argument("--beam-size", type=beam_size(), metavar="B",
                   help=f"beam search with B beams (deterministic; 1 to {MAX_BEAM_SIZE}), as transformers' "
                        "generate(num_beams=B) (the model's generation_config.json num_beams, else 1)")
    add_beam_arguments(p)
    add_repetition_arguments(p, prompt_included=True)
    p.add_argument("--num-return-sequences", type=at_least(1, MAX_SAMPLES), default=1, metavar="N",
                   help="N continuations of each prompt, printed one after another, a blank line between (a .jsonl "
                        "output: \"texts\" lists): N samples, sample j from its own seed, or a beam search's N best, "
                        f"best first (N <= B); 1 to {MAX_SAMPLES}")
    p.add_argument("--stop", action="append", default=[], metavar="TEXT", type=utf8_text,
                   help="end the continuation before TEXT (repeatable)")
    p.add_argument("--batch-size", type=at_least(1), default=8, metavar="B",
                   help="prompts decoded together, with several prompts or a file (8)")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:N, mps; under torchrun, cuda is "
                   "each rank's own GPU: cuda:LOCAL_RANK)")
    p.add_argument("--quantize", default="none", choices=QUANTIZATIONS,
                   help="int8: int8 weights for every Linear and the output projection (CPU; faster, tokens may "
                        "differ from fp32: see mmkit bench text)")
    add_precision_argument(p)
    p.add_argument("--export", metavar="OUT",
                   help="save the model, tokenizer and its own decoding settings (a GPT-2 directory's generation "
                        "config) as an mmkit export in OUT, a new or empty folder (one that holds files is refused: "
                        "they would be overwritten)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Returns the exit code: 0 done (a file's bad lines are reported, not fatal), 2 a usage or input error (one
    line on stderr), 1 the output could not be written (nothing was) or no line of a file was continued (every one
    reported), 130 interrupted (Ctrl-C or SIGTERM: one line; the text so far stays printed, an --output is not
    written)."""
    return on_ranks(PROG, _parser, argv, _main, _left)


def _left(args: argparse.Namespace | None, ranks: Ranks) -> str:
    return nothing_written(args, ranks) if args is not None and args.output else "the text so far is printed above"


def _main(args: argparse.Namespace, ranks: Ranks) -> int:
    """Prompts given as arguments are printed as they are decoded (`_run`); a file of prompts, or prompts to write
    to --output, go through the ranks' batch run (`_run_rows`), as `mmkit translate`'s. Under torchrun several
    printed prompts are shared as a file's are and printed once, by the first rank, which alone continues (and
    streams) a single prompt."""
    if not args.prompts and not args.export:
        print_error(PROG, "give prompts or a .txt/.jsonl file of prompts (or --export OUT)")
        return 2
    try:
        printed = not args.output and _prompt_file(args.prompts) is None
    except ValueError:
        printed = False  # the batch run's setup reports it, once, on every rank alike
    if printed and ranks.multi:
        if len(args.prompts) > 1:
            return _run_rows(args, ranks)
        return _run(args) if ranks.first else 0  # one prompt, one process: the others wait for it at the end
    return _run(args) if printed else _run_rows(args, ranks)


def _given(args: argparse.Namespace) -> dict:
    """The decoding options given on the command line (None: not given)."""
    return dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                beam_size=args.beam_size, length_penalty=args.length_penalty, early_stopping=args.early_stopping,
                repetition_penalty=args.repetition_penalty, seed=args.seed,
                no_repeat_ngram_size=args.no_repeat_ngram_size, min_new_tokens=args.min_new_tokens)


def _check_options(args: argparse.Namespace) -> None:
    """A ValueError (or OSError) of one line for options given that cannot go together whatever the model's own
    (beams with a temperature, say), or an --export that cannot be written (a folder holding files, int8 weights),
    before the model loads."""
    from mmkit.core import GenerationOptions
    from mmkit.inference.generation_config import with_top_k_off

    GenerationOptions(**with_top_k_off({"max_new_tokens": DEFAULT_NEW_TOKENS,
                                        **{k: v for k, v in _given(args).items() if v is not None}}))
    check_export_option(args)


def _options(args: argparse.Namespace, generator: TextGenerator, say: bool = True) -> GenerationOptions:
    """The decoding options: those given over the model's own (`TextGenerator.default_options`: a transformers
    directory's generation config), max_new_tokens the default where not given, at most half the model's context;
    a ValueError for a bad combination; the model's settings taken said once, warnings for options the decoding
    leaves unused (`say`: on the first rank only)."""
    from mmkit.inference.text_generation import GPT_BEAM_ONLY

    given = _given(args)
    options = with_model_settings(generator.default_options(**given), generator.defaults_for(given), given,
                                  GPT_BEAM_ONLY, say)
    if args.num_return_sequences > 1 and not options.sampling and args.num_return_sequences > options.beam_size:
        raise ValueError(f"--num-return-sequences {args.num_return_sequences} needs sampling (--temperature, "
                         "--top-k or --top-p) or a beam search with as many beams (--beam-size): "
                         + ("greedy decoding gives the same continuation each time" if options.beam_size == 1 else
                            f"{options.beam_size} beams keep {options.beam_size} hypotheses"))
    if args.seed is not None and not options.sampling and say:
        log.warning("--seed %d is unused: %s decoding is deterministic (sample with --temperature, --top-k or "
                    "--top-p)", args.seed, "beam-search" if options.beam_size > 1 else "greedy")
    unused = beam_only_options(args) if options.beam_size == 1 else ""
    if unused and say:  # transformers' GenerationConfig.validate also flags them outside beam search
        log.warning("%s unused: %s has no beams to rank or stop (search with --beam-size B > 1)",
                    unused, "sampling" if options.sampling else "greedy decoding")
    return _fit_context(args, options, generator)


def _fit_context(args: argparse.Namespace, options: GenerationOptions, generator: TextGenerator) -> GenerationOptions:
    """Without --max-new-tokens, the model's own max_new_tokens (its generation config's), else the default at most
    half the model's context (a prompt needs room)."""
    if args.max_new_tokens is not None or "max_new_tokens" in generator.defaults:
        return options
    return dataclasses.replace(options, max_new_tokens=min(DEFAULT_NEW_TOKENS, max(1, generator.model.max_len // 2)))


def _length_named(args: argparse.Namespace) -> str:
    """How an error names the length in force: the option given, or the model's own (give the option instead)."""
    return ("--max-new-tokens" if args.max_new_tokens is not None
            else "the model's own max_new_tokens (--max-new-tokens N to choose another)")


def _run(args: argparse.Namespace) -> int:
    from mmkit.inference.precision import check_device
    from mmkit.inference.text_generation import load_text_generator

    try:
        check_device(args.device)  # an unknown or absent device is one line, not a CUDA traceback
        _check_options(args)
        generator = load_text_generator(args.model, args.device, args.quantize, args.precision)
        options = _options(args, generator)
        if args.export:
            log.info("saved an mmkit export in %s", generator.export(args.export))
        prompts = []  # bad prompts fail before output
        for n, text in enumerate(args.prompts, 1):
            try:
                prompts.append(generator.prepare_prompt(text, options.max_new_tokens))
            except ValueError as e:
                raise ValueError(f"prompt {n}: {e}" if len(args.prompts) > 1 else e) from None
    except (ValueError, OSError) as e:  # bad options, prompts, directories (WeightsError is a ValueError)
        print_error(PROG, e)
        return 2

    if not prompts:  # --export alone
        return 0
    echoes = []
    for n, (text, prompt) in enumerate(zip(args.prompts, prompts), 1):
        if prompt.note:  # the model reads the prompt's end only: echo that, not text it never saw
            log.warning("%s%s", f"prompt {n}: " if len(prompts) > 1 else "", prompt.note)
        echoes.append(_echo(generator, text, prompt))
    if len(prompts) > 1:  # decoded together: printed when done, each after its prompt's echo
        groups = generator.continuations(prompts, options, args.num_return_sequences, args.stop, args.batch_size)
        _show("\n".join(f"{echo}{text}\n" for echo, texts in zip(echoes, groups) for text in texts))
        return 0
    prompt, echo = prompts[0], echoes[0]
    _show(echo)
    if args.num_return_sequences > 1:  # decoded together: printed when done, each after the prompt's echo
        texts = generator.samples(prompt, options, args.num_return_sequences, args.stop)
        _show(texts[0] + "\n" + "".join(f"\n{echo}{text}\n" for text in texts[1:]))
        return 0
    try:
        generator.generate(prompt, options, args.stop, on_text=_show)
    finally:
        _show("\n")
    return 0


def _show(piece: str) -> None:
    sys.stdout.write(piece)
    sys.stdout.flush()


def _echo(generator: TextGenerator, text: str, prompt: PromptTokens) -> str:
    """The prompt as printed before its continuation: the end the model reads after "…" where it was cut."""
    return "…" + generator.tokenizer.decode(prompt.ids) if prompt.note else text


def _prompt_file(inputs: Sequence[str]) -> Path | None:
    """The .txt/.jsonl file of prompts when `inputs` is one, None when they are prompts (`mmkit translate`'s rule)."""
    from mmkit.cli.line_files import input_file

    return input_file(inputs, PROG, "prompt")


@dataclass
class _Plan:
    """A chunk of rows as one process decodes them: each row's prompt (None: an empty or bad row), its error,
    and the indices of the prompts in length-sorted batches."""

    prompts: list[PromptTokens | None]
    errors: list[str | None]
    batches: list[list[int]]

    @property
    def skipped(self) -> int:
        """Rows not decoded (empty or bad): done as soon as planned."""
        return sum(p is None for p in self.prompts)


@dataclass
class _Row:
    """One row's result, as printed or written."""

    prompt: str  # the row's text ("" for an unreadable row)
    echo: str  # printed before the continuation ("" for a bad row)
    texts: list[str]  # its continuations (--num-return-sequences; none for an empty or bad row)
    error: str | None = None

    @property
    def text(self) -> str:
        return self.texts[0] if self.texts else ""


def _run_rows(args: argparse.Namespace, ranks: Ranks) -> int:
    """A file's prompts (or the arguments, with --output), a chunk at a time, the ranks sharing one process's
    batches (`BatchShares`); the first rank prints or writes every row's continuation in order, the errors
    reported on stderr."""
    from mmkit.cli.progress import progress
    from mmkit.cli.line_files import iter_lines, write_rows
    from mmkit.inference.text_rows import chunks

    set_up = set_up_on_ranks(PROG, ranks, lambda: _setup(args, ranks))  # bad options, files, directories
    if set_up is None:
        return 2
    source, options, total, generator = set_up
    # the first rank saves the --export once every rank's set-up agreed (each checked the folder empty first)
    if args.export and not exported(PROG, ranks, lambda: generator.export(args.export)):
        return 2
    rows = iter_lines(source) if source else ((text, None) for text in args.prompts)
    label = "line" if source else "prompt"
    counts = [0, 0]  # rows, errors
    out = Path(args.output) if args.output else None
    with progress("generating", total, "prompt", enabled=ranks.first and total > 1) as advance:
        shares = BatchShares(ranks)

        def parts() -> Iterator[tuple[tuple[list, _Plan], Share]]:
            """Per chunk of rows (memory: one chunk, whatever the file's size): (the rows and their plan, this
            rank's continuations of them); every rank reads every row, plans one process's batches and decodes
            its share of them."""
            first_row = 0
            for chunk in chunks(rows, chars=lambda row: len(row[0])):
                plan = _plan(generator, chunk, options, args.batch_size, first_row, label)
                first_row += len(chunk)
                advance(plan.skipped)
                mine = shares.mine(plan.batches)
                texts: list[list[str]] = [[] for _ in chunk]
                for batch in mine:  # each batch one `continuations` batch: the very batches of one process
                    for i, found in zip(batch, generator.continuations([plan.prompts[i] for i in batch], options,
                                                                       args.num_return_sequences, args.stop,
                                                                       len(batch))):
                        texts[i] = found
                    advance(len(batch))
                yield (chunk, plan), Share.of(len(chunk), mine, texts)

        def continued(rounds: Iterator[tuple[tuple[list, _Plan], list[Share]]]) -> Iterator[_Row]:
            """(the first rank) Every row's continuation in order, errors reported."""
            for (chunk, plan), got in rounds:
                texts = merged(got, [[] for _ in chunk], advance)
                for (text, _), prompt, error, continuation in zip(chunk, plan.prompts, plan.errors, texts):
                    if error:
                        print(f"{PROG}: {error}", file=sys.stderr)
                    counts[0] += 1
                    counts[1] += bool(error)
                    echo = _echo(generator, text, prompt) if prompt is not None else ""
                    yield _Row(text, "" if error else echo, continuation, error)

        save = functools.partial(_write, n_best=args.num_return_sequences > 1)
        return ranks.to_first(parts(), lambda rounds: write_rows(PROG, out, continued(rounds), _print, save, counts,
                                                                 "continuations"))


def _setup(args: argparse.Namespace, ranks: Ranks) -> tuple[Path | None, GenerationOptions, int, TextGenerator]:
    """(the file of prompts or None for the arguments, the options, how many rows, the generator loaded on this
    rank's device); a ValueError or OSError of one line for a usage or input mistake, met before the model loads
    where it can be: an --output that is the input file or cannot be written, several continuations a .txt line."""
    from mmkit.cli.line_files import check_output_file, iter_lines
    from mmkit.inference.precision import check_device
    from mmkit.inference.text_generation import load_text_generator

    source = _prompt_file(args.prompts)
    if args.num_return_sequences > 1 and args.output and Path(args.output).suffix == ".txt":
        raise ValueError(f"--num-return-sequences {args.num_return_sequences}: a .txt output holds one continuation "
                         "a line; write a .jsonl (\"texts\" lists) or print them")
    _check_options(args)
    device = ranks.device(args.device)
    check_device(device)
    if args.output:
        check_output_file(args.output, source)
    total = sum(1 for _ in iter_lines(source)) if source else len(args.prompts)
    generator = load_text_generator(args.model, device, args.quantize, args.precision)
    options = _options(args, generator, ranks.first)
    if options.max_new_tokens >= generator.model.max_len:  # every prompt would be refused: one line, not N
        raise ValueError(f"{_length_named(args)} {options.max_new_tokens} leaves no room for a prompt in the "
                         f"model's context of {generator.model.max_len} tokens")
    return source, options, total, generator


def _plan(generator: TextGenerator, chunk: list[tuple[str, str | None]], options: GenerationOptions,
          batch_size: int, first_row: int, label: str) -> _Plan:
    """Each row's prompt as the model reads it (an error where it cannot: "{label} N: ..."; a prompt cut to the
    context is a warning) and the batches: length-sorted, `batch_size` each. Every rank makes the same plan.
    `generate_many` decodes each batch as it would among all the prompts."""
    prompts: list[PromptTokens | None] = []
    errors: list[str | None] = []
    for i, (text, problem) in enumerate(chunk):
        prompt = None
        if problem is None and text.strip():  # an empty row stays empty, no error: rows stay aligned
            try:
                prompt = generator.prepare_prompt(text, options.max_new_tokens)
            except ValueError as e:  # no token this model knows
                problem = f"{label} {first_row + i + 1}: {e}"
        if prompt is not None and prompt.note:
            log.warning("%s %d: %s", label, first_row + i + 1, prompt.note)
        prompts.append(prompt)
        errors.append(problem)
    order = sorted((i for i, p in enumerate(prompts) if p is not None), key=lambda i: len(prompts[i].ids))
    batches = [order[start: start + batch_size] for start in range(0, len(order), batch_size)]
    return _Plan(prompts, errors, batches)


def _print(rows: Iterator[_Row]) -> None:
    """As several prompts print: each continuation after its prompt, a blank line between (an empty or bad row:
    one empty continuation)."""
    k = 0
    for r in rows:
        for text in r.texts or [""]:
            _show(("\n" if k else "") + f"{r.echo}{text}\n")
            k += 1


def _write(out: Path, rows: Iterator[_Row], n_best: bool = False) -> None:
    """The continuations into `out`, whole or not at all: .txt one a line (`escaped`), .jsonl with the prompt and
    the error, and with `n_best` all of a row's continuations as "texts" (empty for an empty or bad row)."""
    from mmkit.inference.text_rows import atomic_path

    with atomic_path(out) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for r in rows:
            f.write((escaped(r.text) if out.suffix == ".txt" else json.dumps(
                {"prompt": r.prompt, "text": r.text, **({"texts": r.texts} if n_best else {}),
                 **({"error": r.error} if r.error else {})}, ensure_ascii=False)) + "\n")


# Where Python's str.splitlines breaks a line (the input's reader, bytes.splitlines, and editors: at \n and \r)
_LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
_LINE_ESCAPES = str.maketrans({c: c.encode("unicode_escape").decode("ascii") for c in "\\" + _LINE_BREAKS})


def escaped(text: str) -> str:
    """A continuation as one line of a .txt output: backslashes and line breaks written as Python string escapes
    (\\\\, \\n, \\r, \\x0c, \\u2028, ...: `_LINE_ESCAPES`). Continuations hold line breaks (a model writes
    paragraphs); written as they are, line N of the output would no longer answer line N of the input."""
    return text.translate(_LINE_ESCAPES)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    raise SystemExit(main())
