"""`mmkit translate TEXT... --model DIR` or `mmkit translate FILE --model DIR --output OUT`:
translate with an mmkit Seq2Seq/T5 export, a MarianMT directory or a T5 directory (give T5
its task prefix: --prefix "translate English to German: "). FILE holds one sentence a line
(.txt) or JSON objects with a "text" field (.jsonl); line N of the output answers line N of
the input, empty lines stay empty, unreadable lines (not UTF-8, NUL bytes, nothing visible but
control or invisible characters) are reported and left empty. An argument that names an existing
file or folder is read as a path: one .txt/.jsonl file at a time, never several files or another kind.
`--export OUT` saves the loaded model (an imported MarianMT or T5, say) as an mmkit export in OUT, a new
or empty folder: one that holds files (another model, say) is refused, not overwritten.
`--temperature T` (or --top-k / --top-p) samples translations instead (back-translation, varied paraphrases):
with `--seed S`, line N is drawn from its own seed, so the output does not depend on --batch-size or the ranks.
`--num-return-sequences N` gives N translations of each source (a beam search's N best, or N samples): printed
as Moses n-best lines, "I ||| TEXT ||| SCORE" with I the source's 0-based index, or written to a .jsonl output
as "translations" and "scores" lists beside the first ("translation"); a .txt output holds one a line: refused.

Under torchrun (or any launcher setting torch.distributed's environment) the ranks share the work as in
`mmkit embed`: each reads every line (or sentence argument) and plans one process's length-sorted batches,
translates every world_size-th batch and hands its translations to rank 0, which writes the output (or prints
the translations): byte for byte one process's.
"""
from __future__ import annotations

import argparse
import functools
import json
import logging
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

from mmkit.cli.line_files import check_output_file, checked_line, input_file, iter_lines, write_rows
from mmkit.cli.ranked import check_export_option, exported, on_ranks, set_up_on_ranks
from mmkit.inference.ranks import BatchShares, Ranks, Share, merged

if TYPE_CHECKING:
    from mmkit.inference.translator import Translation, TranslationOptions, TranslationPlan, Translator

log = logging.getLogger("mmkit")
PROG = "mmkit translate"


