"""`mmkit translate TEXT... --model DIR` or `mmkit translate FILE --model DIR --output OUT`:
translate with an mmkit Seq2Seq/T5 export, a MarianMT directory or a T5 directory (give T5
its task prefix: --prefix "translate English to German: "). FILE holds one sentence a line
(.txt) or JSON objects with a "text" field (.jsonl); line N of the output answers line N of
the input, empty lines stay empty, unreadable lines are reported and left empty.
`--export OUT` saves the loaded model (an imported MarianMT or T5, say) as an mmkit export.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

if TYPE_CHECKING:
    from mmkit.inference.translator import Translation

log = logging.getLogger("mmkit")


def _parser() -> argparse.ArgumentParser:
    from mmkit.cli.options import add_precision_argument
    from mmkit.inference.quantize import QUANTIZATIONS

    p = argparse.ArgumentParser(prog="mmkit translate", description=__doc__.split("\n\n")[0])
    p.add_argument("inputs", nargs="*", metavar="TEXT|FILE", help="sentences, or one .txt/.jsonl file")
    p.add_argument("--model", required=True, metavar="DIR", help="mmkit export, MarianMT or T5 directory")
    p.add_argument("--output", metavar="FILE", help="write here (.txt: one line each; .jsonl: with errors)")
    p.add_argument("--beam-size", type=int, default=1, metavar="K", help="beam search with K beams (1: greedy)")
    p.add_argument("--max-length", type=int, metavar="N",
                   help="tokens to generate at most (default: 2 x source tokens + 10)")
    p.add_argument("--length-penalty", type=float, default=1.0, metavar="A",
                   help="beam score = sum log p / length ** A (1.0)")
    p.add_argument("--batch-size", type=int, default=16, metavar="B", help="sentences per batch (16)")
    p.add_argument("--prefix", metavar="TEXT",
                   help='text put before every source (T5: "translate English to German: ")')
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
    p.add_argument("--export", metavar="OUT",
                   help="save the model, tokenizer, prefix and decoding settings as an mmkit export in OUT")
    p.add_argument("--quantize", default="none", choices=QUANTIZATIONS,
                   help="int8: int8 Linear layers and vocabulary projection, CPU only (none: fp32, exact)")
    add_precision_argument(p)
    return p


def iter_lines(path: Path) -> Iterator[tuple[str, str | None]]:
    """(source, problem) per line of a .txt (one a line) or .jsonl ("text" field) file, its lines as
    `text_rows.iter_lines` reads them (memory: one line, at most 1 MiB); problem names a line that is not
    UTF-8 or not a JSON object with a "text" string (its source is ""), else None."""
    from mmkit.inference.text_rows import MAX_LINE_BYTES, decode_line
    from mmkit.inference.text_rows import iter_lines as file_lines

    for line in file_lines(path):
        n = line.number
        try:
            text = decode_line(line)
        except UnicodeDecodeError as e:
            yield "", f"line {n}: not UTF-8 (byte 0x{line.data[e.start]:02x} at column {e.start + 1})"
            continue
        if path.suffix == ".jsonl" and line.cut:
            yield "", f"line {n}: a JSON record longer than {MAX_LINE_BYTES >> 20} MiB"
            continue
        if path.suffix == ".jsonl" and text.strip():
            try:
                obj = json.loads(text)
                text = obj["text"] if isinstance(obj, dict) and isinstance(obj.get("text"), str) else None
            except json.JSONDecodeError:
                text = None
            if text is None:
                yield "", f'line {n}: not a JSON object with a "text" string'
                continue
        yield text, None


def main(argv: Sequence[str] | None = None) -> int:
    """Returns the exit code: 0 done (bad rows are reported, not fatal), 2 a usage or input error."""
    args = _parser().parse_args(argv)
    from mmkit.cli.progress import progress
    from mmkit.inference.text_rows import atomic_path, chunks
    from mmkit.inference.translator import TranslationOptions, TranslatorError, load_translator

    if not args.inputs and not args.export:
        print("mmkit translate: give sentences or a .txt/.jsonl file to translate (or --export OUT)", file=sys.stderr)
        return 2
    single = Path(args.inputs[0]) if len(args.inputs) == 1 else None
    as_file = single is not None and single.is_file()
    try:
        if single is not None and not as_file and single.suffix in (".txt", ".jsonl"):
            raise TranslatorError(f"{single}: no such file")
        options = TranslationOptions(beam_size=args.beam_size, max_new_tokens=args.max_length,
                                     length_penalty=args.length_penalty, batch_size=args.batch_size)
        if args.output and Path(args.output).suffix not in (".txt", ".jsonl"):
            raise TranslatorError(f"--output {args.output}: use a .txt or .jsonl file")
        total = sum(1 for _ in iter_lines(single)) if as_file else len(args.inputs)
        translator = load_translator(args.model, args.prefix, args.device, args.quantize, args.precision)
        if args.export:
            log.info("saved an mmkit export in %s", translator.export(args.export))
    except (ValueError, OSError) as e:  # bad options, files, directories (WeightsError is a ValueError)
        print(f"mmkit translate: {e}", file=sys.stderr)
        return 2
    rows = iter_lines(single) if as_file else ((text, None) for text in args.inputs)
    counts = [0, 0]  # translations, errors

    def translated(advance: Callable[[int], None]) -> Iterator[Translation]:
        """The sources a chunk at a time (memory: one chunk, whatever the file's size), errors reported."""
        for chunk in chunks(rows, chars=lambda row: len(row[0])):
            results = translator.translate([text for text, _ in chunk], options, on_batch=advance, first_row=counts[0])
            for r, (_, problem) in zip(results, chunk):
                r.error = problem or r.error
                if r.error:
                    print(f"mmkit translate: {r.error}", file=sys.stderr)
                counts[0] += 1
                counts[1] += bool(r.error)
                yield r

    with progress("translating", total, "sent", enabled=total > 1) as advance:
        if args.output:
            out = Path(args.output)
            with atomic_path(out) as tmp, open(tmp, "w", encoding="utf-8") as f:
                for r in translated(advance):
                    f.write((r.text if out.suffix == ".txt" else json.dumps(
                        {"source": r.source, "translation": r.text, **({"error": r.error} if r.error else {})},
                        ensure_ascii=False)) + "\n")
            log.info("wrote %d translations (%d with errors) to %s", counts[0], counts[1], out)
        else:
            for r in translated(advance):
                print(r.text)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    raise SystemExit(main())
