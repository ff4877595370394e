"""The reference processes of `mmkit bench transcribe`: the scripts it runs for transformers'
Whisper `generate` and for faster-whisper (each reads its arguments as JSON and writes its tokens per
file as JSON), the import-only lines that time start-up, the faster-whisper compute types per device, and the
reader of the transformers tokens.
"""
from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path
from typing import Sequence

log = logging.getLogger(__name__)

# The reference: the transformers way, file loading and features included, fp32 on args["device"]
# (.tolist() waits for the GPU, so the process's wall time covers all the work). Arguments come as JSON.
HF_SCRIPT = r"""
import json, sys
args = json.loads(sys.argv[1])
import soundfile as sf, torch
from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration
if args["threads"]:
    torch.set_num_threads(args["threads"])
device = torch.device(args["device"])
model = WhisperForConditionalGeneration.from_pretrained(args["model"]).to(device).eval()
features = WhisperFeatureExtractor(feature_size=model.config.num_mel_bins)
multilingual = getattr(model.generation_config, "is_multilingual", model.config.vocab_size >= 51865)
files, B, out = args["files"], args["batch_size"], {}
with torch.inference_mode():
    for i in range(0, len(files), B):
        chunk = files[i:i + B]
        audio = [sf.read(f, dtype="float32")[0] for f in chunk]
        x = features(audio, sampling_rate=16000, return_tensors="pt").input_features.to(device)
        # English-only checkpoints (tiny.en, ...) take no language or task: transformers refuses them
        prompt = dict(language=args["language"], task="transcribe") if multilingual else {}
        seqs = model.generate(x, return_timestamps=False, max_new_tokens=args["max_new_tokens"],
                              num_beams=args["beam_size"], **prompt)
        out.update(zip(chunk, seqs.tolist()))
with open(args["out"], "w") as f:
    json.dump(out, f)
"""
# faster-whisper (CTranslate2) on a CTranslate2 conversion of the same checkpoint: the bench's beam size, no VAD, no
# previous-text prompt, the same token limit, and with decoding "greedy" no fallback or thresholds (with
# "default": its own temperature fallback and thresholds); its tokens per file as JSON.
FW_SCRIPT = r"""
import json, sys
args = json.loads(sys.argv[1])
from faster_whisper import WhisperModel
model = WhisperModel(args["model"], device=args["device"], device_index=args["device_index"],
                     compute_type=args["compute_type"], cpu_threads=args["threads"] or 0)
out = {}
# greedy: no fallback or thresholds; default: faster-whisper's own temperature fallback and thresholds
greedy = dict(temperature=0.0, compression_ratio_threshold=None, log_prob_threshold=None, no_speech_threshold=None)
decoding = greedy if args["decoding"] == "greedy" else {}
for f in args["files"]:
    segments, _ = model.transcribe(f, language=args["language"], beam_size=args["beam_size"], vad_filter=False,
                                   without_timestamps=True, condition_on_previous_text=False,
                                   max_new_tokens=args["max_new_tokens"], **decoding)
    out[f] = [t for s in segments for t in s.tokens]
with open(args["out"], "w") as fh:
    json.dump(out, fh)
"""
# faster-whisper compute types: a CPU's (CTranslate2 refuses the float16 ones there), and a GPU's defaults,
# those of faster-whisper's GPU examples (int8 and float32 run there too)
FW_COMPUTE_TYPES = ("int8", "float32")
FW_CUDA_COMPUTE_TYPES = ("float16", "int8_float16")
FW_ALL_COMPUTE_TYPES = FW_CUDA_COMPUTE_TYPES + FW_COMPUTE_TYPES
IMPORT_ONLY = {
    "mmkit": "import mmkit.cli, mmkit.cli.transcribe",
    "transformers": "import soundfile, torch; from transformers import WhisperFeatureExtractor, "
                    "WhisperForConditionalGeneration",
}


def fw_compute_types(asked: Sequence[str] | None, device: str) -> list[str]:
    """The faster-whisper compute types to time on `device` ("cpu", "cuda", "cuda:N"): `asked`, or the
    device's defaults when None (none where faster-whisper is not installed). A ValueError for a type the
    device cannot run (CTranslate2 would stop there only after the other processes had run) and for a device
    other than cpu and cuda (CTranslate2 has no MPS backend)."""
    if not importlib.util.find_spec("faster_whisper"):
        if asked:  # else found after the other processes had run, as a traceback
            raise ValueError("--faster-whisper needs faster-whisper, which is not installed (pip install "
                             "faster-whisper)")
        log.info("faster-whisper is not installed (pip install faster-whisper): its rows are left out")
        return []
    kind = device.split(":")[0]
    if kind not in ("cpu", "cuda"):
        if asked:
            raise ValueError(f"--faster-whisper runs on cpu or cuda, not on --device {device}")
        return []
    valid = FW_ALL_COMPUTE_TYPES if kind == "cuda" else FW_COMPUTE_TYPES
    wrong = [c for c in asked or () if c not in valid]
    if wrong:
        raise ValueError(f"--faster-whisper {' '.join(wrong)}: not a compute type on --device {device} "
                         f"(there: {', '.join(valid)})")
    return list(FW_CUDA_COMPUTE_TYPES if kind == "cuda" else FW_COMPUTE_TYPES) if asked is None else list(asked)


def hf_tokens(path: Path, prompt: list[int], eot: int) -> dict[str, list[int]]:
    tokens = {}
    for f, seq in json.loads(path.read_text()).items():
        if seq[: len(prompt)] == prompt:  # some transformers versions return the prompt too
            seq = seq[len(prompt):]
        while seq and seq[-1] == eot:  # <|endoftext|> and its padding
            seq = seq[:-1]
        tokens[f] = seq
    return tokens
