"""`mmkit transcribe` (fp32, `--precision bf16` and `--quantize int8`) against transformers' Whisper `generate` and
faster-whisper (CTranslate2, int8 and float32 compute types, no VAD): whole processes (start-up, model
loading, feature extraction, encoder, decoder) on the same checkpoint and the same audio files,
greedy (or `--beam-size N` on every side), without timestamps, with the same token limit and no fallback, so
that both decode the same tokens. `--repetition-guard` keeps mmkit's guard on in that greedy mode (cuts only
windows that loop, which `--audio-context` needs); `--decoding default` instead leaves each tool's fallback and
thresholds on. Both compare by WER: with `--transcripts`, the report also names, per reference, the
fastest mmkit path whose WER is no higher, and the ratio at that equal-or-lower WER. The reference
script batches its `generate` calls with the same batch size as mmkit (and, with
`--hf-batch-sizes 8 1`, also file by file, the model cards' usage). Rounds alternate
the order of the processes; the report gives each one's wall times, whether the tokens are
identical, and the ratio reference / mmkit fp32 (the tokens compared; > 1: mmkit is faster), then each mmkit
path against each reference; without `--transcripts` a faster path is named only if it decoded fp32's tokens.
Never asserted on.

Without `--model`, a random-initialised whisper-tiny-sized checkpoint (d_model 384, 4+4 layers,
the real 51,865-token layout from a self-made tokenizer) is written to a temporary directory: its
timings are those of whisper-tiny, its "transcripts" are noise.

    mmkit bench transcribe --num-files 8 --max-new-tokens 96 --batch-size 8
    mmkit bench transcribe --device cuda --model whisper-base/ --audio clips/*.wav --batch-size 16
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

from mmkit.cli.bench import StepFailed
from mmkit.cli.bench.common import add_precision_option, bench_precisions, bench_quantize, output_file, write_json
# the toy checkpoint and audio writers live in speech_inputs.py; re-exported here for the tests and users
from mmkit.cli.bench.speech_inputs import (  # noqa: F401
    SAMPLE_RATE, check_audio_files, read_transcripts, synth_speechlike, write_audio_files, write_toy_checkpoint,
)
from mmkit.cli.bench.speech_references import (
    FW_ALL_COMPUTE_TYPES, FW_SCRIPT, HF_SCRIPT, IMPORT_ONLY, fw_compute_types, hf_tokens,
)
from mmkit.cli.options import Parser, at_least, path_text, thread_count
from mmkit.inference.precision import check_device
from mmkit.inference.transcript import DecodingOptions

log = logging.getLogger(__name__)

TINY = dict(d_model=384, encoder_layers=4, decoder_layers=4, heads=6)  # whisper-tiny's dimensions

def _run(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        log.debug("%s", proc.stderr[-3000:])
        raise StepFailed(cmd, proc.returncode, proc.stderr)
    return seconds


def _mmkit_tokens(out_dir: Path, files: Sequence[Path]) -> dict[str, list[int]]:
    from mmkit.inference.subtitles import output_stems

    tokens = {}
    for f, stem in zip(files, output_stems(files)):  # as `mmkit transcribe` names them: x/a.wav, y/a.wav -> a, a-2
        doc = json.loads((out_dir / f"{stem}.json").read_text())
        tokens[str(f)] = [t for s in doc["segments"] for t in s["tokens"]]
    return tokens


def _words(text: str) -> str:
    """Lower case, punctuation dropped (apostrophes kept): what a WER compares."""
    return " ".join(re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split())


def word_error_rate(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Word errors (substitutions + deletions + insertions) over reference words, after `_words`."""
    from torchmetrics.functional.text import word_error_rate as wer

    return float(wer([_words(h) for h in hypotheses], [_words(r) for r in references]))


