"""Word timestamps of `mmkit transcribe --long-form sequential --word-timestamps` against openai-whisper's
`transcribe(word_timestamps=True)` on the same weights, in one process: the mmkit model is moved back to openai's
names (q/k/v split, the alignment heads set as openai's sparse mask) and both transcribe the same long espeak-ng
passages (`long_form_wer.write_passages`), greedy (temperature 0 alone: a fallback's sampled draws could not
match), English. The report gives the words compared, the files whose word lists are equal, the largest start/end
and probability differences and each side's decoding time; then the default windows long form's words against
openai's: the words both give (matched by text, in order), how far apart their starts and ends are, and the windows
long form's time with and without word timestamps. Nothing is downloaded: `--model` is a Whisper checkpoint the
user has (README: real tiny.en weights); needs openai-whisper installed.

    python scripts/word_timing_openai.py --model WHISPER_DIR --files 8 --seconds 80 --threads 1
"""
from __future__ import annotations

import argparse
import difflib
import json
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
from long_form_wer import write_passages  # noqa: E402

from mmkit.inference import DecodingOptions, Transcriber, load_speech_model  # noqa: E402
from mmkit.models import Whisper  # noqa: E402
from mmkit.weights.from_openai_whisper import OPENAI_WHISPER_KEYS  # noqa: E402
from mmkit.weights.keymap import remap  # noqa: E402


def openai_state(model: Whisper) -> dict[str, Tensor]:
    """`model`'s tensors under openai-whisper's names: the fused projections split into q/k/v (openai's key
    has no bias: mmkit's zero slice is dropped), then `OPENAI_WHISPER_KEYS` read backwards."""
    staged: dict[str, Tensor] = {}
    for key, value in model.state_dict().items():
        base, _, p = key.rpartition(".")
        fused = base.rpartition(".")[2]
        if fused in ("qkv", "kv"):
            for part, piece in zip(fused, value.chunk(len(fused))):
                if not (part == "k" and p == "bias"):
                    staged[f"{base}.{part}.{p}"] = piece
        else:
            staged[key] = value
    return remap(staged, [(dst, src) for src, dst in OPENAI_WHISPER_KEYS], "mmkit Whisper")


def to_openai(model: Whisper):
    """An openai-whisper `Whisper` with `model`'s weights and alignment heads, in eval mode."""
    import whisper
    from whisper.model import ModelDimensions

    c = model.config
    dims = ModelDimensions(
        n_mels=c["n_mels"], n_audio_ctx=c["n_audio_ctx"], n_audio_state=c["dim"], n_audio_head=c["num_heads"],
        n_audio_layer=c["encoder_depth"], n_vocab=c["vocab_size"], n_text_ctx=c["n_text_ctx"], n_text_state=c["dim"],
        n_text_head=c["num_heads"], n_text_layer=c["decoder_depth"])
    ref = whisper.model.Whisper(dims)
    ref.load_state_dict(openai_state(model), strict=True)
    if model.alignment_heads is not None:  # else both use openai's default, the last half of the layers
        mask = torch.zeros(c["decoder_depth"], c["num_heads"], dtype=torch.bool)
        for layer, head in model.alignment_heads:
            mask[layer, head] = True
        ref.register_buffer("alignment_heads", mask.to_sparse(), persistent=False)
    return ref.eval()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="a Whisper checkpoint mmkit reads (folder or openai .pt)")
    p.add_argument("--files", type=int, default=8)
    p.add_argument("--seconds", type=float, default=80.0, help="length of each passage at least")
    p.add_argument("--work", default="/tmp/word_timing", help="folder for the passages")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    import whisper

    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer = load_speech_model(args.model)
    ref = to_openai(model)
    ours = Transcriber(model, tokenizer, options=DecodingOptions(long_form="sequential", word_timestamps=True,
                                                                 language="en", temperatures=(0.0,)))
    windows = Transcriber(model, tokenizer, options=DecodingOptions(word_timestamps=True, language="en",
                                                                    temperatures=(0.0,)))
    plain = Transcriber(model, tokenizer, options=DecodingOptions(language="en", temperatures=(0.0,)))
    references = write_passages(Path(args.work), args.files, args.seconds)
    gaps: list[float] = []  # |start - start'| and |end - end'| of the words windows and openai both give
    report = dict(files=len(references), words=0, equal_word_lists=0, largest_time_difference=0.0,
                  largest_probability_difference=0.0, mmkit_s=0.0, openai_s=0.0, windows_s=0.0,
                  windows_with_words_s=0.0)
    for path in sorted(references):
        audio = sf.read(path, dtype="float32")[0]
        start = time.perf_counter()
        mine = [w for s in ours.transcribe(audio, path).segments for w in s.words or []]
        report["mmkit_s"] += time.perf_counter() - start
        start = time.perf_counter()
        result = whisper.transcribe(ref, audio, word_timestamps=True, language="en", verbose=None, fp16=False,
                                    temperature=0.0)
        report["openai_s"] += time.perf_counter() - start
        theirs = [w for s in result["segments"] for w in s["words"]]
        report["words"] += len(mine)
        report["equal_word_lists"] += [w.word for w in mine] == [w["word"] for w in theirs]
        for a, b in zip(mine, theirs):
            report["largest_time_difference"] = max(report["largest_time_difference"], abs(a.start - b["start"]),
                                                    abs(a.end - b["end"]))
            report["largest_probability_difference"] = max(report["largest_probability_difference"],
                                                           abs(a.probability - b["probability"]))
        start = time.perf_counter()
        plain.transcribe(audio, path)
        report["windows_s"] += time.perf_counter() - start
        start = time.perf_counter()
        fixed = [w for s in windows.transcribe(audio, path).segments for w in s.words or []]
        report["windows_with_words_s"] += time.perf_counter() - start
        report["windows_words"] = report.get("windows_words", 0) + len(fixed)
        match = difflib.SequenceMatcher(a=[w.word for w in fixed], b=[w["word"] for w in theirs], autojunk=False)
        for block in match.get_matching_blocks():
            for a, b in zip(fixed[block.a:block.a + block.size], theirs[block.b:block.b + block.size]):
                gaps += [abs(a.start - b["start"]), abs(a.end - b["end"])]
    for key in ("mmkit_s", "openai_s", "windows_s", "windows_with_words_s"):
        report[key] = round(report[key], 1)
    if gaps:
        report.update(windows_matched_words=len(gaps) // 2, windows_median_gap_s=round(float(np.median(gaps)), 3),
                      windows_p95_gap_s=round(float(np.percentile(gaps, 95)), 3),
                      windows_within_0_1_s=round(float(np.mean(np.array(gaps) <= 0.1)), 3))
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