def _parser() -> argparse.ArgumentParser:
    from mmkit.cli.options import (
        MAX_BEAM_SIZE, Parser, add_beam_arguments, add_precision_argument, add_repetition_arguments,
        add_sampling_arguments, at_least, beam_size, finite, utf8_text,
    )
    from mmkit.inference.quantize import QUANTIZATIONS
    from mmkit.limits import MAX_SAMPLES

    p = Parser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("inputs", nargs="*", metavar="TEXT|FILE", type=utf8_text,
                   help="sentences, or one .txt/.jsonl file (an argument naming an existing file or folder is "
                        "read as a path, so several files, another kind of file, a folder or - are refused)")
    p.add_argument("--model", required=True, metavar="DIR", help="mmkit export, MarianMT or T5 directory")
    p.add_argument("--output", metavar="FILE", help="write here (.txt: one line each; .jsonl: with errors)")
    p.add_argument("--beam-size", type=beam_size(), metavar="K",
                   help=f"beam search with K beams (1: greedy, or sampling where --temperature or the model "
                        f"samples; at most {MAX_BEAM_SIZE}; default: the model's generation_config.json num_beams, "
                        "else 1)")
    p.add_argument("--max-length", type=at_least(1), metavar="N",
                   help="tokens to generate at most (default: 2 x source tokens + 10)")
    # The score divides by length ** A: |A| <= 10 spans every useful setting (transformers' and Marian's
    # are 0 to 2) and keeps length ** A finite; a huge A overflows, nan/inf rank beams arbitrarily.
    add_beam_arguments(p)
    add_repetition_arguments(p)  # as transformers' generate(repetition_penalty=...), ...
    add_sampling_arguments(p)  # each line from its own seed (TranslationOptions)
    p.add_argument("--encoder-repetition-penalty", type=finite(above=0), metavar="R",
                   help="> 1 favours the source's tokens, < 1 avoids them (transformers' hallucination penalty for "
                        "input-grounded text, T5's summaries; the model's, else 1 = off)")
    p.add_argument("--encoder-no-repeat-ngram-size", type=at_least(0), metavar="N",
                   help="never copy an n-gram of N source tokens (the model's, else 0 = off)")
    p.add_argument("--num-return-sequences", type=at_least(1, MAX_SAMPLES), metavar="N",
                   help="N translations of each source: a beam search's N best (N <= the beams) or N samples; printed "
                        "as 'I ||| TEXT ||| SCORE' lines (Moses n-best), in a .jsonl output as lists (default 1)")
    p.add_argument("--batch-size", type=at_least(1), default=16, metavar="B", help="sentences per batch (16)")
    p.add_argument("--prefix", metavar="TEXT", type=utf8_text,
                   help='text put before every source (T5: "translate English to German: ")')
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:N, mps; under torchrun, cuda is "
                   "each rank's own GPU: cuda:LOCAL_RANK)")
    p.add_argument("--export", metavar="OUT",
                   help="save the model, tokenizer, prefix and decoding settings as an mmkit export in OUT, a new "
                        "or empty folder (one that holds files is refused: they would be overwritten)")
    p.add_argument("--quantize", default="none", choices=QUANTIZATIONS,
                   help="int8: int8 Linear layers and vocabulary projection, CPU only (none: fp32, exact)")
    add_precision_argument(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Returns the exit code: 0 done (bad rows are reported, not fatal), 2 a usage or input error, 1 the
    output could not be written (nothing was), or no row was translated (every one reported)."""
    return on_ranks(PROG, _parser, argv, _main)


def _main(args: argparse.Namespace, ranks: Ranks) -> int:
    from mmkit.cli.progress import progress
    from mmkit.inference.text_rows import chunks

    set_up = set_up_on_ranks(PROG, ranks, lambda: _setup(args, ranks))  # bad options, files, directories
    if set_up is None:
        return 2
    source, options, total, translator = set_up
    # the first rank saves the --export once every rank's set-up agreed (each checked the folder empty first)
    if args.export and not exported(PROG, ranks, lambda: translator.export(args.export)):
        return 2
    rows = iter_lines(source) if source else (checked_line(text, n) for n, text in enumerate(args.inputs, 1))
    counts = [0, 0]  # translations, errors
    out = Path(args.output) if args.output else None
    with progress("translating", total, "sent", enabled=ranks.first and total > 1) as advance:
        shares = BatchShares(ranks)

        def parts() -> Iterator[tuple[tuple[list, TranslationPlan], Share]]:
            """Per chunk of rows (memory: one chunk, whatever the file's size): (the rows and their plan, this
            rank's translations of them); every rank reads every row, plans one process's batches and
            translates its share of them (`BatchShares`); the sentences given as arguments likewise."""
            first_row = 0
            for chunk in chunks(rows, chars=lambda row: len(row[0])):
                plan = translator.plan([text for text, _ in chunk], options, first_row)
                first_row += len(chunk)
                advance(plan.skipped)
                mine = shares.mine(plan.batches)
                yield (chunk, plan), Share.of(len(chunk), mine, translator.translate_batches(plan, mine, options,
                                                                                             advance))

        def translated(rounds: Iterator[tuple[tuple[list, TranslationPlan], list[Share]]]) -> Iterator[Translation]:
            """(the first rank) Every row's translation in order, errors reported."""
            for (chunk, plan), got in rounds:
                for r, (_, problem) in zip(merged(got, plan.results, advance), chunk):
                    r.error = problem or r.error
                    if r.error:
                        print(f"{PROG}: {r.error}", file=sys.stderr)
                    counts[0] += 1
                    counts[1] += bool(r.error)
                    yield r

        n_best = options.num_return_sequences > 1
        show, save = (_print_n_best, functools.partial(_write, n_best=True)) if n_best else (_print, _write)
        return ranks.to_first(parts(), lambda rounds: write_rows(PROG, out, translated(rounds), show, save, counts,
                                                                 "translations"))


def _setup(args: argparse.Namespace, ranks: Ranks) -> tuple[Path | None, TranslationOptions, int, Translator]:
    """(the file to translate or None for sentences, the options, how many rows, the translator loaded on this
    rank's device); a ValueError or OSError of one line for a usage or input mistake, met before the model
    loads where it can be: an --output that is the input file, an --export folder that holds files."""
    from mmkit.cli.options import beam_only_options, with_model_settings
    from mmkit.inference.precision import check_device
    from mmkit.inference.generation_config import with_top_k_off
    from mmkit.inference.translator import BEAM_ONLY, TranslationOptions, TranslatorError, load_translator

    if not args.inputs and not args.export:
        raise ValueError("give sentences or a .txt/.jsonl file to translate (or --export OUT)")
    source = input_file(args.inputs, PROG, "sentence")
    given = dict(beam_size=args.beam_size, max_new_tokens=args.max_length, length_penalty=args.length_penalty,
                 early_stopping=args.early_stopping, batch_size=args.batch_size,
                 repetition_penalty=args.repetition_penalty, no_repeat_ngram_size=args.no_repeat_ngram_size,
                 min_new_tokens=args.min_new_tokens, temperature=args.temperature, top_k=args.top_k,
                 top_p=args.top_p, seed=args.seed, num_return_sequences=args.num_return_sequences,
                 encoder_repetition_penalty=args.encoder_repetition_penalty,
                 encoder_no_repeat_ngram_size=args.encoder_no_repeat_ngram_size)
    # refused before the model loads; the translations' count is checked once the beams are known (the model's own)
    TranslationOptions(**with_top_k_off({k: v for k, v in given.items()
                                         if v is not None and k != "num_return_sequences"}))
    if (args.num_return_sequences or 1) > 1 and args.output and Path(args.output).suffix == ".txt":
        raise ValueError(f"--num-return-sequences {args.num_return_sequences}: a .txt output holds one translation "
                         "a line; write a .jsonl (\"translations\" lists) or print the n-best lines")
    device = ranks.device(args.device)
    check_device(device)
    if args.output:
        check_output_file(args.output, source)
    check_export_option(args, TranslatorError)
    total = sum(1 for _ in iter_lines(source)) if source else len(args.inputs)
    translator = load_translator(args.model, args.prefix, device, args.quantize, args.precision)
    options = with_model_settings(translator.default_options(**given), translator.defaults_for(given), given,
                                  BEAM_ONLY, ranks.first)
    # the beam count is known only now: --beam-size, else the model's generation_config.json num_beams
    unused = beam_only_options(args) if options.beam_size == 1 else ""
    if unused and ranks.first:
        log.warning("%s unused: %s has no beams to rank or stop (search with --beam-size K > 1)",
                    unused, "sampling" if options.sampling else "greedy decoding")
    if args.seed is not None and not options.sampling and ranks.first:
        log.warning("--seed %d is unused: %s decoding is deterministic (sample with --temperature, --top-k or "
                    "--top-p)", args.seed, "beam-search" if options.beam_size > 1 else "greedy")
    return source, options, total, translator


def _print(translations: Iterator[Translation]) -> None:
    for r in translations:
        print(r.text)


def _print_n_best(translations: Iterator[Translation]) -> None:
    """Moses' n-best list: "I ||| TEXT ||| SCORE" for each translation of source I (0-based), best first; a source
    not translated (empty, or an error) has one line with its empty text and score nan."""
    from mmkit.inference.translator import Candidate

    for i, r in enumerate(translations):
        for c in r.candidates or [Candidate(r.text, [])]:
            print(f"{i} ||| {c.text} ||| {c.score:.6g}")


def _write(out: Path, translations: Iterator[Translation], n_best: bool = False) -> None:
    """The translations into `out`, whole or not at all: .txt one a line, .jsonl with source and error, and with
    `n_best` every translation of a source and its score ("translations", "scores": empty for one not translated;
    a score that is not finite, null)."""
    from mmkit.inference.text_rows import atomic_path

    with atomic_path(out) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for r in translations:
            lists = {"translations": [c.text for c in r.candidates],
                      "scores": [c.score if math.isfinite(c.score) else None for c in r.candidates]}
            f.write((r.text if out.suffix == ".txt" else json.dumps(
                {"source": r.source, "translation": r.text, **(lists if n_best else {}),
                 **({"error": r.error} if r.error else {})}, ensure_ascii=False)) + "\n")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    raise SystemExit(main())
