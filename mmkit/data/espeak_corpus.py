"""Embedded speech corpus, synthesised offline with Debian's `espeak-ng` (a formant synthesiser):
compositional English sentences over a few hundred words, spoken by accent x variant voices at
random speeds and pitches, written as 16 kHz WAVs with JSONL manifests (path, text, voice, ...).

The held-out splits test generalisation twice over: their sentences never occur in training
(new combinations of the same words) and their voices never speak in training (each has an
accent or a timbre variant that training never hears).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import shutil
import subprocess
import tempfile
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import soundfile as sf

from mmkit.audio import SAMPLE_RATE, resample
from mmkit.data.cache import cache_root, publish_folder, read_marker
from mmkit.data.audio_manifest import AudioManifestDataModule
from mmkit.data.espeak_sentences import make_sentence, split_sentences, vocabulary  # noqa: F401 - re-exported

log = logging.getLogger(__name__)

CORPUS_VERSION = 1  # bump when the written files change, so stale corpora are rebuilt
DEFAULT_ROOT = "~/.cache/mmkit/espeak_corpus"
ESPEAK = "espeak-ng"
_MARKER = "mmkit-espeak.json"
SPLITS = ("train", "val", "test")

# Voices are "<accent>+<variant>" (espeak-ng's -v syntax). Accents change pronunciation rules,
# variants the timbre (pitch range, formants, Klatt synthesis). A held-out voice has a held-out
# accent or a held-out variant, so no test voice is a recombination of two trained parts only.
TRAIN_ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029")
HELD_OUT_ACCENTS = ("en-gb-x-rp", "en-us-nyc")
TRAIN_VARIANTS = ("", "m1", "m2", "m3", "m4", "m6", "m8", "f1", "f2", "f4", "klatt")
HELD_OUT_VARIANTS = ("m7", "f3", "f5")
SPEED_RANGE = (130, 190)  # words per minute (espeak-ng -s; its default is 175)
PITCH_RANGE = (25, 75)  # espeak-ng -p, 0..99 around the variant's base pitch (default 50)
SILENCE_DB = -40.0  # leading/trailing audio quieter than this (dB re. the peak) is trimmed
EDGE_PAD = 0.1  # seconds of the trimmed silence kept at each end
MAX_DURATION = 3.9  # seconds: utterances stay inside a 4 s encoder window (sped up when longer)


def voice_name(accent: str, variant: str) -> str:
    return f"{accent}+{variant}" if variant else accent


def train_voices() -> list[str]:
    return [voice_name(a, v) for a in TRAIN_ACCENTS for v in TRAIN_VARIANTS]


def held_out_voices() -> list[str]:
    """Every accent x variant pair with a held-out accent or a held-out variant."""
    pairs = [(a, v) for a in TRAIN_ACCENTS + HELD_OUT_ACCENTS for v in TRAIN_VARIANTS + HELD_OUT_VARIANTS]
    return [voice_name(a, v) for a, v in pairs if a in HELD_OUT_ACCENTS or v in HELD_OUT_VARIANTS]


# --- synthesis -----------------------------------------------------------------------------------

@dataclass
class Utterance:
    path: str  # relative to the corpus root
    text: str
    voice: str
    speed: int
    pitch: int
    duration: float = 0.0  # seconds, after trimming


def espeak_available() -> bool:
    return shutil.which(ESPEAK) is not None


def missing_voices(voices: Sequence[str]) -> list[str]:
    """The `voices` ("accent+variant") this espeak-ng does not have. espeak-ng itself silently
    falls back to its default voice for unknown names, which would mislabel a corpus."""
    def listing(arg: str) -> str:
        return subprocess.run([ESPEAK, arg], capture_output=True, text=True, timeout=60).stdout

    accents = {line.split()[1] for line in listing("--voices").splitlines()[1:] if line.split()}
    variants = set(re.findall(r"!v/(\S+)", listing("--voices=variant")))
    return [v for v in voices
            if v.partition("+")[0] not in accents or (v.partition("+")[2] or "") not in variants | {""}]


def synthesize(text: str, voice: str, speed: int = 175, pitch: int = 50) -> np.ndarray:
    """Speak `text` with espeak-ng; returns (N,) float32 at 16 kHz, silence trimmed to EDGE_PAD.

    Raises:
        RuntimeError: espeak-ng is missing or fails (e.g. an unknown voice).
    """
    if not espeak_available():
        raise RuntimeError(f"{ESPEAK} not found; install Debian's espeak-ng (scripts/setup.sh does)")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.wav"
        cmd = [ESPEAK, "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(out), "--", text]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        if proc.returncode != 0 or not out.is_file():
            raise RuntimeError(f"{ESPEAK} failed for voice {voice!r}: {proc.stderr.strip()}")
        audio, sr = sf.read(str(out), dtype="float32")  # espeak-ng writes 22.05 kHz mono PCM
    return trim_silence(resample(audio, sr, SAMPLE_RATE))


def trim_silence(audio: np.ndarray, threshold_db: float = SILENCE_DB, pad: float = EDGE_PAD) -> np.ndarray:
    """Cut leading/trailing samples quieter than `threshold_db` below the peak, keeping `pad` s."""
    peak = float(np.abs(audio).max()) if audio.size else 0.0
    if peak == 0.0:
        return audio
    loud = np.flatnonzero(np.abs(audio) >= peak * 10 ** (threshold_db / 20))
    margin = int(pad * SAMPLE_RATE)
    return audio[max(0, loud[0] - margin): loud[-1] + 1 + margin]


def _plan(n_train: int, n_val: int, n_test: int, seed: int) -> dict[str, list[Utterance]]:
    sentences = split_sentences(n_train, (n_val, n_test), seed)
    rng = random.Random(seed + 1)
    voices = {"train": train_voices(), "val": held_out_voices(), "test": held_out_voices()}
    plan = {}
    for split, texts in zip(SPLITS, sentences):
        plan[split] = [Utterance(f"wavs/{split}/{i:05d}.wav", text, rng.choice(voices[split]),
                                 rng.randint(*SPEED_RANGE), rng.randint(*PITCH_RANGE))
                       for i, text in enumerate(texts)]
    return plan


def _write(folder: Path, utt: Utterance) -> Utterance:
    audio = synthesize(utt.text, utt.voice, utt.speed, utt.pitch)
    while len(audio) > MAX_DURATION * SAMPLE_RATE:  # rare: a long sentence at a slow speed
        utt.speed = int(utt.speed * 1.1) + 1
        audio = synthesize(utt.text, utt.voice, utt.speed, utt.pitch)
    path = folder / utt.path
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), audio, SAMPLE_RATE, subtype="PCM_16")
    utt.duration = round(len(audio) / SAMPLE_RATE, 3)
    return utt


def write_espeak_corpus(root: str | os.PathLike = DEFAULT_ROOT, n_train: int = 6000, n_val: int = 200,
                        n_test: int = 400, seed: int = 0, workers: int | None = None) -> Path:
    """Synthesise the corpus into `root` unless a matching one is there; return `root`.

    Writes `root/wavs/<split>/<n>.wav` (16 kHz mono PCM) and `root/<split>.jsonl` manifests
    (path relative to root, text, voice, speed, pitch, duration). Train sentences are spoken by
    `train_voices()`; val and test sentences (disjoint from train and from each other) by
    `held_out_voices()`. A marker records the settings: a matching marker makes this a no-op, a
    stale one a rebuild. The corpus is built aside and renamed into place, so concurrent callers
    never see half of it.

    Raises:
        FileExistsError: `root` holds other files and no marker, so it is not ours to replace.
        RuntimeError: espeak-ng is missing or fails.
    """
    root = Path(root).expanduser()
    key = {"version": CORPUS_VERSION, "n": [n_train, n_val, n_test], "seed": seed, "max_duration": MAX_DURATION,
           "voices": _fingerprint(train_voices() + held_out_voices())}
    found = read_marker(root, _MARKER)
    if found == key:
        return root
    if found is None and root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} is not empty and is not an mmkit espeak corpus")
    if not espeak_available():
        raise RuntimeError(f"{ESPEAK} not found; install Debian's espeak-ng (scripts/setup.sh does)")
    missing = missing_voices(train_voices() + held_out_voices())
    if missing:
        raise RuntimeError(f"this {ESPEAK} lacks the voices {', '.join(missing)}")
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = root.parent / f".{root.name}.tmp-{uuid.uuid4().hex}"
    plan = _plan(n_train, n_val, n_test, seed)
    log.info("synthesising %d utterances with %s into %s", sum(map(len, plan.values())), ESPEAK, root)
    try:
        with ThreadPoolExecutor(workers or min(4, os.cpu_count() or 1)) as pool:  # espeak-ng runs as processes
            for split, utts in plan.items():
                written = list(pool.map(lambda u: _write(staging, u), utts))
                with open(staging / f"{split}.jsonl", "w", encoding="utf-8") as f:
                    f.writelines(json.dumps(asdict(u)) + "\n" for u in written)
        counts = {split: len(u) for split, u in plan.items()}
        (staging / _MARKER).write_text(json.dumps({"key": key, "counts": counts}, indent=1))
        publish_folder(staging, root, key, _MARKER)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return root


def _fingerprint(items: list[str]) -> str:
    return hashlib.sha1(" ".join(items + [str(SPEED_RANGE), str(PITCH_RANGE)]).encode()).hexdigest()[:12]


def resolve_corpus_root(root: str = DEFAULT_ROOT) -> Path:
    """The default root moves under `$MMKIT_CACHE/espeak_corpus` when that variable is set."""
    return cache_root(root, DEFAULT_ROOT, "espeak_corpus")


class EspeakDataModule(AudioManifestDataModule):
    """`AudioManifestDataModule` over the synthesised corpus (written by `prepare_data`, once).

    Args:
        root: corpus folder (default `~/.cache/mmkit/espeak_corpus`, or `$MMKIT_CACHE/...`).
        n_train, n_val, n_test: utterances per split.
        seed: sentence and voice draw.
        The other arguments are `AudioManifestDataModule`'s.
    """

    def __init__(
        self,
        root: str = DEFAULT_ROOT,
        n_train: int = 6000,
        n_val: int = 200,
        n_test: int = 400,
        seed: int = 0,
        tokenizer: str | None = None,
        tokenizer_type: str = "char",
        bpe_vocab_size: int = 256,
        batch_size: int = 32,
        num_workers: int = 0,
    ) -> None:
        folder = resolve_corpus_root(root)
        super().__init__(train_manifest=str(folder / "train.jsonl"), val_manifest=str(folder / "val.jsonl"),
                         test_manifest=str(folder / "test.jsonl"), tokenizer=tokenizer,
                         tokenizer_type=tokenizer_type, bpe_vocab_size=bpe_vocab_size, batch_size=batch_size,
                         num_workers=num_workers, seed=seed)
        self.root = folder
        self.corpus_args: dict[str, Any] = dict(n_train=n_train, n_val=n_val, n_test=n_test, seed=seed)

    def prepare_data(self) -> None:
        write_espeak_corpus(self.root, **self.corpus_args)
