"""Audio front end for speech models: file loading (16 kHz mono), Whisper's log-Mel
spectrogram, SpecAugment. The audio constants (sample rate, FFT size, hop, chunk length) are
defined once, with units, in `mmkit.audio.features` and re-exported here.
"""
from mmkit.audio.features import (
    CHUNK_LENGTH, HOP_LENGTH, N_FFT, N_FRAMES, N_SAMPLES, SAMPLE_RATE, log_mel_spectrogram, mel_filters, pad_or_trim,
)
from mmkit.audio.io import AudioLoadError, load_audio, resample, stream_audio
from mmkit.audio.long_features import SpilledAudio
from mmkit.audio.specaugment import SpecAugment

__all__ = [
    "CHUNK_LENGTH", "HOP_LENGTH", "N_FFT", "N_FRAMES", "N_SAMPLES", "SAMPLE_RATE", "AudioLoadError", "SpecAugment",
    "SpilledAudio", "load_audio", "log_mel_spectrogram", "mel_filters", "pad_or_trim", "resample", "stream_audio",
]