def mmkit_paths(quantize: Sequence[str], precisions: Sequence[str], device: str = "cpu") -> dict[str, list[str]]:
    """The mmkit paths to time, name -> `mmkit transcribe` options: "mmkit" (fp32, always: its tokens are what
    every other process is compared with), "mmkit_bf16" (and "mmkit_fp16" off the CPU), "mmkit_int8" (CPU
    only: PyTorch's int8 kernels). A ValueError for a path that cannot run on `device`."""
    on_cpu = device.split(":")[0] == "cpu"
    if not set(precisions) <= {"fp32", "bf16", *(() if on_cpu else ("fp16",))}:
        raise ValueError(f"precisions must be 'fp32' and/or 'bf16', got {list(precisions)}")
    bench_quantize(quantize, device)  # int8 on the CPU only
    paths: dict[str, list[str]] = {}
    for q in dict.fromkeys(["none", *quantize]):
        for pr in dict.fromkeys(["fp32", *precisions]):
            if q != "none" and pr != "fp32":
                continue  # int8 layers take fp32 activations: there is no int8 + bf16 path
            name = "mmkit" if (q, pr) == ("none", "fp32") else f"mmkit_{pr if q == 'none' else q}"
            paths[name] = ["--quantize", q, "--precision", pr]
    return paths


