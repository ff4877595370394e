"""Offline Whisper checkpoints for transcription tests: a tiny random-initialised transformers
`WhisperForConditionalGeneration` (30 s windows, 2 small decoder layers) with the self-made toy
tokenizer (real special-token layout), saved as a Hugging Face directory and as an mmkit one,
plus synthetic audio. The test module imports these fixtures explicitly.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from mmkit.audio import SAMPLE_RATE
from mmkit.cli.bench.transcribe import synth_speechlike, write_toy_checkpoint  # noqa: F401 - re-exported

N_TEXT_TOKENS = 400  # toy vocabulary: 256 bytes + word merges; + 1608 special/timestamp tokens
TINY_DIMS = dict(d_model=64, encoder_layers=1, decoder_layers=2, heads=4)  # 30 s windows, fast


def write_hf_checkpoint(directory: Path, multilingual: bool = True, seed: int = 0) -> Path:
    """A tiny random HF Whisper + toy tokenizer + generation_config.json in `directory`."""
    return write_toy_checkpoint(directory, n_text_tokens=N_TEXT_TOKENS, multilingual=multilingual, seed=seed,
                                eot_scale=3.0, **TINY_DIMS)  # 3.0: some windows end early



def write_wav(path: Path, audio: np.ndarray, sample_rate: int = SAMPLE_RATE, subtype: str = "PCM_16") -> Path:
    sf.write(str(path), audio, sample_rate, subtype=subtype)
    return path


@pytest.fixture(scope="session")
def whisper_hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_hf_checkpoint(tmp_path_factory.mktemp("whisper_hf"))


@pytest.fixture(scope="session")
def whisper_native_dir(whisper_hf_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mmkit.inference import load_speech_model, save_speech_checkpoint

    model, tokenizer = load_speech_model(whisper_hf_dir)
    return save_speech_checkpoint(model, tokenizer, tmp_path_factory.mktemp("whisper_mmkit"))


@pytest.fixture(scope="session")
def whisper_checkpoint(whisper_hf_dir: Path):
    """(mmkit Whisper, WhisperTokenizer, transformers model) of the HF directory."""
    import transformers

    from mmkit.inference import load_speech_model

    model, tokenizer = load_speech_model(whisper_hf_dir)
    hf = transformers.WhisperForConditionalGeneration.from_pretrained(whisper_hf_dir).eval()
    return model, tokenizer, hf
