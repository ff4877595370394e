"""Inputs for `mmkit bench transcribe` and the speech tests: a random-initialised transformers
Whisper checkpoint with the self-made toy tokenizer (whisper-tiny's shapes by default),
synthetic speech-like audio files, and the reader of `--transcripts`. Nothing is downloaded."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

SAMPLE_RATE = 16_000  # Hz (mmkit.audio.SAMPLE_RATE; not imported so that this module loads fast)


def write_toy_checkpoint(directory: str | Path, d_model: int = 384, encoder_layers: int = 4, decoder_layers: int = 4,
                         heads: int = 6, n_text_tokens: int = 50257, multilingual: bool = True,
                         n_audio_ctx: int = 1500, eot_scale: float = 1.0, seed: int = 0) -> Path:
    """Write a random-initialised transformers Whisper checkpoint with the self-made toy
    tokenizer (`mmkit.data.whisper_toy_tokenizer.write_toy_tokenizer`) into `directory`.

    The weights are scaled beyond Whisper's N(0, 0.02) init so that greedy choices have clear
    margins (implementations that agree to 1e-5 then pick the same tokens); through the tied head
    a token's logit grows with its embedding's norm, so the special and timestamp embeddings are
    shrunk (the model mostly writes text); `eot_scale` > 1 enlarges <|endoftext|>'s so that some
    windows end before the token limit (at 1 they rarely do: every window costs the same).
    """
    import torch
    import transformers

    from mmkit.data.whisper_toy_tokenizer import write_toy_tokenizer

    directory = Path(directory).expanduser()
    tok = write_toy_tokenizer(directory, n_text_tokens, multilingual=multilingual)
    torch.manual_seed(seed)
    config = transformers.WhisperConfig(
        vocab_size=tok.vocab_size, d_model=d_model, encoder_layers=encoder_layers, decoder_layers=decoder_layers,
        encoder_attention_heads=heads, decoder_attention_heads=heads, encoder_ffn_dim=4 * d_model,
        decoder_ffn_dim=4 * d_model, num_mel_bins=80, max_source_positions=n_audio_ctx, max_target_positions=448,
        pad_token_id=tok.eot, bos_token_id=tok.eot, eos_token_id=tok.eot, decoder_start_token_id=tok.sot)
    model = transformers.WhisperForConditionalGeneration(config).eval()
    std = 2.4 / d_model**0.5  # 0.3 at d_model 64, 0.12 at 384
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "encoder.embed_positions" in name:
                continue  # the fixed sinusoids
            is_gain = p.ndim == 1 and "layer_norm" in name and name.endswith("weight")
            p.normal_(1.0 if is_gain else 0.0, 0.3 if "embed_tokens" in name else std)
        embed = model.model.decoder.embed_tokens.weight
        embed[tok.eot + 1:] *= 0.5
        embed[tok.eot] *= eot_scale
    model.save_pretrained(directory)  # writes its own generation_config.json: put the tokenizer's back
    tok.save(directory)
    return directory


def synth_speechlike(seconds: float, seed: int = 0, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """(N,) float32: gliding harmonic tones under a syllable-rate envelope, plus a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    f0 = 120 + 60 * np.sin(2 * np.pi * 0.3 * t + seed)
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    voice = sum(np.sin(k * phase) / k for k in range(1, 6))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3.0 * t + rng.uniform(0, 6)) ** 2
    return (0.2 * voice * envelope + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def write_audio_files(directory: str | Path, n: int, min_seconds: float = 5.0, max_seconds: float = 30.0,
                      seed: int = 0) -> list[Path]:
    """`n` 16 kHz mono 16-bit WAV files of synthetic speech-like audio, evenly spread lengths."""
    import soundfile as sf

    directory = Path(directory).expanduser()
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        seconds = min_seconds + (max_seconds - min_seconds) * (i / max(n - 1, 1))
        path = directory / f"clip{i:03d}.wav"
        sf.write(str(path), synth_speechlike(seconds, seed + i), SAMPLE_RATE, subtype="PCM_16")
        paths.append(path)
    return paths


def read_transcripts(path: str, audio: Sequence[str]) -> dict[str, str] | str:
    """{audio path: reference text} for every --audio file, or what is wrong with the file."""
    try:
        texts = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        return f"--transcripts {path}: unreadable ({e})"
    missing = [a for a in audio if not isinstance(texts, dict) or not isinstance(texts.get(str(Path(a))), str)]
    if not audio or missing:
        return f"--transcripts needs --audio files and a text for each (missing: {', '.join(missing[:3]) or 'all'})"
    return {str(Path(a)): texts[str(Path(a))] for a in audio}


def check_audio_files(paths: Sequence[str]) -> str | None:
    """What is wrong with the first --audio file that is missing or that libsndfile cannot read (from its
    header only), else None: every process would fail on it, the first after minutes of the others."""
    import soundfile as sf

    for path in paths:
        if not Path(path).is_file():
            return f"--audio {path}: {'a folder' if Path(path).is_dir() else 'no such file'}"
        try:
            sf.info(path)
        except (RuntimeError, OSError) as e:  # soundfile's LibsndfileError is a RuntimeError
            return f"--audio {path}: not an audio file libsndfile reads ({e})"
    return None
