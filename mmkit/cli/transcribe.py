"""`mmkit transcribe`: speech to text (or English translation) with a Whisper checkpoint,
openai/whisper's command line (`whisper` CLI: --task, --language, --temperature ladder,
thresholds, --initial-prompt, -f txt/json/srt/vtt/tsv) over `mmkit.inference.Transcriber`, except that it decodes
greedily by default, for speed (openai's default is beam search, --beam-size 5), and cuts long audio into independent
windows batched across files unless --long-form sequential (openai's algorithm). Under torchrun (or any launcher
setting torch.distributed's environment) each rank transcribes a contiguous block of the files on its own
device and writes their outputs; rank 0 prints the transcripts in input order and the combined summary.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Callable, Sequence

import torch

from mmkit.cli.options import Parser, add_precision_argument, at_least, beam_size, finite, seed, thread_count
from mmkit.cli.progress import progress
from mmkit.inference.precision import check_device
from mmkit.inference.quantize import QUANTIZATIONS
from mmkit.cli.ranked import on_ranks
from mmkit.inference.ranks import Ranks
from mmkit.inference.subtitles import OUTPUT_FORMATS, SubtitleOptions, output_stems, write_outputs
from mmkit.inference.text_rows import check_output_dir
from mmkit.inference.transcriber import Transcriber
from mmkit.inference.transcript import DecodingOptions
from mmkit.errors import print_error

log = logging.getLogger(__name__)


def _optional(number: Callable[[str], float]) -> Callable[[str], float | None]:
    """An argparse type: 'none' or 'off' (the check disabled, None), else `number`'s value."""
    return lambda text: None if text.lower() in ("none", "off") else number(text)


