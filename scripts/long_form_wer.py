"""Long-form WER of `mmkit transcribe`'s two long forms (independent 30 s windows, the default, against
openai/whisper's sequential algorithm, `--long-form sequential`) on long espeak-ng passages: each file is a run
of the espeak corpus's sentences spoken by one voice the recipe never hears, with short pauses, so that words
fall across the 30 s window edges. Each long form runs as a whole `mmkit transcribe` process, greedy, with
timestamps (sequential seeks on them); the report gives WER and wall time per long form, and whether
sequential's transcripts batched across files equal those one file at a time. Nothing is downloaded:
`--model` is a Whisper folder the user has (README: real tiny.en weights).

    python scripts/long_form_wer.py --model WHISPER_DIR --files 6 --seconds 80 --work /tmp/long_form
"""
from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from mmkit.audio import SAMPLE_RATE
from mmkit.cli.bench.transcribe import word_error_rate
from mmkit.data.espeak_corpus import held_out_voices, synthesize
from mmkit.data.espeak_sentences import make_sentence

# name -> `mmkit transcribe` options
LONG_FORMS = {"windows": ["--long-form", "windows"], "sequential": ["--long-form", "sequential"],
              "sequential, no previous text": ["--long-form", "sequential", "--condition-on-previous-text", "false"],
              "sequential, one file at a time": ["--long-form", "sequential", "--batch-size", "1"]}
PAUSE_S = 0.35  # between sentences: a speaker's breath, and room for a window edge to fall inside a word or not


def write_passages(folder: Path, files: int, seconds: float, seed: int = 0) -> dict[str, str]:
    """`files` WAVs of at least `seconds` each in `folder`; returns path -> reference text."""
    rng = random.Random(seed)
    voices = held_out_voices()
    references = {}
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        voice, speed = rng.choice(voices), rng.randint(150, 175)
        pieces, words, total = [], [], 0
        while total < seconds * SAMPLE_RATE:
            sentence = make_sentence(rng)
            audio = synthesize(sentence, voice, speed)
            pieces += [audio, np.zeros(int(PAUSE_S * SAMPLE_RATE), np.float32)]
            words.append(sentence)
            total += len(audio) + int(PAUSE_S * SAMPLE_RATE)
        path = folder / f"passage_{i:02d}.wav"
        sf.write(str(path), np.concatenate(pieces), SAMPLE_RATE)
        references[str(path)] = " ".join(words)
    return references


def transcribe(model: str, files: list[str], options: list[str], out: Path, threads: int | None) -> tuple[dict, float]:
    """path -> text from one whole `mmkit transcribe` process, and its wall time in seconds."""
    cmd = [sys.executable, "-m", "mmkit", "transcribe", *files, "--model", model, *options,
           "--temperature", "0", "--language", "en", "-f", "json", "-o", str(out), "--quiet"]
    cmd += ["--threads", str(threads)] if threads else []
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    return {f: json.loads((out / f"{Path(f).stem}.json").read_text())["text"] for f in files}, wall


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="a Whisper folder or file mmkit transcribe reads")
    p.add_argument("--files", type=int, default=6)
    p.add_argument("--seconds", type=float, default=80.0, help="length of each passage (at least)")
    p.add_argument("--work", default="long_form", help="folder for the passages and transcripts")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    work = Path(args.work)
    references = write_passages(work / "audio", args.files, args.seconds)
    files = sorted(references)
    hours = sum(sf.info(f).duration for f in files) / 3600
    print(f"{len(files)} passages, {hours * 60:.1f} min of speech; model {args.model}")
    print("| long form | WER | wall |\n|---|---|---|")
    texts = {}
    for n, (long_form, options) in enumerate(LONG_FORMS.items()):
        texts[long_form], wall = transcribe(args.model, files, options, work / f"run{n}", args.threads)
        wer = word_error_rate([texts[long_form][f] for f in files], [references[f] for f in files])
        print(f"| {long_form} | {100 * wer:.1f}% | {wall:.1f} s |")
    same = sum(texts["sequential"][f] == texts["sequential, one file at a time"][f] for f in files)
    print(f"sequential: {same} of {len(files)} transcripts the same batched (--batch-size 8) as one file at a time")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
