"""Whisper log-Mel front end: parity with transformers' WhisperFeatureExtractor (its torch path
and its independent float64 NumPy path), the filterbank, padding/trimming, batching."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mmkit.audio import HOP_LENGTH, N_FRAMES, N_SAMPLES, SAMPLE_RATE, log_mel_spectrogram, mel_filters, pad_or_trim

transformers = pytest.importorskip("transformers")


def _synthetic(seconds: float, seed: int = 0) -> np.ndarray:
    """Two tones, a chirp and white noise: energy across the whole Mel range."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    x = 0.4 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 3150 * t)
    x += 0.1 * np.sin(2 * np.pi * (100 + 2000 * t / max(seconds, 1e-9)) * t) + 0.05 * rng.standard_normal(t.size)
    return x.astype(np.float32)


@pytest.fixture(scope="module")
def clip30() -> np.ndarray:
    return _synthetic(30.0)


@pytest.mark.parametrize("n_mels", [80, 128])
def test_filterbank_equals_transformers(n_mels):
    from transformers.audio_utils import mel_filter_bank

    ref = mel_filter_bank(num_frequency_bins=201, num_mel_filters=n_mels, min_frequency=0.0, max_frequency=8000.0,
                          sampling_rate=SAMPLE_RATE, norm="slaney", mel_scale="slaney")  # (201, n_mels) float64
    ours = mel_filters(n_mels)
    assert ours.shape == (n_mels, 201) and ours.dtype == torch.float32
    np.testing.assert_allclose(ours.numpy().T, ref, atol=1e-8, rtol=1e-6)  # float64 maths, one rounding
    import torchaudio.functional as AF

    ta = AF.melscale_fbanks(201, 0.0, 8000.0, n_mels, SAMPLE_RATE, norm="slaney", mel_scale="slaney")
    torch.testing.assert_close(ours.T, ta, atol=1e-6, rtol=0)  # torchaudio's float32 version


@pytest.mark.parametrize("n_mels", [80, 128])
def test_matches_whisper_feature_extractor_on_30s(clip30, n_mels):
    fe = transformers.WhisperFeatureExtractor(feature_size=n_mels)
    ref = fe(clip30, sampling_rate=SAMPLE_RATE, return_tensors="np").input_features[0]  # (n_mels, 3000)
    ours = log_mel_spectrogram(clip30, n_mels=n_mels)
    assert ours.shape == (n_mels, N_FRAMES) == ref.shape
    assert ref.std() > 0.1  # non-degenerate reference
    np.testing.assert_allclose(ours.numpy(), ref, atol=1e-4, rtol=0)
    # transformers' float64 NumPy implementation is independent of torch.stft.
    ref_np = fe._np_extract_fbank_features(clip30[None].astype(np.float64), "cpu")[0]
    np.testing.assert_allclose(ours.numpy(), ref_np, atol=1e-4, rtol=0)


def test_short_clip_padded_to_30s_matches_feature_extractor():
    short = _synthetic(3.3, seed=1)
    ref = transformers.WhisperFeatureExtractor()(short, sampling_rate=SAMPLE_RATE, return_tensors="np").input_features
    ours = log_mel_spectrogram(pad_or_trim(short))
    assert ours.shape == (80, N_FRAMES)
    np.testing.assert_allclose(ours.numpy(), ref[0], atol=1e-4, rtol=0)
    # the padded silence sits on the floor: max - 8 in log10 units, i.e. (max - 4) / 4 after scaling
    assert torch.allclose(ours[:, -100:], ours.max() - 2.0)


def test_batch_uses_a_per_example_floor():
    quiet, loud = _synthetic(2.0, seed=2) * 1e-3, _synthetic(2.0, seed=3)
    batch = log_mel_spectrogram(torch.from_numpy(np.stack([quiet, loud])))
    assert batch.shape == (2, 80, 200)
    torch.testing.assert_close(batch[0], log_mel_spectrogram(quiet), atol=1e-6, rtol=0)
    torch.testing.assert_close(batch[1], log_mel_spectrogram(loud), atol=1e-6, rtol=0)


def test_frames_padding_and_input_types():
    x = _synthetic(1.234)
    assert log_mel_spectrogram(x).shape == (80, x.size // HOP_LENGTH)
    assert log_mel_spectrogram(x, padding=N_SAMPLES).shape == (80, (x.size + N_SAMPLES) // HOP_LENGTH)
    torch.testing.assert_close(log_mel_spectrogram(torch.from_numpy(x), device="cpu"), log_mel_spectrogram(x))
    with pytest.raises(ValueError, match="80 or 128"):
        mel_filters(64)
    with pytest.raises(ValueError, match=r"\(N,\) or \(B, N\)"):
        log_mel_spectrogram(np.zeros((1, 2, 400), np.float32))


def test_pad_or_trim_numpy_and_torch():
    a = np.arange(10, dtype=np.float32)
    assert pad_or_trim(a, 4).tolist() == [0, 1, 2, 3]
    assert pad_or_trim(a, 12).tolist() == list(range(10)) + [0, 0]
    assert pad_or_trim(a, 10) is a
    t = torch.arange(6.0).view(2, 3)
    assert pad_or_trim(t, 5).tolist() == [[0, 1, 2, 0, 0], [3, 4, 5, 0, 0]]
    assert pad_or_trim(t, 3, axis=0).tolist() == [[0, 1, 2], [3, 4, 5], [0, 0, 0]]
    assert pad_or_trim(t.numpy(), 1, axis=0).tolist() == [[0, 1, 2]]
    assert pad_or_trim(np.zeros(5), N_SAMPLES).shape == (N_SAMPLES,)