def _boolean(text: str) -> bool:
    """An argparse type: openai's true/false (any case)."""
    if text.lower() not in ("true", "false"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return text.lower() == "true"


def _seconds_list(text: str) -> tuple[float, ...]:
    """An argparse type: openai's --clip_timestamps, comma-separated seconds ("" or "0": the whole audio)."""
    try:
        return tuple(float(t) for t in text.split(",")) if text.strip() else ()
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated seconds (start,end,start,...), got {text!r}")


BEAMS = beam_size()  # --beam-size and --best-of


def _parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="mmkit transcribe", description="Transcribe or translate audio files with a Whisper checkpoint.",
        epilog="Writes <output-dir>/<stem>.<ext> per input (each complete or absent) and prints the text. Files "
               "that cannot be read or decoded, or that no --clip-timestamps clip reaches, are reported and "
               "skipped. Exit code: 0 every readable file transcribed and written; 1 no file transcribed, or some "
               "outputs could not be written (reported, the other files go on); 2 a usage error; 130 interrupted "
               "(the files written so far are named).")
    p.add_argument("files", nargs="+", help="audio files (any format libsndfile reads; any rate, any channels)")
    p.add_argument("--model", required=True,
                   help="Hugging Face Whisper directory, mmkit checkpoint or CTranslate2 Whisper folder (model.bin, "
                        "as faster-whisper reads it), with the tokenizer files; or an openai-whisper .pt file "
                        "(tokenizer from the openai-whisper package)")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer directory or .tiktoken file to use instead of the checkpoint's")
    p.add_argument("--language", default=None, help="language code or name (default: detect per file)")
    p.add_argument("--task", choices=("transcribe", "translate"), default="transcribe")
    p.add_argument("--beam-size", type=BEAMS, default=1,
                   help="1 = greedy (default, for speed; at most 32). openai's whisper command defaults to 5 "
                        "(beam search, usually a lower WER); pass --beam-size 5 to match it")
    p.add_argument("--best-of", type=BEAMS, default=5, help="samples per window at temperature > 0 (at most 32)")
    p.add_argument("--temperature", type=float, nargs="+", default=[0.0, 0.2, 0.4, 0.6, 0.8, 1.0],
                   help="temperatures tried in order on failing windows (a single 0 disables the fallback)")
    # each threshold within the range of what it is compared with: a gzip ratio (> 0), a mean log-probability
    # (<= 0), a probability; outside it the check holds for every window (or none), never what was meant
    p.add_argument("--compression-ratio-threshold", type=_optional(finite(0)), default=2.4,
                   help="retry windows whose text compresses better than this ('none': never)")
    p.add_argument("--logprob-threshold", type=_optional(finite(maximum=0)), default=-1.0,
                   help="retry windows whose mean token log-probability is lower, <= 0 ('none': never)")
    p.add_argument("--no-speech-threshold", type=_optional(finite(0, 1)), default=0.6,
                   help="<|nospeech|> probability above which an unlikely window counts as silence ('none': never)")
    p.add_argument("--initial-prompt", default=None, metavar="TEXT",
                   help="text the decoder reads before every 30 s window (openai's --initial_prompt: spelling of "
                        "names and jargon, punctuation style). Windows are decoded independently, so it applies to "
                        "each of them, as openai's --carry_initial_prompt True --condition_on_previous_text False; "
                        "with --long-form sequential, before the first window only, as openai's")
    p.add_argument("--long-form", choices=("windows", "sequential"), default="windows",
                   help="how audio longer than 30 s is decoded. windows (default): fixed 30 s windows decoded "
                        "independently and batched across files, fast; a word crossing a window's end may be cut. "
                        "sequential: openai's transcribe(), exactly: one window at a time per file, each starting at "
                        "the previous one's last timestamp, prompted with the previous text; slower (a file's "
                        "windows one after another; the current windows of --batch-size files are decoded together, "
                        "each as it decodes alone); "
                        "each file is held in a temporary file in $TMPDIR (4 bytes a sample, 230 MB per hour of "
                        "audio; on disk unless $TMPDIR is a tmpfs) and its features, openai's, computed window by "
                        "window: memory bounded whatever its length")
    p.add_argument("--condition-on-previous-text", type=_boolean, default=None, metavar="{true,false}",
                   help="with --long-form sequential: prompt each window with the previous text (default true, as "
                        "openai's; false: less prone to repetition loops). windows never are: true is refused")
    p.add_argument("--word-timestamps", action="store_true",
                   help="each segment's words with their start, end and probability in the json output, srt and "
                        "vtt cut by them (openai's "
                        "--word_timestamps True: cross-attention alignment; the words also move segment boundaries, "
                        "as openai's, and with --long-form sequential where the next window starts)")
    p.add_argument("--prepend-punctuations", default=DecodingOptions.prepend_punctuations, metavar="MARKS",
                   help="with --word-timestamps: marks joined to the next word (default: openai's %(default)s)")
    p.add_argument("--append-punctuations", default=DecodingOptions.append_punctuations, metavar="MARKS",
                   help="with --word-timestamps: marks joined to the previous word (default: openai's %(default)s)")
    p.add_argument("--clip-timestamps", type=_seconds_list, default=(), metavar="START,END,...",
                   help="with --long-form sequential: transcribe these spans only, in seconds (openai's "
                        "--clip_timestamps; the last end defaults to the audio's end; default, or 0: all of it). "
                        "Clips starting at or past a file's end are named in a warning; a file none reaches fails")
    p.add_argument("--hallucination-silence-threshold", type=_optional(finite(0)), default=None, metavar="SECONDS",
                   help="with --word-timestamps: skip silences longer than this around a likely hallucination and "
                        "decode again after them (openai's option; default: off)")
    p.add_argument("--no-repetition-guard", action="store_true", help="let repetitive windows run to the limit")
    p.add_argument("--without-timestamps", action="store_true", help="one segment per 30 s window")
    p.add_argument("--max-new-tokens", type=at_least(1), default=None, help="tokens per window (default 224)")
    p.add_argument("--output-format", "-f", nargs="+", default=["txt"], choices=OUTPUT_FORMATS + ("all",))
    # openai's subtitle options, with its rules (`SubtitleOptions`); srt and vtt only, as openai's
    p.add_argument("--highlight-words", action="store_true",
                   help="with --word-timestamps: in srt and vtt, underline each word while it is spoken (<u>)")
    p.add_argument("--max-line-width", type=at_least(1), default=None, metavar="N",
                   help="with --word-timestamps: srt and vtt lines of at most N characters, broken between words")
    p.add_argument("--max-line-count", type=at_least(1), default=None, metavar="N",
                   help="with --max-line-width: at most N lines per subtitle, which then no longer follows the "
                        "segments (a new one also after a pause over 3 s)")
    p.add_argument("--max-words-per-line", type=at_least(1), default=None, metavar="N",
                   help="with --word-timestamps: at most N words per subtitle (no effect with --max-line-width "
                        "and --max-line-count)")
    p.add_argument("--output-dir", "-o", default=".", help="where to write <stem>.<ext> (default: .)")
    p.add_argument("--batch-size", type=at_least(1), default=8,
                   help="30 s windows per encoder/decoder batch (--long-form sequential: windows of that many "
                        "files, one window per file)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="torch device (under torchrun, cuda is each rank's own GPU: cuda:LOCAL_RANK)")
    p.add_argument("--threads", type=thread_count(), default=None, help="torch CPU threads (default: torch's)")
    add_precision_argument(p)
    p.add_argument("--quantize", default="none", choices=QUANTIZATIONS,
                   help="int8: int8 Linear layers (activations scaled per row) for the decoder, its vocabulary "
                        "projection and the encoder's qkv/fc1 (CPU only; WER against fp32 in the README)")
    p.add_argument("--audio-context", type=float, default=None, metavar="SECONDS",
                   help="speed over exactness on short audio (whisper.cpp's audio_ctx): encode a window holding d "
                        "seconds over max(SECONDS, 2·d) seconds instead of 30 (default: always 30 s, exact); "
                        "WER per setting in the README")
    p.add_argument("--seed", type=seed, default=0, help="sampling seed for temperature fallback, 0 to 2**64 - 1")
    p.add_argument("--quiet", action="store_true", help="do not print the transcripts")
    return p


def _options(args: argparse.Namespace) -> DecodingOptions:
    return DecodingOptions(
        task=args.task, language=args.language, without_timestamps=args.without_timestamps,
        beam_size=args.beam_size, best_of=args.best_of, temperatures=tuple(args.temperature),
        compression_ratio_threshold=args.compression_ratio_threshold, logprob_threshold=args.logprob_threshold,
        no_speech_threshold=args.no_speech_threshold, max_new_tokens=args.max_new_tokens,
        repetition_guard=not args.no_repetition_guard, seed=args.seed, audio_context=args.audio_context,
        initial_prompt=args.initial_prompt, long_form=args.long_form,
        condition_on_previous_text=args.condition_on_previous_text, word_timestamps=args.word_timestamps,
        prepend_punctuations=args.prepend_punctuations, append_punctuations=args.append_punctuations,
        clip_timestamps=args.clip_timestamps, hallucination_silence_threshold=args.hallucination_silence_threshold)


def _layout(args: argparse.Namespace) -> SubtitleOptions:
    return SubtitleOptions(args.highlight_words, args.max_line_width, args.max_line_count, args.max_words_per_line)


def _layout_problems(args: argparse.Namespace) -> tuple[str | None, list[str]]:
    """openai's rules for its subtitle options: (the usage error or None, the warnings). Without
    --word-timestamps they are a usage error (openai's parser error); an option without effect is a warning, as
    openai's, in one line. openai also warns that --max-words-per-line has none with --max-line-width alone: it
    has one there (subtitles of at most N words), so that is not warned of."""
    given = [f"--{name.replace('_', '-')}" for name in ("highlight_words", "max_line_width", "max_line_count",
                                                         "max_words_per_line") if getattr(args, name)]
    if given and not args.word_timestamps:
        return f"{' and '.join(given)} {'needs' if len(given) == 1 else 'need'} --word-timestamps", []
    warnings = []
    if args.max_line_count and not args.max_line_width:
        warnings.append("--max-line-count has no effect without --max-line-width")
    if args.max_words_per_line and args.max_line_width and args.max_line_count:
        warnings.append("--max-words-per-line has no effect with --max-line-width and --max-line-count")
    return None, warnings


def _usage_error(args: argparse.Namespace, device: str) -> str | None:
    """What is wrong with the arguments on their own (beyond argparse's types), checked before the model
    is loaded."""
    try:
        check_device(device)
        _options(args)
        check_output_dir(args.output_dir)
    except (ValueError, OSError) as e:
        return str(e)
    return _layout_problems(args)[0]


def main(argv: Sequence[str] | None = None) -> int:
    """`mmkit transcribe FILES... --model DIR|FILE.pt [options]`: exit 0 if every readable file was
    transcribed and written (unreadable ones are listed), 1 if none was or an output could not be
    written, 2 for usage errors, 130 when interrupted. Every rank of a launcher returns the same code."""
    return on_ranks("mmkit transcribe", _parser, argv, _main)


def _main(args: argparse.Namespace, ranks: Ranks) -> int:
    device = ranks.device(args.device)
    problem = ranks.first_problem(_usage_error(args, device))
    if problem:
        if ranks.first:
            print_error("mmkit transcribe", problem)
        return 2
    for warning in _layout_problems(args)[1] if ranks.first else ():
        log.warning(warning)
    if args.threads:
        torch.set_num_threads(args.threads)
    transcriber, problem = None, None
    try:
        transcriber = Transcriber.from_checkpoint(args.model, _options(args), args.batch_size, device,
                                                  args.tokenizer, args.precision, args.quantize)
    except ValueError as e:  # WeightsError, TokenizerError and bad options are ValueErrors
        problem = str(e)
    except KeyboardInterrupt:
        sys.stderr.write("mmkit transcribe: interrupted while loading the model; nothing was written\n")
        return 130
    problem = ranks.first_problem(problem)
    if problem:
        if ranks.first:
            print_error("mmkit transcribe", problem)
        return 2
    written: list[str] = []
    share = ranks.block(len(args.files))
    try:
        failed, unwritten, printed = _run(args, transcriber, written, share, ranks.first)
    except KeyboardInterrupt:
        done = f"the outputs of {len(written)} of {len(share)} files are in {args.output_dir}"
        names = f" ({', '.join(written[:10])}{', ...' if len(written) > 10 else ''})" if written else ""
        sys.stderr.write(f"mmkit transcribe: interrupted; {done}{names}; no partial file was left\n")
        return 130
    if ranks.multi:  # every rank's outcome, in input order (the blocks are); the first rank prints the others'
        outcomes = ranks.all_gather((failed, unwritten, printed))
        failed, unwritten = ([f for outcome in outcomes for f in outcome[k]] for k in (0, 1))
        if ranks.first:
            for lines in (outcome[2] for outcome in outcomes[1:]):
                sys.stdout.write("".join(lines))
            sys.stdout.flush()
    ok = len(args.files) - len(failed) - len(unwritten)
    if (failed or unwritten) and ranks.first:
        log.warning("transcribed and wrote %d of %d files; failed: %s", ok, len(args.files),
                    ", ".join(failed + unwritten))
    return 0 if ok and not unwritten else 1


def _run(args: argparse.Namespace, transcriber: Transcriber, written: list[str], share: range | None = None,
         show: bool = True) -> tuple[list[str], list[str], list[str]]:
    """Transcribe and write the files of `share` (default: all); returns (files that failed, files whose
    outputs could not be written, the transcript lines not printed). `written` collects the files whose
    outputs are all in place, as they are. `show` False: the transcripts are kept, not printed (a rank
    other than the first hands them to it), and no progress bar."""
    formats = list(OUTPUT_FORMATS) if "all" in args.output_format else list(dict.fromkeys(args.output_format))
    out_dir = Path(args.output_dir).expanduser()
    share = range(len(args.files)) if share is None else share
    files, stems = args.files[share.start:share.stop], output_stems(args.files)[share.start:share.stop]
    failed, unwritten, kept = [], [], []
    # one bar for runs over several files: a single file's transcript is the whole output
    with progress("transcribing", len(files), unit="file", enabled=show and len(files) > 1) as advance:
        for stem, t in zip(stems, transcriber.transcribe_files(files)):
            if t.error is not None:
                failed.append(t.path)
                log.error("%s: %s", t.path, t.error)
            else:
                if args.language is None and transcriber.tokenizer.is_multilingual:
                    log.info("%s: detected language %s", t.path, t.language)
                try:
                    write_outputs(t, stem, out_dir, formats, _layout(args))
                    written.append(t.path)
                except OSError as e:  # this file's outputs are lost, not the batch's
                    unwritten.append(t.path)
                    log.error("%s: %s", t.path, e)
                if not args.quiet:
                    line = f"{t.path}: {t.text}\n" if len(args.files) > 1 else t.text + "\n"
                    if show:
                        sys.stdout.write(line)
                        sys.stdout.flush()
                    else:
                        kept.append(line)
            advance()
    return failed, unwritten, kept


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    raise SystemExit(main())