def run_transcribe_bench(model_dir: str | Path, files: Sequence[str | Path], max_new_tokens: int = 96,
                         batch_size: int = 8, hf_batch_sizes: Sequence[int] = (8,), threads: int | None = None,
                         rounds: int = 1, language: str = "en", mmkit_quantize: Sequence[str] = ("none",),
                         faster_whisper: Sequence[str] = (), transcripts: dict[str, str] | None = None,
                         audio_contexts: Sequence[float] = (), decoding: str = "greedy",
                         repetition_guard: bool = False, precisions: Sequence[str] = ("fp32",),
                         device: str = "cpu", beam_size: int = 1) -> dict[str, Any]:
    """Time `mmkit transcribe` (once per `mmkit_quantize` kind and `precisions` entry: "mmkit", "mmkit_int8",
    "mmkit_bf16" (int8 with bf16 is no path: int8 layers take fp32), and again per `audio_contexts` seconds
    with `--audio-context S`: "mmkit_ctx10s", "mmkit_int8_ctx10s"), the transformers
    reference and faster-whisper (once per CTranslate2 compute type in `faster_whisper`, on a
    CTranslate2 conversion of the checkpoint made before the timings) as subprocesses. `decoding`
    "greedy" decodes greedily with no fallback, thresholds or repetition guard on every side (the same
    tokens where the paths are exact); "default" leaves each tool's own defaults on (mmkit's and
    faster-whisper's temperature fallback and thresholds, mmkit's repetition guard), which is how they are
    used, and compares them by WER; the transformers rows are greedy either way. `repetition_guard` keeps
    mmkit's repetition guard on in greedy mode (a window that starts repeating itself is cut; other windows
    decode the same tokens): what `--audio-context` needs, since short contexts make some windows loop.
    Every process runs on `device` ("cpu", "cuda", "cuda:N"; checked by the caller, `check_device`), the
    transformers reference in fp32 there. `beam_size` > 1: every process decodes with that many beams (mmkit
    `--beam-size`, transformers `num_beams`, faster-whisper `beam_size`) instead of greedily.

    Returns:
        `seconds` per process over the rounds, `import_seconds` (a process that only imports each
        stack), `tokens_identical` / `files_identical` of every other process against mmkit's fp32
        tokens, `ratio` per reference (its median seconds / those of mmkit fp32, whose tokens are the ones
        compared), `ratio_by_path` (per mmkit path, the same against that path), `wer` per process and
        `ratio_equal_wer` (per reference: mmkit's fastest path at no higher WER, and the ratio there) when
        `transcripts` (audio path -> reference text) are given, else `fastest_same_tokens` (mmkit's fastest
        path among those that decoded fp32's tokens on every file), and the settings.
    """
    from mmkit.data.whisper_tokenizer import WhisperTokenizer

    if decoding not in ("greedy", "default"):
        raise ValueError(f"decoding must be 'greedy' or 'default', got {decoding!r}")
    paths = mmkit_paths(mmkit_quantize, precisions, device)  # "mmkit" (fp32), "mmkit_bf16", "mmkit_int8"

    model_dir, files = Path(model_dir), [Path(f) for f in files]
    tok = WhisperTokenizer.from_dir(model_dir)
    prompt = tok.sot_sequence(language if tok.is_multilingual else None, "transcribe", without_timestamps=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    # the processes' outputs and the CTranslate2 conversion, removed however the run ends
    with tempfile.TemporaryDirectory(prefix="mmkit-bench-transcribe-", ignore_cleanup_errors=True) as scratch:
        work = Path(scratch)
        threads_args = ["--threads", str(threads)] if threads else []

        greedy_args = ["--temperature", "0", *([] if repetition_guard else ["--no-repetition-guard"]),
                       "--no-speech-threshold", "none"] if decoding == "greedy" else []

        def mmkit_cmd(entry: list[str], out: str) -> list[str]:
            return [*entry, *map(str, files), "--model", str(model_dir), "--language", language, "--without-timestamps",
                    *greedy_args, "--max-new-tokens", str(max_new_tokens), "--batch-size", str(batch_size),
                    "--beam-size", str(beam_size),
                    "--output-format", "json", "--output-dir", str(work / out), "--quiet", "--device", device,
                    *threads_args]

        def hf_cmd(b: int) -> list[str]:
            args = dict(model=str(model_dir), files=list(map(str, files)), batch_size=b, language=language,
                        max_new_tokens=max_new_tokens, threads=threads, out=str(work / f"hf_b{b}.json"), device=device,
                        beam_size=beam_size)
            return [sys.executable, "-c", HF_SCRIPT, json.dumps(args)]

        # a CTranslate2 folder (model.bin) is faster-whisper's own format: read as is, nothing converted
        ct2_dir = model_dir if (model_dir / "model.bin").is_file() else work / "ct2"

        def fw_cmd(compute_type: str) -> list[str]:
            args = dict(model=str(ct2_dir), files=list(map(str, files)), compute_type=compute_type, language=language,
                        max_new_tokens=max_new_tokens, threads=threads, out=str(work / f"fw_{compute_type}.json"),
                        decoding=decoding, device=device.split(":")[0], device_index=int(device.partition(":")[2] or 0),
                        beam_size=beam_size)
            return [sys.executable, "-c", FW_SCRIPT, json.dumps(args)]

        if faster_whisper and ct2_dir != model_dir:  # float32; faster-whisper quantizes it on load per compute type
            import ctranslate2.converters

            # faster-whisper reads the tokenizer beside model.bin (without it, it asks the Hub)
            extra = [n for n in ("tokenizer.json", "preprocessor_config.json") if (model_dir / n).is_file()]
            ctranslate2.converters.TransformersConverter(str(model_dir), copy_files=extra).convert(str(work / "ct2"),
                                                                                                    force=True)
        entry = [sys.executable, "-m", "mmkit.cli", "transcribe"]
        mmkit_runs = dict(paths)
        for c in audio_contexts:
            mmkit_runs.update({f"{name}_ctx{c:g}s": [*args, "--audio-context", str(c)] for name, args in paths.items()})
        impls = {**{name: mmkit_cmd(entry, name) + extra for name, extra in mmkit_runs.items()},
                 **{f"transformers_b{b}": hf_cmd(b) for b in hf_batch_sizes},
                 **{f"faster_whisper_{c}": fw_cmd(c) for c in faster_whisper}}
        seconds: dict[str, list[float]] = {name: [] for name in impls}
        for r in range(rounds):
            order = list(impls) if r % 2 == 0 else list(reversed(impls))
            for name in order:
                log.info("round %d: %s", r + 1, name)
                seconds[name].append(_run(impls[name], env))
        import_seconds = {name: _run([sys.executable, "-c", code], env) for name, code in IMPORT_ONLY.items()}
        ours = _mmkit_tokens(work / "mmkit", files)  # fp32: what every other process is compared with
        result: dict[str, Any] = dict(
            model=str(model_dir), device=device, files=len(files), audio_seconds=None, max_new_tokens=max_new_tokens,
            batch_size=batch_size, threads=threads, rounds=rounds, decoding=decoding, precisions=list(precisions),
            beam_size=beam_size,
            repetition_guard=repetition_guard or decoding == "default", seconds=seconds,
            import_seconds=import_seconds,
            tokens_generated=sum(len(t) for t in ours.values()), ratio={}, tokens_identical={}, files_identical={})
        references = {f"transformers_b{b}": hf_tokens(work / f"hf_b{b}.json", prompt, tok.eot) for b in hf_batch_sizes}
        references.update({name: _mmkit_tokens(work / name, files) for name in mmkit_runs if name != "mmkit"})
        references.update({f"faster_whisper_{c}": json.loads((work / f"fw_{c}.json").read_text())
                           for c in faster_whisper})
        median = {name: statistics.median(secs) for name, secs in seconds.items()}
        for name, ref in references.items():
            same = [ours[str(f)] == ref.get(str(f)) for f in files]
            result["tokens_identical"][name] = all(same)
            result["files_identical"][name] = sum(same)
        result.update(_ratios(median, list(mmkit_runs)))
        if transcripts is not None:  # each process's tokens as text against the reference transcripts
            wanted = [transcripts[str(f)] for f in files]
            result["wer"] = wer = {name: word_error_rate([tok.decode(tokens.get(str(f), [])) for f in files], wanted)
                                   for name, tokens in {"mmkit": ours, **references}.items()}
            # per reference: mmkit's fastest path at equal or lower WER, and the ratio there
            result["ratio_equal_wer"] = {}
            for name in result["ratio"]:
                ok = [m for m in mmkit_runs if wer[m] <= wer[name] + 1e-9]
                if ok:
                    best = min(ok, key=median.__getitem__)
                    result["ratio_equal_wer"][name] = (best, median[name] / median[best])
        else:  # no WER to judge a path by: a faster path counts only where it decoded fp32's very tokens
            result["fastest_same_tokens"] = min(
                [m for m in mmkit_runs if m == "mmkit" or result["tokens_identical"][m]], key=median.__getitem__)
        return result


def _ratios(median: dict[str, float], mmkit_runs: Sequence[str]) -> dict[str, Any]:
    """`ratio`: each reference's median seconds over mmkit fp32's ("mmkit", the tokens compared); `ratio_by_path`:
    per mmkit path, each reference's over that path's (the bf16 / int8 / audio-context paths decode other
    tokens, so they get their own row instead of the headline). > 1: mmkit is faster."""
    refs = [name for name in median if name not in mmkit_runs]
    return dict(ratio={ref: median[ref] / median["mmkit"] for ref in refs},
                ratio_by_path={m: {ref: median[ref] / median[m] for ref in refs} for m in mmkit_runs})


def format_report(result: dict[str, Any], label: str) -> str:
    """The result as a text table: one row per process; "x mmkit" is that process's median time
    over mmkit fp32's (> 1: mmkit is faster); "same tokens" is against mmkit fp32. Then every mmkit path
    against every reference, and the fastest path named only where its output is as good: at no higher
    WER (with transcripts), else with fp32's very tokens."""
    greedy, beams = result.get("decoding", "greedy") == "greedy", result.get("beam_size", 1)
    how = (("greedy" if beams == 1 else f"beam {beams} at temperature 0") if greedy
           else "each tool's default fallback/thresholds")
    how += " (mmkit with its repetition guard)" if greedy and result.get("repetition_guard") else ""
    lines = [label, f"{result['files']} files on {result.get('device', 'cpu')}, {how}, no timestamps, "
                    f"max {result['max_new_tokens']} new tokens, mmkit batch {result['batch_size']}, "
                    f"threads {result['threads'] or 'torch default'}, "
                    f"{result['rounds']} round(s); {result['tokens_generated']} tokens generated by mmkit; "
                    "x mmkit = median s over mmkit fp32's (whose tokens are compared; > 1: mmkit is faster)", ""]
    header = f"{'process':<20} {'median s':>9}  {'rounds (s)':<20} {'same tokens':<12} {'x mmkit':>8} {'WER':>7}"
    lines.append(header)
    for name, secs in result["seconds"].items():
        same = "" if name not in result["tokens_identical"] else (
            f"{'yes' if result['tokens_identical'][name] else 'NO'} ({result['files_identical'][name]}/"
            f"{result['files']})")
        ratio = f"{result['ratio'][name]:.2f}" if name in result["ratio"] else ""
        rounds = " ".join(f"{x:.2f}" for x in secs)
        wer = f"{100 * result['wer'][name]:.1f}%" if name in result.get("wer", {}) else ""
        lines.append(f"{name:<20} {statistics.median(secs):>9.2f}  {rounds:<20} {same:<12} {ratio:>8} {wer:>7}")
    lines += _path_table(result)
    if "fastest_same_tokens" in result:
        lines.append(f"fastest mmkit path with fp32's tokens on every file: {result['fastest_same_tokens']}")
    for name, (best, ratio) in result.get("ratio_equal_wer", {}).items():
        lines.append(f"at equal or lower WER: {name} / {best} = {ratio:.2f}")
    missing = [n for n in result["ratio"] if "wer" in result and n not in result.get("ratio_equal_wer", {})]
    if missing:
        lines.append(f"no mmkit path reaches the WER of: {', '.join(missing)}")
    imports = ", ".join(f"{k} {v:.2f} s" for k, v in result["import_seconds"].items())
    lines += ["", f"start-up alone (a process that only imports): {imports}"]
    return "\n".join(lines) + "\n"


def _path_table(result: dict[str, Any]) -> list[str]:
    """Every mmkit path against every reference (`ratio_by_path`): the faster paths' figures, beside
    whether they decoded fp32's tokens, since the headline ratio is fp32's alone."""
    by_path = result.get("ratio_by_path", {})
    refs = list(result["ratio"])
    if not refs or len(by_path) < 2:  # only fp32: the table above says it all
        return []
    lines = ["", "per mmkit path: reference median s / the path's (> 1: the path is faster)",
             f"{'path':<20} " + " ".join(f"{ref:>{max(8, len(ref))}}" for ref in refs) + "  same tokens as fp32"]
    for path, ratios in by_path.items():
        same = "(is fp32)" if path == "mmkit" else f"{result['files_identical'][path]}/{result['files']} files"
        lines.append(f"{path:<20} " + " ".join(f"{ratios[ref]:>{max(8, len(ref))}.2f}" for ref in refs)
                     + f"  {same}")
    return lines


def _model_error(model_dir: Path, language: str) -> str | None:
    """What stops the processes from reading `model_dir` with `language` (a missing folder, no tokenizer,
    an unknown language), else None: found before any process runs rather than by the first one's failure."""
    from mmkit.data.whisper_tokenizer import WhisperTokenizer

    if not model_dir.is_dir():
        return f"--model {model_dir}: not a folder (a Hugging Face Whisper directory or a CTranslate2 folder)"
    try:  # TokenizerError is a ValueError
        tok = WhisperTokenizer.from_dir(model_dir)
        tok.sot_sequence(language if tok.is_multilingual else None, "transcribe", without_timestamps=True)
    except ValueError as e:  # the tokenizer's names the folder; an unknown language, the ones it knows
        return str(e)
    return None


def _input_error(args: argparse.Namespace) -> str | None:
    """What is wrong with --audio, --model, --language or --hf-batch-sizes, or None: checked before any
    checkpoint, audio or process is made, where every process would fail on it."""
    problem = check_audio_files(args.audio or [])
    if problem or not args.model:
        return problem
    model_dir = Path(args.model).expanduser()
    if (model_dir / "model.bin").is_file() and args.hf_batch_sizes:
        return f"--hf-batch-sizes needs a Hugging Face --model directory; {model_dir} is a CTranslate2 folder"
    return _model_error(model_dir, args.language)


def main(argv: Sequence[str] | None = None) -> int:
    """`mmkit bench transcribe`: run both as subprocesses, print the report, optionally write JSON."""
    p = Parser(prog="mmkit bench transcribe", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=path_text,
                   help="checkpoint directory (HF Whisper + tokenizer files, or a CTranslate2 Whisper "
                        "folder: then without the transformers rows); default: a random-init "
                        "whisper-tiny-sized toy checkpoint in a temporary directory")
    p.add_argument("--audio", nargs="+", help="audio files of at most 30 s, 16 kHz mono (default: synthetic)")
    p.add_argument("--num-files", type=at_least(1), default=8, help="synthetic files (5 to 30 s)")
    p.add_argument("--max-new-tokens", type=at_least(1), default=96)
    p.add_argument("--batch-size", type=at_least(1), default=8, help="mmkit's windows per batch (and the reference's)")
    p.add_argument("--hf-batch-sizes", type=at_least(1), nargs="+", default=None,
                   help="reference generate() batch sizes to time (default: --batch-size)")
    p.add_argument("--threads", type=thread_count(), default=None, help="torch threads in both processes")
    p.add_argument("--rounds", type=at_least(1), default=1)
    p.add_argument("--language", default="en")
    p.add_argument("--device", default="cpu", help="where every process runs: cpu (default), cuda, cuda:N; there "
                   "--precision auto adds the GPU's bf16 (fp16 on older GPUs), the transformers reference stays fp32")
    p.add_argument("--quantize", nargs="+", default=None, choices=("none", "int8"),
                   help="mmkit paths to time (mmkit transcribe --quantize; default none int8 on the CPU, none "
                        "elsewhere); fp32 (none) always runs, as the tokens every other process is compared with")
    add_precision_option(p)
    p.add_argument("--audio-context", type=float, nargs="+", default=[], metavar="SECONDS",
                   help="also time each mmkit path with `mmkit transcribe --audio-context SECONDS` (an "
                        "approximation: short windows encoded over fewer positions; see its WER column)")
    p.add_argument("--faster-whisper", nargs="*", default=None, choices=FW_ALL_COMPUTE_TYPES,
                   help="faster-whisper compute types to time (default where faster-whisper is installed: int8 "
                        "float32 on the CPU, float16 int8_float16 on cuda; none given: skip it)")
    p.add_argument("--decoding", choices=("greedy", "default"), default="greedy",
                   help="greedy: no fallback, thresholds or repetition guard anywhere (same tokens, the default); "
                        "default: mmkit's and faster-whisper's own fallback and thresholds on (compare by WER)")
    p.add_argument("--beam-size", type=at_least(1), default=1,
                   help="beams on every side (mmkit --beam-size, transformers num_beams, faster-whisper beam_size; "
                        "1: greedy)")
    p.add_argument("--repetition-guard", action="store_true",
                   help="with --decoding greedy, keep mmkit's repetition guard on (cuts windows that loop)")
    p.add_argument("--transcripts", metavar="JSON", type=path_text,
                   help="reference texts, a JSON object {audio path: text} keyed as the --audio paths: adds a "
                        "WER column")
    p.add_argument("--json", metavar="PATH", type=output_file, help="also write the result as JSON")
    args = p.parse_args(argv)
    try:  # before anything is written: a device this machine lacks, or a path that cannot run on it
        check_device(args.device)
        quantize = bench_quantize(args.quantize, args.device)
        precisions = bench_precisions(args.precision, args.device)
        mmkit_paths(quantize, precisions, args.device)
        fw = fw_compute_types(args.faster_whisper, args.device)
        for seconds in args.audio_context:  # `mmkit transcribe --audio-context`'s rules (finite, > 0)
            DecodingOptions(audio_context=seconds)
    except ValueError as e:
        sys.stderr.write(f"mmkit bench transcribe: error: {e}\n")
        return 2
    transcripts = read_transcripts(args.transcripts, args.audio or []) if args.transcripts else None
    problem = transcripts if isinstance(transcripts, str) else _input_error(args)
    if problem:
        sys.stderr.write(f"mmkit bench transcribe: error: {problem}\n")
        return 2
    # the toy model and audio (148 MB a run, left in /tmp before), removed however the run ends
    with tempfile.TemporaryDirectory(prefix="mmkit-bench-transcribe-data-", ignore_cleanup_errors=True) as scratch:
        tmp = Path(scratch)
        if args.model:
            model_dir, label = Path(args.model).expanduser(), f"model: {args.model}"
        else:
            log.info("writing a random-init whisper-tiny-sized checkpoint to %s", tmp / "model")
            model_dir = write_toy_checkpoint(tmp / "model", **TINY)
            label = ("model: RANDOM-INIT whisper-tiny-sized toy checkpoint (d_model 384, 4+4 layers, vocab 51865, "
                     "self-made tokenizer): real timings, meaningless transcripts")
            problem = _model_error(model_dir, args.language)  # --language against the toy's languages
            if problem:
                sys.stderr.write(f"mmkit bench transcribe: error: {problem}\n")
                return 2
        files = [Path(f) for f in args.audio] if args.audio else write_audio_files(tmp / "audio", args.num_files)
        hf_batch_sizes = args.hf_batch_sizes or [args.batch_size]
        if (model_dir / "model.bin").is_file():  # a CTranslate2 folder: transformers cannot read it (_input_error)
            log.info("%s is a CTranslate2 folder: mmkit and faster-whisper read it, the transformers rows are left out",
                     model_dir)
            hf_batch_sizes = []
        result = run_transcribe_bench(model_dir, files, args.max_new_tokens, args.batch_size,
                                      hf_batch_sizes, args.threads, args.rounds, args.language,
                                      quantize, fw, transcripts, args.audio_context, args.decoding,
                                      args.repetition_guard, precisions, args.device, args.beam_size)
        sys.stdout.write(format_report(result, label))
        write_json(args.json, result)
        if not all(v for k, v in result["tokens_identical"].items() if k.startswith("transformers")):
            log.warning("the processes decoded different tokens: the timings may not compare equal work")
        return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    raise SystemExit(main())
